//! `alp-rl new-model`: write a small random HF checkpoint with a character-level tokenizer, for demos,
//! smoke tests and as the starting point of the built-in default.
use std::path::PathBuf;

use alp_policy::{Architecture, CausalLM, Dtype, LoadOptions, ModelConfig};
use alp_tokenizer::CharTokenizerSpec;
use anyhow::{ensure, Context, Result};
use clap::Args;
use serde_json::json;

use crate::config::Preset;

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
    if out.exists() {
        let empty_dir = out.is_dir()
            && std::fs::read_dir(out)
                .with_context(|| format!("cannot read {}", out.display()))?
                .next()
                .is_none();
        ensure!(
            empty_dir,
            "--out {}: already exists and is not an empty directory; new-model never overwrites, \
             pass a new path",
            out.display()
        );
    }
    write_model(args.preset, args.arch, out, args.seed, args.dtype)
}

/// Writes a random `preset` model of family `arch` with the char tokenizer into `out`.
pub fn write_model(
    preset: Preset,
    arch: Architecture,
    out: &std::path::Path,
    seed: u64,
    dtype: Dtype,
) -> Result<()> {
    let (config, tokenizer) = preset_config(preset, arch)?;
    let model = CausalLM::random(
        config,
        &LoadOptions {
            kind: dtype.kind(),
            ..LoadOptions::default()
        },
        seed,
    )?;
    model
        .save(out)
        .with_context(|| format!("cannot write the model to {}", out.display()))?;
    tokenizer
        .save(out)
        .with_context(|| format!("cannot write the tokenizer to {}", out.display()))?;
    let params: i64 = model
        .named_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    tracing::info!(dir = %out.display(), params, %preset, "wrote a random model");
    Ok(())
}

/// The model config of a preset (what `write_model` writes) and its character tokenizer.
pub fn preset_config(
    preset: Preset,
    arch: Architecture,
) -> Result<(ModelConfig, alp_tokenizer::Tokenizer)> {
    let spec = CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars());
    let tokenizer = spec.build()?;
    let (layers, hidden, heads, kv_heads, inter) = match preset {
        Preset::Tiny => (2, 64, 4, 2, 192),
        Preset::Small => (4, 256, 8, 2, 704),
        // vLLM's CPU attention needs head_dim >= 64 (tiny and small have 16 and 32).
        Preset::VllmTiny => (2, 128, 2, 1, 384),
    };
    let eos = tokenizer
        .eos_token_id()
        .context("the char tokenizer has an EOS token")?;
    let config = json!({
        "architectures": [arch.hf_class()], "model_type": arch.as_str(),
        "vocab_size": tokenizer.vocab_size(), "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": hidden / heads, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": true, "hidden_act": "silu",
        "initializer_range": 0.02, "bos_token_id": null, "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_token_id(), "torch_dtype": "float32"
    });
    let config = ModelConfig::from_json_str(&config.to_string(), "new-model preset")?;
    Ok((config, tokenizer))
}
