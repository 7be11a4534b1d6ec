//! The schema of the run config: one serde struct per section, with its documented defaults, and
//! the views of it the runtime takes (sampling settings, learner settings, the run directory).
use std::path::{Path, PathBuf};

use alp_learner::LearnerSettings;
use alp_rollout::{LogprobMode, SamplingParams};
use serde::{Deserialize, Serialize};

/// The whole config. Sections and keys default as documented, except `env.name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub rollout: RolloutSection,
    #[serde(default)]
    pub learner: LearnerSettings,
    pub env: EnvSection,
    #[serde(default)]
    pub run: RunSection,
    /// A supervised warm start run before RL (`alp-rl train`), or the whole job of `alp-rl sft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftSection>,
    /// Held-out evaluation during training (at step 0, every `every` steps and at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSection>,
}

/// `[sft]`: supervised fine-tuning on (prompt, answer) pairs, loss on the answer tokens only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    /// Optimizer steps.
    pub steps: u64,
    /// Worked conversations (prompt and answer, or turns) per step.
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Linear warmup over this many steps, then cosine decay to `min_lr_ratio * lr` at `steps`.
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    /// Gradient-norm clip; 0 disables.
    pub max_grad_norm: f64,
    /// A JSONL file of `{"prompt", "completion"}` or `{"messages", "tools"?}` rows; absent: the
    /// environment's worked conversations (`reference_turns`) on its train split.
    pub data: Option<PathBuf>,
    /// Seeds the order of the pairs.
    pub seed: u64,
    /// Log a metrics row every this many steps (the last step is always logged).
    pub log_every: u64,
    /// Checkpoint every this many steps; 0: last step only (always checkpointed).
    pub checkpoint_every: u64,
}

impl Default for SftSection {
    fn default() -> Self {
        SftSection {
            steps: 100,
            batch_size: 16,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            data: None,
            seed: 0,
            log_every: 10,
            checkpoint_every: 0,
        }
    }
}

/// `[eval]`: accuracy and unbiased pass@k on a split, logged as `eval/*` metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate every this many RL steps; 0: only before the first and after the last step.
    pub every: u64,
    /// `heldout` (the environment's test split) or `train`.
    pub split: String,
    /// Problems: seeds `0..problems` of the split (a dataset caps it at its size).
    pub problems: usize,
    /// Samples per problem (k of pass@k).
    pub samples: usize,
    /// Greedy decoding (then `samples` must be 1); otherwise sampling at `temperature`.
    pub greedy: bool,
    pub temperature: f64,
    /// Most tokens per assistant turn; absent: `rollout.max_new_tokens`.
    pub max_new_tokens: Option<usize>,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            every: 0,
            split: "heldout".into(),
            problems: 64,
            samples: 1,
            greedy: true,
            temperature: 1.0,
            max_new_tokens: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// An HF checkpoint directory (config.json, safetensors, tokenizer.json).
    pub path: Option<PathBuf>,
    /// Instead of `path`: create a random model with this `alp-rl new-model` preset (tiny, small).
    pub new_model: Option<String>,
    /// Decoder family of a `new_model`: qwen2, qwen3 or llama.
    pub arch: String,
    /// Seed of a `new_model`'s random weights.
    pub init_seed: u64,
    /// Compute dtype of the rollout (inference) copy: bf16 makes the training-inference mismatch real.
    pub inference_dtype: String,
    /// Dtype of the trained (master) weights.
    pub train_dtype: String,
    /// auto (CUDA when available), cpu or cuda.
    pub device: String,
    /// CPU threads of each libtorch op (intra-op parallelism); 0 keeps libtorch's default (one per core).
    pub threads: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: None,
            new_model: None,
            arch: "qwen2".into(),
            init_seed: 0,
            inference_dtype: "bf16".into(),
            train_dtype: "f32".into(),
            device: "auto".into(),
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSection {
    /// Samples per prompt (G); advantages are computed within a group.
    pub group_size: usize,
    /// Prompts per learner step; a step trains on `prompts_per_step * group_size` samples.
    pub prompts_per_step: usize,
    /// Most tokens the model generates in one assistant turn.
    pub max_new_tokens: usize,
    /// Most tokens of a whole episode (prompt, every turn and environment message).
    pub max_total_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// 0 disables top-k.
    pub top_k: i64,
    /// Which distribution `mu` is taken under: sampling, temperature or raw.
    pub logprob_mode: LogprobMode,
    /// How many policy versions a trained sample may lag the learner; 0 is synchronous on-policy.
    pub max_staleness: u64,
    /// Rows per forward of the inference engine.
    pub batch_size: usize,
    /// Extra variables for the chat template (e.g. `enable_thinking = false`).
    pub chat_extra: toml::Table,
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            group_size: 4,
            prompts_per_step: 4,
            max_new_tokens: 32,
            max_total_tokens: 1024,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            logprob_mode: LogprobMode::Temperature,
            max_staleness: 0,
            batch_size: 64,
            chat_extra: toml::Table::new(),
        }
    }
}

/// `[env]`: `name` picks the environment, every other key is one of its settings (`alp-rl env list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvSection {
    pub name: String,
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl EnvSection {
    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).expect("TOML values are JSON values")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Learner steps of the whole run (a resumed run continues up to this count).
    pub steps: u64,
    /// Seeds the prompts drawn and the sampling.
    pub seed: u64,
    /// Run directory; default `runs/<config file stem>`; `--out` overrides it.
    pub out: Option<PathBuf>,
    /// Checkpoint every this many steps (the last step is always checkpointed); 0: last step only.
    pub checkpoint_every: u64,
    /// Complete checkpoints kept (older ones are deleted once a newer one is complete).
    pub keep: usize,
    /// Consecutive steps with a non-finite loss or gradient that stop the run.
    pub max_nonfinite_steps: u64,
    /// Fill the rollout logs' `lp_old` / `lp` columns (two extra no-grad forwards per step).
    pub log_logprobs: bool,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            steps: 10,
            seed: 0,
            out: None,
            checkpoint_every: 50,
            keep: 3,
            max_nonfinite_steps: 5,
            log_logprobs: false,
        }
    }
}

impl TrainConfig {
    /// Sampling settings of one rollout batch (stop tokens and seed are filled in by the runtime).
    pub fn sampling_params(&self) -> SamplingParams {
        let r = &self.rollout;
        SamplingParams {
            greedy: false,
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            max_new_tokens: r.max_new_tokens,
            stop_token_ids: Vec::new(),
            logprob_mode: r.logprob_mode,
            seed: 0,
        }
    }

    /// The learner's settings: `[learner]` plus the temperature the rollouts' log-probs are taken at
    /// (every forward that scores sampled tokens divides its logits by it).
    pub fn learner_settings(&self) -> LearnerSettings {
        let mut s = self.learner.clone();
        s.score_temperature = self
            .sampling_params()
            .scoring_temperature()
            .expect("validated: the rollout log-probs can be reproduced");
        s
    }

    /// Applies `model.threads` to libtorch (every thread that starts torch work afterwards uses it).
    pub fn apply_threads(&self) {
        if self.model.threads > 0 {
            tch::set_num_threads(self.model.threads as i32);
            tracing::debug!(threads = self.model.threads, "libtorch intra-op threads");
        }
    }

    /// The resolved config as TOML (what `config.toml` in the run directory holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config serialises to TOML")
    }

    /// The run directory: `--out`, else `run.out`, else `runs/<config stem>`.
    pub fn run_dir(&self, config_path: &Path, out: Option<&Path>) -> PathBuf {
        if let Some(o) = out {
            return o.to_path_buf();
        }
        if let Some(o) = &self.run.out {
            return o.clone();
        }
        let stem = config_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        PathBuf::from("runs").join(stem)
    }
}
