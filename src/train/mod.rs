//! The `alp-rl train` runtime: one rollout worker thread ([`rollout_worker`]) feeding the learner on the main
//! thread, parquet logs, checkpoints ([`run_state`]) and exact resume. The loop drives either
//! learner through one seam ([`learners::RunLearner`]); what a step does is the learner's business.
//!
//! Versions: the initial weights are version 0; learner step `t` (1-based) trains on batch `t - 1` while
//! holding version `t - 1`, then publishes version `t`. A sample's staleness is `t - 1 - v` for the
//! version `v` that generated it, bounded by `rollout.max_staleness` through the worker's pacing.
pub mod eval;
pub mod learners;
mod logs;
mod memory_plan;
pub mod messages;
pub mod pause;
pub mod preflight;
pub mod ranks;
mod ranks_check;
pub mod rollout_backend;
pub mod rollout_worker;
pub mod rows;
pub mod run_files;
pub mod run_state;
mod session;
mod setup;

use std::path::PathBuf;
use std::sync::Arc;

use alp_envs::Environment;
use anyhow::Result;

use crate::config::TrainConfig;
pub(crate) use run_files::{initial_model, write_run_files};

/// What `train` was asked to do.
#[derive(Clone)]
pub struct TrainRequest {
    pub config: TrainConfig,
    /// The `[env]` environment (built from the application's registry when the config was loaded).
    pub env: Arc<dyn Environment>,
    pub config_path: PathBuf,
    pub run_dir: PathBuf,
    pub resume: bool,
    /// The ranks of a run on several processes ([`ranks::Ranks::single`] for one).
    pub ranks: ranks::Ranks,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub first_step: u64,
    pub last_step: u64,
    /// `(step, eval/accuracy)` of the first and the last evaluation, when `[eval]` is set.
    pub first_eval: Option<(u64, f64)>,
    pub last_eval: Option<(u64, f64)>,
}

/// Trains as `req` says: sets the run up ([`setup`]: preflight, run directory, warm start, resume
/// point, learner, rollout worker, step-0 evaluation), then steps it to `run.steps` ([`session`]).
pub fn run(req: TrainRequest) -> Result<TrainSummary> {
    setup::start(&req)?.run_to_end()
}
