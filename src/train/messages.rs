//! What the rollout side and the learner side of a run send each other, in one module that both
//! import (so neither imports the other):
//!
//! - rollout worker -> learner: [`RolloutBatch`], one learner step's worth of rollouts;
//! - learner -> rollout worker: [`PublishedWeights`], a new policy version as an
//!   [`alp_rollout::WeightUpdate`] (the message every backend installs), marked for evaluation or not;
//! - learner -> rollout worker, once at the start: the [`BatchPopulation`] each batch is generated
//!   with (evolution strategies).
use std::sync::Arc;

use alp_policy::MemberHooks;
use alp_rollout::{SyncReport, Trajectory, WeightUpdate};
use alp_vllm::ReplicaStats;

/// One learner step's worth of rollouts.
pub struct RolloutBatch {
    /// 0-based: trained at learner step `index + 1`.
    pub index: u64,
    pub policy_version: u64,
    /// `prompts_per_step` groups of `group_size` trajectories, in example order.
    pub groups: Vec<Vec<Trajectory>>,
    pub generate_s: f64,
    /// Seconds the worker waited for the weights it needed (a vLLM sync included).
    pub wait_weights_s: f64,
    /// The vLLM sync that installed `policy_version`, when it happened since the previous batch.
    pub sync: Option<SyncReport>,
    /// The vLLM servers' counters after the batch (empty for the local engine).
    pub servers: Vec<ReplicaStats>,
}

/// A policy version the learner publishes after a step: deep copies of its parameters.
pub struct PublishedWeights {
    pub update: WeightUpdate,
    /// Run the evaluation on these weights (its metrics come back to the learner's side).
    pub evaluate: bool,
}

/// The population a batch is generated with, as the rollout worker needs it: hooks for its engine
/// and the member serving each row (rows in batch order: `prompts_per_step` groups of
/// `group_size`). Built from seeds alone, so the worker regenerates the learner's noise itself.
pub trait BatchPopulation: Send + Sync {
    fn for_batch(&self, index: u64) -> (Arc<dyn MemberHooks>, Vec<usize>);
}
