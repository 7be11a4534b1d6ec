//! Where every model of a run comes from: one factory that loads a checkpoint for a [`ModelRole`] with
//! that role's options and always checks what it loaded, and the random presets of `alp-rl new-model`
//! ([`presets`]). Training, the warm start, the rollout worker and the commands all load through here,
//! so a corrupt checkpoint is refused the same way whichever of them reads it first.
pub mod presets;

use std::path::Path;

use alp_policy::{Bf16Compute, CausalLM, LoadOptions};
use anyhow::{bail, Context, Result};
use tch::{Device, Kind};

/// What a loaded copy of a model is for; each role has its own dtype, device and bf16 arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRole {
    /// The weights the learner trains (also the warm start's), in the training dtype.
    Policy,
    /// The frozen starting model of a KL term, in the training dtype.
    Reference,
    /// The local engine's copy that generates rollouts and evaluations, in the inference dtype.
    InferenceCopy,
    /// The learner's weights as a vLLM server should hold them: written for the servers at each sync
    /// and the reference of its probe. On the CPU, whatever the run's device: the GPU is the servers'.
    ProbeCopy,
}

/// Loads models for the roles of one run (or one command).
#[derive(Debug, Clone, Copy)]
pub struct ModelFactory {
    /// Where the policy, the reference and the inference copy live.
    pub device: Device,
    pub train_kind: Kind,
    pub inference_kind: Kind,
    /// How a bf16 inference copy computes (`model.bf16_compute`).
    pub bf16: Bf16Compute,
}

impl ModelFactory {
    /// The roles of a run of `config` (`[model]`: device, dtypes, bf16 arithmetic).
    pub fn for_run(config: &crate::config::TrainConfig) -> Self {
        ModelFactory {
            device: config.model.device.to_tch(),
            train_kind: config.model.train_dtype.kind(),
            inference_kind: config.model.inference_dtype.kind(),
            bf16: config.model.bf16_compute,
        }
    }

    /// The options a `role` is loaded with.
    pub fn options(&self, role: ModelRole) -> LoadOptions {
        match role {
            ModelRole::Policy | ModelRole::Reference => LoadOptions {
                kind: self.train_kind,
                device: self.device,
                bf16: Bf16Compute::Native,
            },
            ModelRole::InferenceCopy => LoadOptions {
                kind: self.inference_kind,
                device: self.device,
                bf16: self.bf16,
            },
            ModelRole::ProbeCopy => LoadOptions {
                kind: self.train_kind,
                device: Device::Cpu,
                bf16: Bf16Compute::Native,
            },
        }
    }

    /// The model in `dir` as a `role` copy, its weights checked finite.
    pub fn load(&self, role: ModelRole, dir: &Path) -> Result<CausalLM> {
        load_checked(dir, &self.options(role))
    }
}

/// Loads the model in `dir` as an inference copy of dtype `kind` for a command (`eval`, `generate`): on
/// the GPU when there is one, a bf16 copy on a CPU without bf16 arithmetic as bf16-rounded f32
/// (`Bf16Compute::Auto`).
pub fn load_for_command(dir: &Path, kind: Kind) -> Result<CausalLM> {
    let opts = LoadOptions {
        kind,
        device: Device::cuda_if_available(),
        bf16: Bf16Compute::Auto,
    };
    load_checked(dir, &opts)
}

/// The model in `dir` with `opts`, refused when a weight is not finite.
pub fn load_checked(dir: &Path, opts: &LoadOptions) -> Result<CausalLM> {
    let model = CausalLM::load(dir, opts)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    check_finite(&model, dir)?;
    Ok(model)
}

/// Refuses weights with NaN or infinite values: they would sample token 0 with NaN log-probs and report
/// accuracy 0 as if the model had answered.
pub fn check_finite(model: &CausalLM, dir: &Path) -> Result<()> {
    for (name, t) in model.named_parameters() {
        let _guard = tch::no_grad_guard();
        if !bool::try_from(t.isfinite().all())? {
            bail!(
                "the model in {} has non-finite (NaN or infinite) values in tensor `{name}`; the \
                 checkpoint is corrupt or came from a diverged run",
                dir.display()
            );
        }
    }
    Ok(())
}
