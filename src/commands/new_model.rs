//! `alp-rl new-model`: write a small random HF checkpoint with a character-level tokenizer, for demos,
//! smoke tests and as the starting point of the built-in default.
use std::path::PathBuf;

use alp_policy::{Architecture, Dtype};
use anyhow::Result;
use clap::Args;

use crate::config::Preset;
use crate::models::presets::write_model;

#[derive(Args, Debug)]
pub struct NewModelArgs {
    /// Size preset: `tiny` (2 layers, hidden 64), `small` (4 layers, hidden 256) or `vllm-tiny` (2
    /// layers, hidden 128, head_dim 64: the smallest shape vLLM's CPU attention serves).
    #[arg(long, default_value_t = Preset::Tiny)]
    pub preset: Preset,
    /// Decoder family: qwen2, qwen3 or llama.
    #[arg(long, default_value_t = Architecture::Qwen2)]
    pub arch: Architecture,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// dtype written to disk: f32, bf16 or f16.
    #[arg(long, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

pub fn run(args: NewModelArgs) -> Result<()> {
    let out = &args.out;
    // Never overwrite: a checkpoint (or anything else) already there is refused, not replaced.
    super::refuse_existing_out(out, "new-model")?;
    write_model(args.preset, args.arch, out, args.seed, args.dtype)
}
