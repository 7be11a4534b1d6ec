//! One module per `alp-rl` subcommand.
pub mod env;
pub mod eval;
pub mod generate;
pub mod new_model;
pub mod report;
pub mod sft;
pub mod train;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// Loads the model in `dir` as an inference copy of dtype `kind`, on the GPU when there is one (a
/// bf16 copy on a CPU without bf16 arithmetic is bf16-rounded f32, `Bf16Compute::Auto`).
pub fn load_inference_model(dir: &Path, kind: tch::Kind) -> Result<alp_policy::CausalLM> {
    let opts = alp_policy::LoadOptions {
        kind,
        device: tch::Device::cuda_if_available(),
        bf16: alp_policy::Bf16Compute::Auto,
    };
    let model = alp_policy::CausalLM::load(dir, &opts)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    check_finite(&model, dir)?;
    Ok(model)
}

/// Refuses weights with NaN or infinite values: they would sample token 0 with NaN log-probs and report
/// accuracy 0 as if the model had answered.
pub fn check_finite(model: &alp_policy::CausalLM, dir: &Path) -> Result<()> {
    for (name, t) in model.named_parameters() {
        let _guard = tch::no_grad_guard();
        if !bool::try_from(t.isfinite().all())? {
            anyhow::bail!(
                "the model in {} has non-finite (NaN or infinite) values in tensor `{name}`; the \
                 checkpoint is corrupt or came from a diverged run",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Refuses sampling flags the way the config refuses the same `rollout.*` keys, naming the flag.
pub fn check_sampling_flags(params: &alp_rollout::SamplingParams) -> Result<()> {
    if let Err(alp_rollout::RolloutError::InvalidSetting { field, problem }) = params.validate() {
        bail!("--{}: {problem}", field.replace('_', "-"));
    }
    check_count(
        "--max-new-tokens",
        params.max_new_tokens,
        crate::config::MAX_TOKENS,
    )
}

/// A count flag must be 1 to `most` (the bound of the config key it mirrors).
pub fn check_count(flag: &str, value: usize, most: usize) -> Result<()> {
    ensure!(
        (1..=most).contains(&value),
        "{flag}: must be 1 to {most}, got {value}"
    );
    Ok(())
}
