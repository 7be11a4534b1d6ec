//! The random models of `alp-rl new-model` and of a config whose `model.path` is a preset: a small HF
//! checkpoint with a character-level tokenizer, for demos, smoke tests and the built-in default.
use std::path::Path;

use alp_policy::{Architecture, CausalLM, Dtype, LoadOptions, ModelConfig};
use alp_tokenizer::CharTokenizerSpec;
use anyhow::{Context, Result};
use serde_json::json;

use crate::config::Preset;

/// Writes a random `preset` model of family `arch` with the char tokenizer into `out`.
pub fn write_model(
    preset: Preset,
    arch: Architecture,
    out: &Path,
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

/// The model config of a preset (what [`write_model`] writes) and its character tokenizer.
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
