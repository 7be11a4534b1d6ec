//! The RL run's checkpoints, written by the shared [`CheckpointWriter`]: `model/` (HF layout),
//! `learner/` (what the learner saves: optimizer moments, learner step, ALP scales) and `state.json`
//! ([`RuntimeState`]).
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use crate::checkpoint_writer::write_model;
use crate::checkpoint_writer::{CheckpointState, CheckpointWriter};
use crate::run_dir::RunDir;

/// The runtime's own state: with the weights and the learner state it determines the rest of the run
/// (examples and sampling seeds are pure functions of the seed and the step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// Learner steps completed; the next batch (data cursor) is batch `step`.
    pub step: u64,
    pub policy_version: u64,
    pub seed: u64,
    /// Consecutive non-finite steps so far.
    pub nonfinite_run: u64,
    /// Non-finite steps skipped over the whole run.
    pub nonfinite_total: u64,
}

impl CheckpointState for RuntimeState {
    fn step(&self) -> u64 {
        self.step
    }
}

/// The writer of the RL checkpoints, keeping `keep`; the crash tests' `latest` pause point sits
/// between the checkpoint's rename and `latest`.
pub fn writer(run: &RunDir, keep: usize) -> CheckpointWriter<'_> {
    CheckpointWriter::new(run, keep).before_latest(|step| super::pause::point("latest", step))
}

/// Reads a checkpoint's runtime state.
pub fn load_state(dir: &Path) -> Result<RuntimeState> {
    crate::checkpoint_writer::load_state(dir)
}
