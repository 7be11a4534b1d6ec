//! Checkpoints: `checkpoints/step-NNNNNN/` holds `model/` (HF layout: config.json, model.safetensors,
//! tokenizer files), `learner/` (optimizer moments, learner step, ALP scales) and `state.json` (the
//! runtime's counters). The directory is assembled under a temporary name and renamed when complete;
//! then `checkpoints/latest` is rewritten (atomically) to name it, and checkpoints beyond `keep` are
//! deleted. A reader that follows `latest` therefore only ever sees complete checkpoints.
use std::path::Path;

use alp_tokenizer::Tokenizer;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::learners::RunLearner;
use crate::run_dir::{checkpoint_name, temp_path, write_bytes_atomic, RunDir};

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

pub fn save(
    run: &RunDir,
    learner: &dyn RunLearner,
    tokenizer: &Tokenizer,
    state: &RuntimeState,
    keep: usize,
) -> Result<()> {
    let final_dir = run.checkpoint(state.step);
    let tmp = temp_path(&final_dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    let model_dir = tmp.join("model");
    learner
        .policy()
        .save(&model_dir)
        .with_context(|| format!("saving weights to {}", model_dir.display()))?;
    tokenizer
        .save(&model_dir)
        .with_context(|| format!("saving the tokenizer to {}", model_dir.display()))?;
    super::pause::point("checkpoint", state.step);
    learner
        .save_state(&tmp.join("learner"))
        .context("saving the learner state")?;
    let state_path = tmp.join("state.json");
    write_bytes_atomic(&state_path, &serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", state_path.display()))?;
    // Every file reaches the disk before the directory gets its real name (power loss, not only
    // SIGKILL, must never leave a complete-looking checkpoint with missing data).
    sync_tree(&tmp).with_context(|| format!("syncing {}", tmp.display()))?;
    if final_dir.exists() {
        // A previous attempt of this step (before a crash and resume): move it to a temporary name
        // first, so a crash during the delete cannot leave a partial `step-N` that looks complete.
        let old = temp_path(&final_dir.with_extension("old"));
        std::fs::rename(&final_dir, &old)
            .with_context(|| format!("cannot move {} aside", final_dir.display()))?;
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("cannot remove {}", old.display()))?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(&run.checkpoints_dir());
    super::pause::point("latest", state.step);
    write_bytes_atomic(&run.latest(), checkpoint_name(state.step).as_bytes())
        .with_context(|| format!("cannot write {}", run.latest().display()))?;
    prune(run, state.step, keep)?;
    tracing::info!(step = state.step, dir = %final_dir.display(), "checkpoint saved");
    Ok(())
}

/// Reads a checkpoint's runtime state.
pub fn load_state(dir: &Path) -> Result<RuntimeState> {
    let path = dir.join("state.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Deletes complete checkpoints older than the `keep` newest (never the one `latest` names).
fn prune(run: &RunDir, latest: u64, keep: usize) -> Result<()> {
    let steps = run
        .checkpoint_steps()
        .with_context(|| format!("cannot list {}", run.checkpoints_dir().display()))?;
    let n = steps.len();
    for &s in steps.iter().take(n.saturating_sub(keep)) {
        if s != latest {
            std::fs::remove_dir_all(run.checkpoint(s))
                .with_context(|| format!("cannot remove {}", run.checkpoint(s).display()))?;
        }
    }
    Ok(())
}

/// fsyncs every file below `dir` and the directories themselves.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; best effort (not every filesystem supports syncing a directory).
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
