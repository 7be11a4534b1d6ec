//! The `[learner.correction]` settings of the anchors' corrections (issue 29): IcePop's bounds,
//! prime-rl's DPPO loss, verl's rejection sampling. Their own file, as methods of
//! [`CorrectionSettings`], so that `settings.rs` stays the plain list of fields.
use crate::rejection::{rejection_rules, RejectionRule};
use crate::settings::{finite_nonneg, CorrectionKind, CorrectionSettings, RatioLevel};
use crate::settings_error::{check, SettingsError};

impl CorrectionSettings {
    /// IcePop's bounds, DPPO's thresholds and weights, and the rejection rules; a token-only
    /// correction refuses `level = "sequence"`.
    pub(crate) fn validate_anchors(&self) -> Result<(), SettingsError> {
        finite_nonneg(self.icepop_alpha, "correction.icepop_alpha")?;
        let (a, b) = (self.icepop_alpha, self.icepop_beta);
        check(b.is_finite() && b > a, "correction.icepop_beta", || {
            format!("must be finite and > icepop_alpha ({a}), got {b}")
        })?;
        for (x, field) in [
            (self.dppo_mask_low, "correction.dppo_mask_low"),
            (self.dppo_mask_high, "correction.dppo_mask_high"),
            (self.adv_tau, "correction.adv_tau"),
            (self.kl_tau, "correction.kl_tau"),
        ] {
            finite_nonneg(x, field)?;
        }
        if matches!(self.kind, CorrectionKind::IcePop | CorrectionKind::Dppo) {
            let kind = self.kind;
            check(self.level == RatioLevel::Token, "correction.level", || {
                format!(
                    "kind \"{kind}\" works on tokens: use level = \"token\" (for sequence masking, \
                     kind = \"mis\" with level = \"sequence\")"
                )
            })?;
        }
        if self.rejection.is_empty() {
            return check(
                self.rejection_threshold.is_empty(),
                "correction.rejection_threshold",
                || {
                    "is set but `rejection` names no mode: add one, e.g. rejection = [\"seq_mean_k3\"]".into()
                },
            );
        }
        self.rejection_rules().map(|_| ())
    }

    /// The rejection rules of `rejection` and `rejection_threshold` (empty when rejection is off).
    pub fn rejection_rules(&self) -> Result<Vec<RejectionRule>, SettingsError> {
        rejection_rules(&self.rejection, &self.rejection_threshold)
    }

    /// Whether the step needs `lp_old`, the pre-update weights' log-probs: for the PPO ratio of the
    /// corrections that take it against `lp_old`, and for rejection sampling's statistics.
    pub fn needs_old(&self) -> bool {
        self.kind.ratio_against_old() || !self.rejection.is_empty()
    }
}
