//! `alp-rl export`: a base model with a LoRA adapter merged into it, written as an ordinary HF
//! checkpoint (config.json, safetensors, the base's tokenizer files) that needs no PEFT to load.
use std::path::{Path, PathBuf};

use alp_policy::{Bf16Compute, Dtype, LoadOptions};
use anyhow::{Context, Result};
use clap::Args;
use tch::{Device, Kind};

use crate::run_dir::{sync_dir, temp_path};

/// Files of the base directory that travel with the weights: tokenizer, chat template, generation
/// defaults. Those present are copied as they are.
const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The base model directory in the HF layout (the model the adapter was trained on).
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory in PEFT's format (adapter_config.json, adapter_model.safetensors),
    /// written by PEFT or by alp-rl. Merged as W + scale B A, computed in f32 and rounded once to
    /// --dtype.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The new checkpoint directory; must not exist or be empty (export never overwrites).
    #[arg(long)]
    pub out: PathBuf,
    /// dtype written to disk: f32, bf16 or f16.
    #[arg(long, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let out = &args.out;
    super::refuse_existing_out(out, "export")?;
    // The merge is done in f32 on the CPU whatever the base's dtype on disk, so `--dtype` rounds once.
    let opts = LoadOptions {
        kind: Kind::Float,
        device: Device::Cpu,
        bf16: Bf16Compute::Native,
    };
    let model = crate::models::load_checked(&args.model, &opts)?;
    super::adapter::merge_adapter(&model, &args.model, &args.adapter)?;

    // Everything goes to a temporary sibling that is renamed to OUT once complete, so a failure
    // (disk full, a killed process) leaves no half-written checkpoint under OUT's name.
    let tmp = temp_path(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove the stale {}", tmp.display()))?;
    }
    let written = write_checkpoint(&model, &args, &tmp).and_then(|()| {
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).with_context(|| format!("cannot sync {}", parent.display()))?;
    }
    tracing::info!(out = %out.display(), dtype = %args.dtype, "merged checkpoint written");
    Ok(())
}

/// The merged weights and config, then the base's tokenizer files, into `dir`.
fn write_checkpoint(model: &alp_policy::CausalLM, args: &ExportArgs, dir: &Path) -> Result<()> {
    model
        .save_as(dir, args.dtype.kind())
        .with_context(|| format!("cannot write the merged checkpoint to {}", dir.display()))?;
    for name in COPIED_FILES {
        let from = args.model.join(name);
        if from.is_file() {
            let to = dir.join(name);
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", to.display()))?;
        }
    }
    sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}
