//! [`DistSync`]: the learner's gradient-sync seam over a c10d process group.
use std::sync::Arc;

use alp_learner::{GradientSync, LearnerError};
use tch::{Kind, Tensor};

use crate::error::DistError;
use crate::group::ProcessGroup;

/// Sums gradients and loss denominators over the ranks of a [`ProcessGroup`], so that each rank,
/// training on its shard of the batch, makes the update one process makes on the whole batch.
///
/// Per mini-batch it runs two all-reduces: a small one telling which parameters have a gradient on
/// some rank, then one (bucketed) over those gradients. A parameter whose gradient is undefined here
/// but defined on another rank (this rank's shard never reached it, or this rank had no tokens) gets
/// a zero gradient first, so every rank sums the same tensors and ends with the same gradient; a
/// parameter no rank reached keeps an undefined gradient everywhere, as in one process, where the
/// optimizer skips it.
///
/// The group is shared (`Arc`): the run keeps it for its other collectives (metrics, rollouts,
/// checkpoints) while the learner owns the sync.
#[derive(Debug, Clone)]
pub struct DistSync {
    group: Arc<ProcessGroup>,
}

impl DistSync {
    /// Syncs through `group` (which every rank's learner must use in the same way).
    pub fn new(group: Arc<ProcessGroup>) -> Self {
        Self { group }
    }

    /// The process group.
    pub fn group(&self) -> &Arc<ProcessGroup> {
        &self.group
    }
}

fn learner_error(e: DistError) -> LearnerError {
    LearnerError::Sync(e.to_string())
}

/// Makes `p.grad()` defined (zeros) by accumulating the gradient of `0 * sum(p)`.
fn define_zero_grad(p: &Tensor) -> Result<(), DistError> {
    tch::with_grad(|| (p.f_sum(p.kind())? * 0.0).f_backward())?;
    Ok(())
}

impl GradientSync for DistSync {
    fn sum_gradients(&mut self, params: &[Tensor]) -> alp_learner::Result<()> {
        if params.is_empty() {
            return Ok(());
        }
        let device = self.group.device();
        let defined: Vec<f32> = params
            .iter()
            .map(|p| f32::from(p.grad().defined() as u8))
            .collect();
        let mask = Tensor::from_slice(&defined).to_device(device);
        self.group
            .all_reduce_sum(std::slice::from_ref(&mask))
            .map_err(learner_error)?;
        let anywhere = Vec::<f32>::try_from(mask.to_kind(Kind::Float).to_device(tch::Device::Cpu))
            .map_err(|e| learner_error(e.into()))?;
        let mut grads = Vec::with_capacity(params.len());
        for (p, &count) in params.iter().zip(&anywhere) {
            if count == 0.0 {
                continue;
            }
            if !p.grad().defined() {
                define_zero_grad(p).map_err(learner_error)?;
            }
            grads.push(p.grad());
        }
        self.group.all_reduce_sum(&grads).map_err(learner_error)
    }

    fn sum_counts(&mut self, counts: &mut [f64]) -> alp_learner::Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        let t = Tensor::from_slice(counts).to_device(self.group.device());
        self.group
            .all_reduce_sum(std::slice::from_ref(&t))
            .map_err(learner_error)?;
        let summed = Vec::<f64>::try_from(t.to_device(tch::Device::Cpu))
            .map_err(|e| learner_error(e.into()))?;
        counts.copy_from_slice(&summed);
        Ok(())
    }

    fn rank(&self) -> usize {
        self.group.rank()
    }

    fn world_size(&self) -> usize {
        self.group.world_size()
    }

    fn all_gather_bytes(&mut self, bytes: &[u8]) -> alp_learner::Result<Vec<Vec<u8>>> {
        self.group.all_gather_bytes(bytes).map_err(learner_error)
    }
}
