//! The rollout backend: what the rollout worker generates with, as `rollout.backend` chooses it
//! ([`RolloutBackend`]). Both backends are driven through
//! [`GenerationBackend`], so the episode runner and the evaluation do not know which one they have,
//! and both take the learner's published [`WeightUpdate`]s through
//! [`GenerationBackend::apply_update`]:
//! - `local`: the embedded engine, whose model the published tensors are copied into.
//! - `vllm`: servers. The backend keeps the learner's weights in a reference copy (in the learner's
//!   dtype) that updates are applied to, writes it for the servers and verifies each sync with a
//!   probe against it.
use std::path::Path;
use std::sync::Arc;

use alp_policy::MemberHooks;
use alp_rollout::{GenerationBackend, LocalEngine, LogprobMode, SyncReport, WeightUpdate};
use alp_vllm::{ReplicaStats, VllmBackend, VllmSettings};

use crate::models::{ModelFactory, ModelRole};

/// How to build the worker's backend; moved into its thread.
#[derive(Clone)]
pub enum BackendSettings {
    Local {
        /// Loads the inference copy (`model.inference_dtype`, `model.bf16_compute`, `model.device`).
        models: ModelFactory,
        /// Rows per forward (`rollout.batch_size`).
        batch_size: usize,
    },
    Vllm {
        /// `[rollout.vllm]` with the run directory's defaults filled in.
        settings: Box<VllmSettings>,
        /// What the servers' log-probs must mean (`rollout.logprob_mode`).
        logprob_mode: LogprobMode,
        /// Loads the worker's copy of the learner's weights, which each sync is written from and
        /// probed against ([`ModelRole::ProbeCopy`]: `model.train_dtype`, on the CPU).
        models: ModelFactory,
    },
}

/// The rollout worker's backend: a [`GenerationBackend`] plus what differs between the kinds (the
/// population members only the local engine applies, the servers' counters).
pub enum RolloutBackend {
    Local(Box<LocalEngine>),
    /// The servers, with the reference copy of the learner's weights each sync is written from and
    /// probed against.
    Vllm(Box<VllmBackend>),
}

impl RolloutBackend {
    /// Builds the backend on the weights in `model_dir`, labelled `version`. For vLLM this launches
    /// (or connects to) the servers and syncs them to those weights before anything is generated;
    /// the report of that first sync is returned.
    pub fn start(
        settings: &BackendSettings,
        model_dir: &Path,
        version: u64,
    ) -> Result<(Self, Option<SyncReport>), String> {
        let load = |role| {
            models_of(settings)
                .load(role, model_dir)
                .map_err(|e| format!("{e:#}"))
        };
        match settings {
            BackendSettings::Local { batch_size, .. } => {
                let model = load(ModelRole::InferenceCopy)?;
                tracing::info!(compute = %model.precision().describe(), "rollout engine");
                let engine = LocalEngine::new(model, *batch_size).with_version(version);
                Ok((RolloutBackend::Local(Box::new(engine)), None))
            }
            BackendSettings::Vllm {
                settings,
                logprob_mode,
                ..
            } => {
                // The probe's reference forward runs on the CPU: the GPU, if any, is the servers'.
                let reference = load(ModelRole::ProbeCopy)?;
                let mut backend =
                    VllmBackend::new((**settings).clone(), Some(model_dir), *logprob_mode)
                        .map_err(|e| format!("starting the vLLM backend: {e}"))?
                        .with_reference(reference);
                let report = synced(version, backend.sync_reference(version))?;
                Ok((RolloutBackend::Vllm(Box::new(backend)), Some(report)))
            }
        }
    }

    /// The backend as episodes and evaluation drive it.
    pub fn generation_backend(&mut self) -> &mut dyn GenerationBackend {
        match self {
            RolloutBackend::Local(engine) => engine.as_mut(),
            RolloutBackend::Vllm(backend) => backend.as_mut(),
        }
    }

    /// Makes the published `update` the weights of every later generation. For vLLM the sync is
    /// verified on every serving server (an error means no sample may be attributed to the update's
    /// version). Returns the sync's report (the local engine's has no probes).
    pub fn install(&mut self, update: &WeightUpdate) -> Result<Option<SyncReport>, String> {
        let applied = self.generation_backend().apply_update(update);
        match self {
            RolloutBackend::Local(_) => applied.map(Some).map_err(|e| e.to_string()),
            RolloutBackend::Vllm(_) => synced(update.version, applied).map(Some),
        }
    }

    /// The population whose members generate the next batch (evolution strategies), or `None` for
    /// the plain policy: the local engine applies the members as hooks, vLLM servers as adapters.
    pub fn set_members(&mut self, members: Option<Arc<dyn MemberHooks>>) -> Result<(), String> {
        match self {
            RolloutBackend::Local(engine) => engine.set_members(members),
            RolloutBackend::Vllm(backend) => backend.set_members(members),
        }
        Ok(())
    }

    /// The servers' counters (serving, served, taken out, back), from what generation and syncs saw;
    /// empty for the local engine.
    pub fn server_stats(&self) -> Vec<ReplicaStats> {
        match self {
            RolloutBackend::Local(_) => Vec::new(),
            RolloutBackend::Vllm(backend) => backend.stats(),
        }
    }
}

/// The servers' sync to `version`, logged, or its error with the version.
fn synced(
    version: u64,
    sync: Result<SyncReport, alp_rollout::RolloutError>,
) -> Result<SyncReport, String> {
    let report = sync.map_err(|e| format!("syncing the vLLM servers to version {version}: {e}"))?;
    tracing::info!(
        version,
        servers = report.probes.len(),
        secs = report.seconds,
        "vLLM servers synced"
    );
    Ok(report)
}

/// The model factory of a backend's settings.
fn models_of(settings: &BackendSettings) -> ModelFactory {
    match settings {
        BackendSettings::Local { models, .. } | BackendSettings::Vllm { models, .. } => *models,
    }
}
