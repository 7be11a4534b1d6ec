//! prime-rl's default loss (`[trainer.loss] type = "default"`, `src/prime_rl/trainer/rl/loss.py`):
//! DPPO-binary total-variation masking (arXiv 2602.04879) with the Kimi-K2.5 squared-log-ratio KL term
//! (arXiv 2602.02276), against the inference policy (two policies, no `lp_old`).
//!
//! Per trained token, with `d = lp - mu` (clamped to [-20, 20] as every ratio here), `r = exp(d)` and
//! the probability difference `delta = exp(lp) - exp(mu)`:
//! - the token is masked when `A > 0` and `delta > dppo_mask_high`, or when `A <= 0` and
//!   `delta < -dppo_mask_low` (prime-rl's `torch.where(A > 0, high, low)`): a trust region on the
//!   probability, not on the ratio;
//! - `loss_t = -keep_t adv_tau A r + kl_tau d^2`: the policy-gradient term only on kept tokens, the KL
//!   term on every trained token; both carry the gradient of `lp` (the mask has none).
//!
//! The caller aggregates `loss_t` over the trained tokens (prime-rl sums and divides by the token count:
//! `token-mean`).
use tch::Tensor;

/// prime-rl's `DefaultLossConfig`, whose defaults [`DppoConfig::default`] repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DppoConfig {
    /// Mask tokens with `A <= 0` whose probability fell by more than this (`dppo_mask_low`, 0.2).
    pub mask_low: f64,
    /// Mask tokens with `A > 0` whose probability rose by more than this (`dppo_mask_high`, 0.2).
    pub mask_high: f64,
    /// Scale of the advantage (`adv_tau`, 1.0).
    pub adv_tau: f64,
    /// Weight of the `(lp - mu)^2` term (`kl_tau`, 1e-3).
    pub kl_tau: f64,
}

impl Default for DppoConfig {
    fn default() -> Self {
        Self {
            mask_low: 0.2,
            mask_high: 0.2,
            adv_tau: 1.0,
            kl_tau: 1e-3,
        }
    }
}

/// The per-token DPPO loss and its masks (all `[b, t]`).
#[derive(Debug)]
pub struct DppoSurrogate {
    /// `-keep adv_tau A r + kl_tau d^2`, with grad; not yet restricted to trained tokens.
    pub per_token: Tensor,
    /// bool: `A > 0` and the probability rose past `mask_high` (prime-rl's `is_masked_high`).
    pub masked_high: Tensor,
    /// bool: `A < 0` and the probability fell past `mask_low` (prime-rl's `is_masked_low`).
    pub masked_low: Tensor,
}

/// The DPPO loss per token from the clamped log-ratio `log_ratio = lp - mu` (with grad, 0 off the
/// trained tokens), the training log-probs `lp`, the inference log-probs `mu` and `advantages: [b]`.
pub fn dppo_surrogate(
    log_ratio: &Tensor,
    lp: &Tensor,
    mu: &Tensor,
    advantages: &Tensor,
    cfg: &DppoConfig,
) -> DppoSurrogate {
    let adv = advantages.to_kind(log_ratio.kind()).unsqueeze(1);
    let delta = lp.detach().exp() - mu.exp();
    let high = delta.gt(cfg.mask_high);
    let low = delta.lt(-cfg.mask_low);
    let positive = adv.gt(0.0).expand_as(&delta);
    let negative = adv.lt(0.0).expand_as(&delta);
    let masked = high.where_self(&positive, &low);
    let keep = masked.logical_not().to_kind(log_ratio.kind());
    let pg = keep * (&adv * cfg.adv_tau) * log_ratio.exp();
    let per_token = -pg + log_ratio.square() * cfg.kl_tau;
    DppoSurrogate {
        per_token,
        masked_high: positive.logical_and(&high),
        masked_low: negative.logical_and(&low),
    }
}
