//! The SFT loss: the mean negative log-likelihood of the trained (assistant) tokens of a batch, from
//! the same packed forward as the RL loss and the same token-mean aggregation.
use alp_policy::{ForwardHooks, NoHooks};
use tch::Tensor;

use super::example::SftExample;
use crate::batch::{Entropy, PackedBatch, Sample};
use crate::error::Result;
use crate::loss::{aggregate, AggregationScale};
use crate::settings::Aggregation;
use crate::trainable::TrainablePolicy;

/// Mean negative log-likelihood (with grad) of the trained tokens of `batch` under `policy`, and how
/// many trained tokens there are.
pub fn sft_loss<P: TrainablePolicy + ?Sized>(
    policy: &P,
    batch: &[SftExample],
) -> Result<(Tensor, usize)> {
    sft_loss_with(policy, &NoHooks, batch)
}

/// [`sft_loss`] of `policy` with `hooks` on its forward (a LoRA adapter being trained).
pub fn sft_loss_with<P: TrainablePolicy + ?Sized>(
    policy: &P,
    hooks: &dyn ForwardHooks,
    batch: &[SftExample],
) -> Result<(Tensor, usize)> {
    let samples: Vec<Sample> = batch.iter().map(SftExample::to_sample).collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    let packed = PackedBatch::pack(&refs, &vec![0.0; refs.len()], policy.device())?;
    let (lp, _) = packed.log_probs(policy, hooks, Entropy::Skip);
    let tokens = packed.num_tokens();
    let scale = AggregationScale {
        tokens: tokens as f64,
        sequences: packed.row_tokens.iter().filter(|&&t| t > 0).count() as f64,
    };
    let loss = aggregate(&-lp, &packed.mask, Aggregation::TokenMean, scale);
    Ok((loss, tokens))
}
