//! The one checkpoint writer of SFT and RL. `checkpoints/step-NNNNNN/` holds what the learner writes
//! (`model/`: HF layout with the tokenizer files; RL adds `learner/`: optimizer moments, learner step,
//! ALP scales) and `state.json` (the runtime's state). The directory is assembled under a temporary
//! name and every file in it is fsynced; then it is renamed into place and the parent synced, then
//! `checkpoints/latest` is rewritten (atomically) to name it, and complete checkpoints beyond `keep` are
//! deleted. A reader that follows `latest` therefore only ever sees complete checkpoints, also after a
//! power loss.
use std::path::{Path, PathBuf};

use alp_policy::CausalLM;
use alp_tokenizer::Tokenizer;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::run_dir::{checkpoint_name, sync_dir, temp_path, write_bytes_atomic, RunDir};

/// `keep` for a phase that deletes none of its checkpoints.
pub const KEEP_ALL: usize = usize::MAX;

/// What a checkpoint's `state.json` holds: with the files the learner writes it determines the rest of
/// the run.
pub trait CheckpointState: Serialize + DeserializeOwned {
    /// Steps completed; names the checkpoint directory.
    fn step(&self) -> u64;
}

/// Writes the checkpoints of one run directory.
pub struct CheckpointWriter<'a> {
    run: &'a RunDir,
    keep: usize,
    before_latest: fn(u64),
}

impl<'a> CheckpointWriter<'a> {
    /// A writer into `run`'s `checkpoints/` that keeps the `keep` newest complete checkpoints
    /// ([`KEEP_ALL`]: every one).
    pub fn new(run: &'a RunDir, keep: usize) -> Self {
        CheckpointWriter {
            run,
            keep,
            before_latest: |_| {},
        }
    }

    /// Calls `hook(step)` once the checkpoint directory is in place and before `latest` names it (the
    /// train loop's `latest` pause point of the crash tests).
    pub fn before_latest(mut self, hook: fn(u64)) -> Self {
        self.before_latest = hook;
        self
    }

    /// Writes checkpoint `state.step()`: `write(staging)` puts the learner's files into the staging
    /// directory (created empty), then the writer adds `state.json`, syncs, renames, points `latest`
    /// at it and prunes. Returns the checkpoint's directory.
    pub fn save(
        &self,
        state: &impl CheckpointState,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let step = state.step();
        let final_dir = self.run.checkpoint(step);
        let tmp = temp_path(&final_dir);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        write(&tmp)?;
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
        let dir = self.run.checkpoints_dir();
        sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))?;
        (self.before_latest)(step);
        write_bytes_atomic(&self.run.latest(), checkpoint_name(step).as_bytes())
            .with_context(|| format!("cannot write {}", self.run.latest().display()))?;
        self.prune(step)?;
        tracing::info!(step, dir = %final_dir.display(), "checkpoint saved");
        Ok(final_dir)
    }

    /// Deletes complete checkpoints older than the `keep` newest (never the one `latest` names).
    fn prune(&self, latest: u64) -> Result<()> {
        let run = self.run;
        let steps = run
            .checkpoint_steps()
            .with_context(|| format!("cannot list {}", run.checkpoints_dir().display()))?;
        let n = steps.len();
        for &s in steps.iter().take(n.saturating_sub(self.keep)) {
            if s != latest {
                std::fs::remove_dir_all(run.checkpoint(s))
                    .with_context(|| format!("cannot remove {}", run.checkpoint(s).display()))?;
            }
        }
        Ok(())
    }
}

/// Reads a checkpoint's `state.json`.
pub fn load_state<S: CheckpointState>(dir: &Path) -> Result<S> {
    let path = dir.join("state.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes `policy` and `tokenizer` as the HF checkpoint `dir/model` (what `--resume`, `eval` and
/// transformers load).
pub fn write_model(dir: &Path, policy: &CausalLM, tokenizer: &Tokenizer) -> Result<()> {
    let model = dir.join("model");
    policy
        .save(&model)
        .with_context(|| format!("saving weights to {}", model.display()))?;
    tokenizer
        .save(&model)
        .with_context(|| format!("saving the tokenizer to {}", model.display()))
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
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        step: u64,
        seed: u64,
    }

    impl CheckpointState for State {
        fn step(&self) -> u64 {
            self.step
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn saves_whole_checkpoints_points_latest_at_the_newest_and_prunes_to_keep() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let writer = CheckpointWriter::new(&run, 2);
        for step in 1..=3 {
            let dir = writer
                .save(&State { step, seed: 7 }, |staging| {
                    // The staging directory is empty and is not the final name yet.
                    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
                    assert!(!run.checkpoint(step).exists());
                    std::fs::write(staging.join("weights"), step.to_string())?;
                    Ok(())
                })
                .unwrap();
            assert_eq!(dir, run.checkpoint(step));
            assert_eq!(names(&dir), ["state.json", "weights"]);
            let state: State = load_state(&dir).unwrap();
            assert_eq!(state, State { step, seed: 7 });
        }
        assert_eq!(
            names(&run.checkpoints_dir()),
            ["latest", "step-000002", "step-000003"]
        );
        assert_eq!(
            run.latest_checkpoint().unwrap(),
            Some((run.checkpoint(3), 3))
        );
        // Saving a step again (a resumed run redoing it) replaces it whole.
        writer
            .save(&State { step: 3, seed: 8 }, |_| Ok(()))
            .unwrap();
        assert_eq!(names(&run.checkpoint(3)), ["state.json"]);
        assert_eq!(names(&run.checkpoints_dir()).len(), 3);
    }

    #[test]
    fn a_failing_learner_leaves_no_checkpoint_and_latest_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let writer = CheckpointWriter::new(&run, KEEP_ALL);
        writer
            .save(&State { step: 1, seed: 0 }, |_| Ok(()))
            .unwrap();
        let err = writer
            .save(&State { step: 2, seed: 0 }, |_| anyhow::bail!("disk full"))
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert!(!run.checkpoint(2).exists());
        assert_eq!(
            run.latest_checkpoint().unwrap(),
            Some((run.checkpoint(1), 1))
        );
        // What the failed attempt staged is a temporary, cleaned by a resume.
        crate::run_dir::remove_stale_temps(&run.checkpoints_dir()).unwrap();
        assert_eq!(names(&run.checkpoints_dir()), ["latest", "step-000001"]);
    }
}
