//! Off-policy corrections: what the PPO ratio is taken against, and the TIS/MIS factor on top of it.
//!
//! TIS and MIS split the off-policy ratio as `(pi_old / mu) * (pi_theta / pi_old)`: the second factor is
//! the clipped PPO ratio, the first is truncated (`min(w, C)`, TIS) or turned into a keep mask
//! (`lo <= w <= hi`, MIS) at token level, or once per sequence with `log w = sum_t m_t (lp_old - mu)`
//! (divided by the length if geometric). MIS-masked tokens stay in the aggregation denominators, as in
//! verl's rollout-IS weights, so masking lowers a batch's gradient rather than reweighting the rest.
//! Bypass and ALP use the single ratio against `mu` and no factor; `none` is the PPO ratio against
//! `lp_old` with no factor (the paper's GSPO baseline).
//!
//! IcePop is MIS at token level with its own bounds `[icepop_alpha, icepop_beta]` (0.5 and 5: AReaL's
//! `icepop_alpha`/`icepop_beta`, OpenRLHF's `is_correction_type = icepop`, verl's token IS weight with a
//! `"0.5_5.0"` threshold). The other anchors' corrections live beside this file: prime-rl's default
//! loss in [`crate::dppo`] (a loss, not a weight), verl's rejection sampling in [`crate::rejection`]
//! (it edits the trained mask).
use tch::{Kind, Tensor};

use crate::loss::{masked_diff, sequence_log_ratio, LOG_RATIO_CLAMP};
use crate::settings::{CorrectionKind, CorrectionSettings, RatioLevel};

/// The per-token correction factor and, for MIS, the keep mask (`[b, t]` f32, no grad).
#[derive(Debug)]
pub struct CorrectionWeights {
    pub weights: Tensor,
    /// MIS and IcePop: 1 where the token (or its sequence) is kept.
    pub keep: Option<Tensor>,
}

/// The clamped log IS weight `log(pi_old / mu)` per token (`[b, t]`), at token or sequence level.
pub fn log_is_weight(
    lp_old: &Tensor,
    mu: &Tensor,
    mask: &Tensor,
    level: RatioLevel,
    geometric: bool,
) -> Tensor {
    let diff = masked_diff(lp_old, mu, mask);
    let log_w = match level {
        RatioLevel::Token => diff,
        RatioLevel::Sequence => sequence_log_ratio(&diff, mask, geometric).unsqueeze(1) * mask,
    };
    log_w.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
}

/// The TIS/MIS factor for one micro-batch; `None` for corrections without one.
pub fn correction_weights(
    cfg: &CorrectionSettings,
    lp_old: Option<&Tensor>,
    mu: &Tensor,
    mask: &Tensor,
) -> Option<CorrectionWeights> {
    let lp_old = match cfg.kind {
        CorrectionKind::Tis | CorrectionKind::Mis | CorrectionKind::IcePop => {
            lp_old.expect("TIS/MIS/IcePop need lp_old")
        }
        _ => return None,
    };
    let (level, low, high) = match cfg.kind {
        CorrectionKind::IcePop => (RatioLevel::Token, cfg.icepop_alpha, cfg.icepop_beta),
        _ => (cfg.level, cfg.mis_low, cfg.mis_high),
    };
    let w = log_is_weight(lp_old, mu, mask, level, cfg.geometric).exp();
    Some(match cfg.kind {
        CorrectionKind::Tis => CorrectionWeights {
            weights: w.clamp_max(cfg.tis_cap),
            keep: None,
        },
        _ => {
            let keep = w.ge(low).logical_and(&w.le(high)).to_kind(Kind::Float);
            // Kept tokens keep their importance weight (verl's rollout_is, IcePop): masking only
            // rejects the outliers, it does not drop the correction of the rest.
            CorrectionWeights {
                weights: &w * &keep,
                keep: Some(keep),
            }
        }
    })
}
