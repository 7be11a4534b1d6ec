//! Gradient synchronisation: the seam through which a learner spread over several processes (each
//! training on its shard of the batch) sums its gradients and its loss denominators.
//!
//! The learner's loss divides by the token and sequence counts of the *whole* mini-batch, taken
//! through [`GradientSync::sum_counts`]; each process's gradient is then its share of the global
//! loss's gradient, so summing the gradients ([`GradientSync::sum_gradients`]) gives the gradient of
//! one process on the whole mini-batch. The clip and the optimizer step run on the summed gradients,
//! identically in every process, so the replicas stay equal.
use tch::Tensor;

use crate::error::Result;

/// Sum-reduction across the processes of one learner. Every process makes the same calls in the same
/// order: once per step for the counts, once per optimizer step for the gradients.
pub trait GradientSync: Send {
    /// Replaces the gradient of each parameter (`p.grad()`, in place) by its sum over all processes.
    /// Called once per mini-batch, after the backward of all its micro-batches and before the
    /// gradient-norm clip. `params` are all parameters the optimizer updates, in its order; a parameter
    /// no forward reached has an undefined gradient, which the optimizer then skips.
    fn sum_gradients(&mut self, params: &[Tensor]) -> Result<()>;

    /// Replaces each count by its sum over all processes (token and sequence counts, the loss's
    /// denominators: see [`crate::loss::AggregationScale`]).
    fn sum_counts(&mut self, counts: &mut [f64]) -> Result<()>;

    /// This process's index among the learner's processes (0 in one process). It places this
    /// process's training forwards among the step's (ALP's noise keys, [`crate::alp`]).
    fn rank(&self) -> usize {
        0
    }

    /// How many processes the learner is spread over (1 in one process).
    fn world_size(&self) -> usize {
        1
    }

    /// Every process's `bytes`, in rank order (the step's metric sums, so that every process reports
    /// the metrics of the whole batch). One process: its own.
    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
}

/// One process: every local count and gradient already is the global one.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSync;

impl GradientSync for LocalSync {
    fn sum_gradients(&mut self, _params: &[Tensor]) -> Result<()> {
        Ok(())
    }

    fn sum_counts(&mut self, _counts: &mut [f64]) -> Result<()> {
        Ok(())
    }
}
