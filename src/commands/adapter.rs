//! `--adapter DIR` of `generate`, `eval` and `export`: a LoRA adapter in PEFT's format
//! (`adapter_config.json` + `adapter_model.safetensors`, written by PEFT or by alp-rl) merged into a
//! loaded model, `W + scale B A` computed in f32 and rounded once to the model's dtype (docs/lora.md).
use std::path::Path;

use alp_policy::{CausalLM, LoraAdapter};
use anyhow::{Context, Result};

/// The name the adapter's `base_model_name_or_path` is checked against: the model directory's own
/// name (resolved, so `.` or a trailing `/` still give it), as `LoraAdapter::load` compares them.
fn base_model_name(model_dir: &Path) -> String {
    std::fs::canonicalize(model_dir)
        .unwrap_or_else(|_| model_dir.to_path_buf())
        .display()
        .to_string()
}

/// Loads the adapter in `adapter_dir` for `model` (loaded from `model_dir`) and merges it into
/// `model`. A refused adapter leaves `model` unchanged; the error is the adapter's own message (its
/// file, key and fix) under a line naming `--adapter`.
pub fn merge_adapter(model: &CausalLM, model_dir: &Path, adapter_dir: &Path) -> Result<()> {
    let context = || {
        format!(
            "--adapter {}: cannot use this LoRA adapter with the model in {}",
            adapter_dir.display(),
            model_dir.display()
        )
    };
    let adapter = LoraAdapter::load(adapter_dir, model, Some(&base_model_name(model_dir)))
        .with_context(context)?;
    adapter.merge_into(model).with_context(context)?;
    tracing::info!(
        adapter = %adapter_dir.display(),
        rank = adapter.config().r,
        projections = adapter.sites().len(),
        "LoRA adapter merged into the model"
    );
    Ok(())
}
