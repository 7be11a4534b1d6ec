//! Syncing a LoRA adapter to the servers instead of whole weights
//! ([`alp_rollout::WeightPayload::Adapter`]): the adapter of version `v` is written in PEFT's format
//! to the sync folder's `v<v>/` (megabytes, where whole weights are the model), each server loads it
//! with `POST /v1/load_lora_adapter` under the name `alp-policy-v<v>` on top of the base weights it
//! holds, and every request of that version names it as its `model`. The probe runs on the servers
//! under that name and on our side with the same adapter (read back from the written files) on the
//! reference copy of the base, so an adapter that never reached a server (the server would answer
//! with the base or an older adapter) and one that a server applies differently (a swapped factor, a
//! wrong scale) both fail the sync. A new name per version means a stale adapter can never answer
//! for a newer version; the names of older versions are unloaded once the new one passed its probe.
//!
//! Servers must be started with `--enable-lora --max-lora-rank R` (R at least the adapter's rank)
//! and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` ([`lora_server_args`]).
use std::path::Path;
use std::time::Instant;

use alp_policy::lora::save_peft;
use alp_policy::{LoraAdapter, LoraConfig};
use alp_rollout::{NamedTensors, ProbeReport, RolloutError, SyncReport};

use crate::adapter_calls::adapter_name;
use crate::backend::VllmBackend;
use crate::error::VllmError;

/// Environment variables of a server: (name, value).
pub type ServerEnv = Vec<(String, String)>;

/// The ranks vLLM 0.32 accepts for `--max-lora-rank`.
const VLLM_MAX_LORA_RANKS: [i64; 9] = [1, 8, 16, 32, 64, 128, 256, 320, 512];

/// The server arguments and environment adapters of rank `rank` need: `--enable-lora`,
/// `--max-lora-rank` (the smallest value vLLM accepts that holds `rank`), `--max-loras max_loras`
/// (adapters batched together: 2 for a trained adapter, the version being loaded beside the one
/// serving; a population's members for EGGROLL) and runtime adapter loading.
pub fn lora_server_args(
    rank: i64,
    max_loras: usize,
) -> Result<(Vec<String>, ServerEnv), VllmError> {
    let max_rank = VLLM_MAX_LORA_RANKS
        .iter()
        .copied()
        .find(|&r| r >= rank)
        .ok_or_else(|| VllmError::Setting {
            field: "args",
            problem: format!(
                "a LoRA rank of {rank} is more than vLLM serves (--max-lora-rank at most 512)"
            ),
        })?;
    let args = [
        "--enable-lora",
        "--max-lora-rank",
        &max_rank.to_string(),
        "--max-loras",
        &max_loras.max(1).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = vec![(
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING".to_string(),
        "True".to_string(),
    )];
    Ok((args, env))
}

/// Writes `config` and `tensors` (PEFT names, any float dtype) into `dir` as PEFT does
/// ([`save_peft`]), replacing what is there.
pub fn write_adapter(
    dir: &Path,
    config: &LoraConfig,
    tensors: &NamedTensors,
) -> Result<(), VllmError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| VllmError::WriteWeights {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
    }
    save_peft(dir, config, tensors).map_err(|e| VllmError::WriteWeights {
        path: dir.display().to_string(),
        message: e.to_string(),
    })
}

impl VllmBackend {
    /// Writes the adapter of `version` to the sync folder, reads it back for the probe's forward on
    /// the reference copy (which refuses an adapter that does not fit the model), and syncs every
    /// server to it ([`VllmBackend::sync_adapter_from_dir`]).
    pub fn sync_adapter(
        &mut self,
        version: u64,
        config: &LoraConfig,
        tensors: &NamedTensors,
    ) -> Result<SyncReport, RolloutError> {
        let start = Instant::now();
        let dir = self.version_dir(version);
        write_adapter(&dir, config, tensors)?;
        let reference = self.reference_model()?;
        let adapter = LoraAdapter::load(&dir, reference, None)
            .map_err(|e| RolloutError::Backend(format!("the adapter of version {version}: {e}")))?;
        let bytes = crate::weights::bytes_in(&dir);
        let probes = self.sync_adapter_from_dir(&dir, version, &adapter)?;
        self.prune_sync_dir(&dir)?;
        Ok(SyncReport {
            version,
            probes,
            seconds: start.elapsed().as_secs_f64(),
            bytes,
        })
    }

    /// Every server loads the adapter in `dir` as version `version`, verified against our forward of
    /// the reference copy with `expected` (the adapter `dir` must hold).
    pub fn sync_adapter_from_dir(
        &mut self,
        dir: &Path,
        version: u64,
        expected: &LoraAdapter,
    ) -> Result<Vec<ProbeReport>, VllmError> {
        let reference = self
            .reference_model()
            .map_err(|e| VllmError::Runtime(e.to_string()))?;
        let probe = self.probe_reference(reference, expected, version);
        self.sync_to(dir, version, probe, Some(adapter_name(version)))
    }
}
