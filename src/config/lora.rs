//! `[model.lora]`: train a LoRA adapter instead of the model's weights. Present (even empty) turns LoRA
//! on for every training phase of the run (the `[sft]` warm start and RL); the keys are PEFT's, with
//! PEFT's defaults where PEFT has one and the "LoRA Without Regret" advice (rank 16, alpha 32)
//! otherwise. Converted to the policy crate's [`LoraConfig`] by [`LoraSection::to_lora_config`].
use std::path::Path;

use alp_policy::lora::{LoraConfig, TargetModules};
use alp_policy::{CausalLM, LoraAdapter};
use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `target_modules`: `"all-linear"` or a list of module names as PEFT spells them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModulesSetting {
    /// `"all-linear"` (the only string accepted): every attention and MLP projection.
    Keyword(String),
    /// `["q_proj", "v_proj"]`: projections whose path is, or ends in `.` + , one of these.
    Names(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// The adapter's rank r (A is `[r, in]`, B `[out, r]`).
    pub rank: i64,
    /// `lora_alpha`: the adapter's output is scaled by alpha / rank (alpha / sqrt(rank) with rslora).
    pub alpha: f64,
    pub target_modules: TargetModulesSetting,
    /// Rank-stabilised scaling: alpha / sqrt(rank).
    pub use_rslora: bool,
    /// `lora_dropout`: must be 0 (the adapter applies no dropout).
    pub dropout: f64,
    /// Seed of A's initialisation (B starts at zero, so the first forward is the base model's).
    pub init_seed: u64,
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            rank: 16,
            alpha: 32.0,
            target_modules: TargetModulesSetting::Keyword("all-linear".into()),
            use_rslora: false,
            dropout: 0.0,
            init_seed: 0,
        }
    }
}

impl LoraSection {
    /// The adapter settings, for `base` (the directory or hub id of the model the adapter is made
    /// for, written to `adapter_config.json`).
    pub fn to_lora_config(&self, base: Option<String>) -> LoraConfig {
        let targets = match &self.target_modules {
            TargetModulesSetting::Keyword(_) => TargetModules::AllLinear,
            TargetModulesSetting::Names(names) => TargetModules::Names(names.clone()),
        };
        let mut config = LoraConfig::new(self.rank, self.alpha, targets);
        config.use_rslora = self.use_rslora;
        config.lora_dropout = self.dropout;
        config.base_model_name_or_path = base;
        config
    }

    /// A fresh adapter of these settings on `model` (loaded from `model_dir`, the base named in its
    /// `adapter_config.json`), as PEFT initialises one: what SFT and RL train.
    pub fn new_adapter(&self, model: &CausalLM, model_dir: &Path) -> anyhow::Result<LoraAdapter> {
        let base = Some(model_dir.display().to_string());
        LoraAdapter::init(self.to_lora_config(base), model, self.init_seed)
            .context("[model.lora] does not fit the model")
    }

    /// Range checks, each naming its key under `model.lora.`; whether the targets exist in the model
    /// is checked once the model's config is read.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((format!("model.lora.{key}"), msg));
        if let TargetModulesSetting::Keyword(k) = &self.target_modules {
            if k != "all-linear" {
                return bad(
                    "target_modules",
                    format!(
                        "is \"{k}\"; use \"all-linear\" (every attention and MLP projection) or a \
                         list of module names such as [\"q_proj\", \"v_proj\"]"
                    ),
                );
            }
        }
        if let TargetModulesSetting::Names(names) = &self.target_modules {
            if names.is_empty() {
                return bad(
                    "target_modules",
                    "is an empty list; name at least one module (\"q_proj\", ...) or use \
                     \"all-linear\""
                        .into(),
                );
            }
        }
        if !(1..=4096).contains(&self.rank) {
            return bad("rank", format!("must be 1 to 4096, got {}", self.rank));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(
                "alpha",
                format!("must be a finite number > 0, got {}", self.alpha),
            );
        }
        if self.dropout != 0.0 {
            return bad(
                "dropout",
                format!(
                    "is {}; LoRA dropout is not implemented, set it to 0 (RL with LoRA is \
                     usually run without it)",
                    self.dropout
                ),
            );
        }
        Ok(())
    }
}
