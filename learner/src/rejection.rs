//! verl's rejection sampling (`algorithm.rollout_correction.rollout_rs`, `rollout_corr_helper.py`):
//! drop tokens or whole sequences whose divergence between the pre-update training policy and the
//! inference policy leaves a threshold, before the loss sees them.
//!
//! With `log r_t = clamp(lp_old_t - mu_t, -20, 20)` on trained tokens (verl's `SAFETY_BOUND`), the
//! per-token statistics are `k1 = -log r`, `k2 = (log r)^2 / 2`, `k3 = exp(log r) - 1 - log r`;
//! a mode takes one of them per token (`token_k*`), or per sequence its sum (`seq_sum_k*`), its mean
//! over the trained tokens (`seq_mean_k*`) or its max (`seq_max_k2`, `seq_max_k3`). A k1 mode keeps
//! `ln(lower) <= stat <= ln(upper)` (verl's `"lower_upper"` ratio bounds, `lower = 1 / upper` when only
//! the upper is given); a k2 or k3 mode keeps `stat <= upper`. Several modes must all pass (verl's
//! comma list, a logical AND). Rejected tokens leave the loss *and its denominators* (verl rewrites
//! `response_mask`), unlike MIS and IcePop, which zero a weight and keep the token in the counts.
use alp_macros::string_enum;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::metric_names as names;
use crate::settings_error::{check, SettingsError};

/// verl's bound on every log-ratio before `exp` (`SAFETY_BOUND`).
const SAFETY_BOUND: f64 = 20.0;

string_enum! {
    /// One of verl's `rollout_rs` options.
    pub enum RejectionMode {
        /// Token level, `-log r` within `[ln lower, ln upper]`.
        TokenK1 => "token_k1",
        /// Token level, `(log r)^2 / 2 <= upper`.
        TokenK2 => "token_k2",
        /// Token level, `exp(log r) - 1 - log r <= upper`.
        TokenK3 => "token_k3",
        /// Sequence sum of `-log r` within `[ln lower, ln upper]`: the sequence IS ratio's bounds.
        SeqSumK1 => "seq_sum_k1",
        /// Sequence sum of k2 `<= upper`.
        SeqSumK2 => "seq_sum_k2",
        /// Sequence sum of k3 `<= upper`.
        SeqSumK3 => "seq_sum_k3",
        /// Sequence mean of `-log r` within `[ln lower, ln upper]`: the geometric-mean ratio (Geo-RS).
        SeqMeanK1 => "seq_mean_k1",
        /// Sequence mean of k2 `<= upper`.
        SeqMeanK2 => "seq_mean_k2",
        /// Sequence mean of k3 `<= upper` (K3-RS).
        SeqMeanK3 => "seq_mean_k3",
        /// Largest k2 of the sequence `<= upper`.
        SeqMaxK2 => "seq_max_k2",
        /// Largest k3 of the sequence `<= upper`.
        SeqMaxK3 => "seq_max_k3",
    }
}

/// How a mode reduces the per-token statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Token,
    Sum,
    Mean,
    Max,
}

impl RejectionMode {
    /// Which of k1, k2, k3 (1, 2, 3) and how it is reduced.
    fn parts(self) -> (u8, Reduce) {
        use RejectionMode::*;
        match self {
            TokenK1 => (1, Reduce::Token),
            TokenK2 => (2, Reduce::Token),
            TokenK3 => (3, Reduce::Token),
            SeqSumK1 => (1, Reduce::Sum),
            SeqSumK2 => (2, Reduce::Sum),
            SeqSumK3 => (3, Reduce::Sum),
            SeqMeanK1 => (1, Reduce::Mean),
            SeqMeanK2 => (2, Reduce::Mean),
            SeqMeanK3 => (3, Reduce::Mean),
            SeqMaxK2 => (2, Reduce::Max),
            SeqMaxK3 => (3, Reduce::Max),
        }
    }

    /// Whether the mode takes `"lower_upper"` ratio bounds (the k1 modes) or an upper bound only.
    pub fn is_k1(self) -> bool {
        self.parts().0 == 1
    }

    /// The threshold of verl's presets for this mode, used when `rejection_threshold` is empty:
    /// `seq_sum_k1` 0.5_2.0 (`decoupled_seq_is_rs`), `seq_mean_k1` 0.999_1.001 (the Geo-RS presets),
    /// `seq_mean_k3` 0.01 (the K3-RS presets); verl has none for the other modes.
    pub fn recommended(self) -> Option<RejectionRule> {
        let (lower, upper) = match self {
            RejectionMode::SeqSumK1 => (Some(0.5), 2.0),
            RejectionMode::SeqMeanK1 => (Some(0.999), 1.001),
            RejectionMode::SeqMeanK3 => (None, 0.01),
            _ => return None,
        };
        Some(RejectionRule {
            mode: self,
            lower,
            upper,
        })
    }
}

/// One entry of `rejection_threshold`: a number (an upper bound) or verl's `"lower_upper"` text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    Number(f64),
    Text(String),
}

/// A mode with its bounds: `lower` only for k1 modes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RejectionRule {
    pub mode: RejectionMode,
    pub lower: Option<f64>,
    pub upper: f64,
}

const FIELD: &str = "correction.rejection_threshold";

/// The rules of `modes` with `thresholds` (none: each mode's recommended value; one: shared; else
/// one per mode), refusing what verl refuses, by field.
pub fn rejection_rules(
    modes: &[RejectionMode],
    thresholds: &[Threshold],
) -> Result<Vec<RejectionRule>, SettingsError> {
    let n = thresholds.len();
    check(n <= 1 || n == modes.len(), FIELD, || {
        format!(
            "has {n} entries for {} rejection modes: give one shared threshold or one per mode",
            modes.len()
        )
    })?;
    modes
        .iter()
        .enumerate()
        .map(|(i, &mode)| match thresholds.get(if n == 1 { 0 } else { i }) {
            Some(t) => rule(mode, t),
            None => mode.recommended().ok_or_else(|| {
                SettingsError::new(
                    FIELD,
                    format!(
                        "rejection mode \"{mode}\" has no recommended threshold in verl; set one, e.g. \
                         rejection_threshold = [{}]",
                        if mode.is_k1() { "\"0.5_2.0\"" } else { "2.0" }
                    ),
                )
            }),
        })
        .collect()
}

fn rule(mode: RejectionMode, t: &Threshold) -> Result<RejectionRule, SettingsError> {
    let number = |s: &str| {
        s.trim().parse::<f64>().map_err(|_| {
            SettingsError::new(
                FIELD,
                format!("\"{s}\" is not a number (thresholds are a number or \"lower_upper\", e.g. \"0.5_2.0\")"),
            )
        })
    };
    let (lower, upper) = match t {
        Threshold::Number(x) => (None, *x),
        Threshold::Text(s) => match s.split_once('_') {
            Some((lo, hi)) => (Some(number(lo)?), number(hi)?),
            None => (None, number(s)?),
        },
    };
    check(upper.is_finite() && upper > 0.0, FIELD, || {
        format!("the upper bound of \"{mode}\" must be a finite number > 0, got {upper}")
    })?;
    if !mode.is_k1() {
        check(lower.is_none(), FIELD, || {
            format!(
                "\"{mode}\" takes an upper bound only (k2 and k3 are >= 0), not \"lower_upper\""
            )
        })?;
        return Ok(RejectionRule {
            mode,
            lower: None,
            upper,
        });
    }
    let lower = lower.unwrap_or(1.0 / upper);
    check(
        lower.is_finite() && lower > 0.0 && lower < upper,
        FIELD,
        || format!("\"{mode}\" needs 0 < lower < upper, got lower {lower} and upper {upper}"),
    )?;
    Ok(RejectionRule {
        mode,
        lower: Some(lower),
        upper,
    })
}

/// `[b, t]` f32: 1 where every rule keeps the token (untrained tokens are kept: the caller multiplies
/// the result into the trained mask). `lp_old` and `mu` are `[b, t]`, `mask` the trained tokens.
pub fn rejection_keep(
    rules: &[RejectionRule],
    lp_old: &Tensor,
    mu: &Tensor,
    mask: &Tensor,
) -> Tensor {
    let trained = mask.gt(0.0);
    let log_r = (lp_old - mu)
        .where_self(&trained, &lp_old.zeros_like())
        .to_kind(Kind::Double)
        .clamp(-SAFETY_BOUND, SAFETY_BOUND);
    let mask = mask.to_kind(Kind::Double);
    let mut keep = trained.ones_like();
    for r in rules {
        let (k, reduce) = r.mode.parts();
        let stat = match k {
            1 => -&log_r,
            2 => log_r.square() * 0.5,
            _ => log_r.exp() - 1.0 - &log_r,
        };
        let stat = match reduce {
            Reduce::Token => stat,
            Reduce::Sum => (&stat * &mask).sum_dim_intlist(1, true, Kind::Double),
            Reduce::Mean => {
                (&stat * &mask).sum_dim_intlist(1, true, Kind::Double)
                    / mask.sum_dim_intlist(1, true, Kind::Double).clamp_min(1.0)
            }
            Reduce::Max => {
                // verl's masked max: -inf off the trained tokens, 0 for a row without any.
                let m = stat
                    .where_self(&trained, &stat.full_like(f64::NEG_INFINITY))
                    .amax(1, true);
                m.where_self(&m.isfinite(), &m.zeros_like())
            }
        };
        let pass = match r.lower {
            Some(lo) => stat.ge(lo.ln()).logical_and(&stat.le(r.upper.ln())),
            None => stat.le(r.upper),
        };
        keep = keep.logical_and(&pass.expand_as(&trained));
    }
    keep.to_kind(Kind::Float)
}

/// The step's rejection counts over its trained tokens and sequences (before rejection).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RejectionStats {
    pub tokens: usize,
    pub rejected_tokens: usize,
    /// Sequences with at least one trained token.
    pub sequences: usize,
    /// Of those, the sequences that lost at least one token.
    pub rejected_sequences: usize,
}

impl RejectionStats {
    /// The counts of one micro-batch: `mask` the trained tokens before rejection, `keep` the rules' verdict.
    pub fn of(mask: &Tensor, keep: &Tensor) -> Self {
        let trained = mask.gt(0.0);
        let dropped = trained.logical_and(&keep.le(0.0));
        let count = |t: &Tensor| t.sum(Kind::Int64).int64_value(&[]) as usize;
        Self {
            tokens: count(&trained),
            rejected_tokens: count(&dropped),
            sequences: count(&trained.any_dim(1, false)),
            rejected_sequences: count(&dropped.any_dim(1, false)),
        }
    }

    pub fn add(&mut self, o: &Self) {
        self.tokens += o.tokens;
        self.rejected_tokens += o.rejected_tokens;
        self.sequences += o.sequences;
        self.rejected_sequences += o.rejected_sequences;
    }

    /// `rejection/masked_frac` and `rejection/seq_masked_frac` (verl's `rollout_rs_masked_fraction`,
    /// `rollout_rs_seq_masked_fraction`).
    pub fn write(&self, out: &mut std::collections::BTreeMap<String, f64>) {
        let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        out.insert(
            names::REJECTION_MASKED_FRAC.into(),
            frac(self.rejected_tokens, self.tokens),
        );
        out.insert(
            names::REJECTION_SEQ_MASKED_FRAC.into(),
            frac(self.rejected_sequences, self.sequences),
        );
    }
}
