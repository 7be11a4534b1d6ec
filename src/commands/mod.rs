//! One module per `alp-rl` subcommand.
pub mod env;
pub mod eval;
pub mod generate;
pub mod new_model;
pub mod sft;
pub mod train;

use std::path::Path;

use anyhow::{Context, Result};

/// Loads the model in `dir` as an inference copy of dtype `kind`, on the GPU when there is one.
pub fn load_inference_model(dir: &Path, kind: tch::Kind) -> Result<alp_policy::CausalLM> {
    let opts = alp_policy::LoadOptions {
        kind,
        device: tch::Device::cuda_if_available(),
    };
    alp_policy::CausalLM::load(dir, &opts)
        .with_context(|| format!("cannot load the model in {}", dir.display()))
}
