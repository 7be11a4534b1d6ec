//! The clipped policy-gradient loss of design section 4, as pure tensor functions.
//!
//! With `d_t = lp_t - base_t` on trained tokens (`base` is `mu` for bypass/ALP/DPPO, `lp_old` for
//! TIS/MIS/IcePop/none):
//! - token ratio: `log r_t = d_t`;
//! - sequence ratio (GSPO): `log r_t = sg(S) + lp_t - sg(lp_t)`, `S = sum_t m_t d_t` (divided by the
//!   trained length if geometric): every token carries the sequence's value but only its own gradient;
//! - `log r` is clamped to [-20, 20];
//! - `L_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high))`, and for `A < 0` with dual clip `c`:
//!   `L_t = min(L_t, -A c)`; then multiplied by the correction weight (TIS weight or MIS mask) if any;
//! - aggregated over the *mini-batch* (token-mean, seq-mean-token-mean, seq-mean-token-sum), so the sum
//!   of micro-batch losses equals the loss of the whole mini-batch and gradient accumulation is exact;
//! - minus `entropy_coef * agg(entropy)`, plus `kl_coef * agg(kl(lp, ref))`.
//!
//! `correction.kind = "dppo"` replaces the clipped surrogate by prime-rl's default loss ([`crate::dppo`]).
//!
//! Ties at a clip boundary count as unclipped (the gradient flows), so the gradient is one-sided-defined
//! everywhere instead of torch.maximum's half-and-half split.
use tch::{Kind, Tensor};

use crate::dppo::{dppo_surrogate, DppoConfig};
use crate::settings::{Aggregation, CorrectionKind, KlEstimator, LearnerSettings, RatioLevel};

/// Bound on every log-ratio before `exp`, as in the ALP and verl code.
pub const LOG_RATIO_CLAMP: f64 = 20.0;

/// The clip settings of the surrogate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipConfig {
    pub eps_low: f64,
    pub eps_high: f64,
    pub dual_clip: Option<f64>,
}

/// Everything that shapes the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub clip: ClipConfig,
    pub level: RatioLevel,
    pub geometric: bool,
    pub aggregation: Aggregation,
    pub entropy_coef: f64,
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// prime-rl's default loss (`correction.kind = "dppo"`) in place of the clipped surrogate: the
    /// ratio against `mu`, DPPO's probability mask and the `kl_tau (lp - mu)^2` term ([`crate::dppo`]).
    pub dppo: Option<DppoConfig>,
}

impl LossConfig {
    pub fn from_settings(s: &LearnerSettings) -> Self {
        Self {
            clip: ClipConfig {
                eps_low: s.loss.eps_low,
                eps_high: s.loss.eps_high,
                dual_clip: s.loss.dual_clip,
            },
            level: s.correction.level,
            geometric: s.correction.geometric,
            aggregation: s.loss.aggregation,
            entropy_coef: s.loss.entropy_coef,
            kl_coef: s.loss.kl_coef,
            kl_estimator: s.loss.kl_estimator,
            dppo: (s.correction.kind == CorrectionKind::Dppo).then_some(DppoConfig {
                mask_low: s.correction.dppo_mask_low,
                mask_high: s.correction.dppo_mask_high,
                adv_tau: s.correction.adv_tau,
                kl_tau: s.correction.kl_tau,
            }),
        }
    }
}

/// Denominators of the aggregation, counted over the whole mini-batch (not the micro-batch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregationScale {
    /// Trained tokens in the mini-batch.
    pub tokens: f64,
    /// Sequences with at least one trained token in the mini-batch.
    pub sequences: f64,
}

impl AggregationScale {
    /// The scale of a batch that is its own mini-batch.
    pub fn of(mask: &Tensor) -> Self {
        let rows = mask.sum_dim_intlist(1, false, Kind::Float);
        Self {
            tokens: f64::try_from(rows.sum(Kind::Float)).unwrap_or(0.0),
            sequences: f64::try_from(rows.gt(0.0).sum(Kind::Float)).unwrap_or(0.0),
        }
    }
}

/// `lp - base` on trained tokens, exactly 0 elsewhere (also where padding holds non-finite values).
pub fn masked_diff(lp: &Tensor, base: &Tensor, mask: &Tensor) -> Tensor {
    (lp - base).where_self(&mask.gt(0.0), &lp.zeros_like())
}

/// Per-sequence log-ratio `S` (`[b]`): the sum of the masked differences, or their mean if `geometric`.
pub fn sequence_log_ratio(diff: &Tensor, mask: &Tensor, geometric: bool) -> Tensor {
    let s = diff.sum_dim_intlist(1, false, diff.kind());
    if geometric {
        s / mask.sum_dim_intlist(1, false, diff.kind()).clamp_min(1.0)
    } else {
        s
    }
}

/// The clamped log-ratio the loss uses per token (`[b, t]`, with grad through `lp`); 0 on untrained tokens.
pub fn loss_log_ratio(
    lp: &Tensor,
    base: &Tensor,
    mask: &Tensor,
    level: RatioLevel,
    geometric: bool,
) -> Tensor {
    let diff = masked_diff(lp, base, mask);
    let log_r = match level {
        RatioLevel::Token => diff,
        RatioLevel::Sequence => {
            let seq = sequence_log_ratio(&diff, mask, geometric)
                .detach()
                .unsqueeze(1);
            let own = (lp - lp.detach()).where_self(&mask.gt(0.0), &lp.zeros_like());
            (seq * mask) + own
        }
    };
    log_r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
}

/// The per-token clipped surrogate and which clip was active where.
#[derive(Debug)]
pub struct Surrogate {
    /// `[b, t]` per-token loss (not yet weighted or aggregated), with grad.
    pub per_token: Tensor,
    /// `[b, t]` bool: `A > 0` and the upper clip `1 + eps_high` is active.
    pub clip_high: Tensor,
    /// `[b, t]` bool: `A < 0` and the lower clip `1 - eps_low` is active.
    pub clip_low: Tensor,
    /// `[b, t]` bool: `A < 0` and the dual clip `-A c` is active.
    pub clip_dual: Tensor,
}

/// `max(-A r, -A clip(r))`, then `min(., -A c)` for `A < 0`; `advantages` is `[b]`.
pub fn clipped_surrogate(log_ratio: &Tensor, advantages: &Tensor, clip: &ClipConfig) -> Surrogate {
    let ratio = log_ratio.exp();
    let adv = advantages.to_kind(log_ratio.kind()).unsqueeze(1);
    let unclipped = -&adv * &ratio;
    let clipped = -&adv * ratio.clamp(1.0 - clip.eps_low, 1.0 + clip.eps_high);
    let use_clipped = clipped.gt_tensor(&unclipped);
    let mut loss = clipped.where_self(&use_clipped, &unclipped);
    let negative = adv.lt(0.0).expand_as(&loss);
    let positive = adv.gt(0.0).expand_as(&loss);
    let mut clip_dual = negative.zeros_like();
    if let Some(c) = clip.dual_clip {
        let cap = -&adv * c;
        let capped = loss.gt_tensor(&cap).logical_and(&negative);
        loss = cap.expand_as(&loss).where_self(&capped, &loss);
        clip_dual = capped;
    }
    let use_clipped = use_clipped.logical_and(&clip_dual.logical_not());
    Surrogate {
        per_token: loss,
        clip_high: use_clipped.logical_and(&positive),
        clip_low: use_clipped.logical_and(&negative),
        clip_dual,
    }
}

/// Aggregates `[b, t]` per-token values over trained tokens with the mini-batch denominators.
pub fn aggregate(
    values: &Tensor,
    mask: &Tensor,
    mode: Aggregation,
    scale: AggregationScale,
) -> Tensor {
    // `where` first: a non-finite value on an untrained token must not leak through `0 * NaN`.
    let masked = values.where_self(&mask.gt(0.0), &values.zeros_like()) * mask;
    let k = masked.kind();
    match mode {
        Aggregation::TokenMean => masked.sum(k) / scale.tokens.max(1.0),
        Aggregation::SeqMeanTokenMean => {
            let per_seq = masked.sum_dim_intlist(1, false, k)
                / mask.sum_dim_intlist(1, false, k).clamp_min(1.0);
            per_seq.sum(k) / scale.sequences.max(1.0)
        }
        Aggregation::SeqMeanTokenSum => masked.sum(k) / scale.sequences.max(1.0),
    }
}

/// Per-token KL estimate between the policy and the frozen reference, `d = lp - ref` clamped to [-20, 20].
pub fn kl_penalty(lp: &Tensor, ref_lp: &Tensor, estimator: KlEstimator) -> Tensor {
    let d = (lp - ref_lp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
    match estimator {
        KlEstimator::K1 => d,
        KlEstimator::K2 => d.square() * 0.5,
        KlEstimator::K3 => ((-&d).exp() + &d - 1.0).clamp(-10.0, 10.0),
    }
}

/// The tensors one loss evaluation needs (all `[b, t]` except `advantages: [b]`).
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// Training log-probs, with grad.
    pub lp: &'a Tensor,
    /// What the ratio is taken against: `mu` or `lp_old` (no grad).
    pub base: &'a Tensor,
    pub mask: &'a Tensor,
    pub advantages: &'a Tensor,
    /// Correction weight per token (TIS truncated weight, MIS keep mask), no grad.
    pub weights: Option<&'a Tensor>,
    /// Entropy per token, with grad if `entropy_coef != 0`.
    pub entropy: Option<&'a Tensor>,
    /// Reference-policy log-probs, needed if `kl_coef > 0`.
    pub ref_lp: Option<&'a Tensor>,
}

/// One loss evaluation: the scalar to backpropagate, its parts, and the detached ratio data for metrics.
#[derive(Debug)]
pub struct LossOutput {
    pub total: Tensor,
    pub pg: Tensor,
    pub entropy: Option<Tensor>,
    pub kl: Option<Tensor>,
    /// `[b, t]` clamped log-ratio as used, detached.
    pub log_ratio: Tensor,
    /// `[b]` clamped per-sequence log-ratio `S` against the same base, detached.
    pub seq_log_ratio: Tensor,
    pub clip_high: Tensor,
    pub clip_low: Tensor,
    pub clip_dual: Tensor,
}

/// The full loss of design section 4 for one micro-batch.
pub fn policy_loss(inp: &LossInputs<'_>, cfg: &LossConfig, scale: AggregationScale) -> LossOutput {
    let log_ratio = loss_log_ratio(inp.lp, inp.base, inp.mask, cfg.level, cfg.geometric);
    let sur = match &cfg.dppo {
        None => clipped_surrogate(&log_ratio, inp.advantages, &cfg.clip),
        // DPPO's masks take the clip flags' place in the metrics; it has no dual clip.
        Some(d) => {
            let s = dppo_surrogate(&log_ratio, inp.lp, inp.base, inp.advantages, d);
            Surrogate {
                clip_dual: s.masked_high.zeros_like(),
                per_token: s.per_token,
                clip_high: s.masked_high,
                clip_low: s.masked_low,
            }
        }
    };
    let per_token = match inp.weights {
        Some(w) => &sur.per_token * w,
        None => sur.per_token,
    };
    let pg = aggregate(&per_token, inp.mask, cfg.aggregation, scale);
    let entropy = inp
        .entropy
        .map(|e| aggregate(e, inp.mask, cfg.aggregation, scale));
    let kl = inp.ref_lp.map(|r| {
        let per_token = kl_penalty(inp.lp, r, cfg.kl_estimator);
        aggregate(&per_token, inp.mask, cfg.aggregation, scale)
    });
    // Out-of-place sums: `pg` is reported separately and must not be modified by `-=`.
    let mut total = pg.shallow_clone();
    if let (Some(e), true) = (&entropy, cfg.entropy_coef != 0.0) {
        total = &total - e * cfg.entropy_coef;
    }
    if let (Some(k), true) = (&kl, cfg.kl_coef != 0.0) {
        total = &total + k * cfg.kl_coef;
    }
    let seq_log_ratio = sequence_log_ratio(
        &masked_diff(&inp.lp.detach(), inp.base, inp.mask),
        inp.mask,
        cfg.geometric,
    )
    .clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
    LossOutput {
        total,
        pg,
        entropy,
        kl,
        log_ratio: log_ratio.detach(),
        seq_log_ratio,
        clip_high: sur.clip_high,
        clip_low: sur.clip_low,
        clip_dual: sur.clip_dual,
    }
}
