//! The run config of `alp-rl train`: one TOML file (plus `--set a.b=c` overrides), refused before any
//! work starts when a key is unknown, a value has the wrong type or is out of range. Every refusal names
//! where the value came from (`FILE:LINE:COL`, or the `--set` argument), the key, and what is allowed;
//! a misspelt key gets the closest valid one suggested. Every key is documented in `docs/config.md`.
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alp_envs::{Environment, Registry};
use alp_learner::LearnerSettings;
use alp_rollout::{LogprobMode, SamplingParams};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A refused config: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigError {
    /// `FILE:LINE:COL`, `--set KEY=VALUE`, or the file alone when no position is known.
    pub location: String,
    /// Dotted key path (`learner.alp.sigma0`); empty when the error is not about one key.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.location, self.key, self.message)
        }
    }
}

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

pub const EVAL_SPLITS: &[&str] = &["heldout", "train"];

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

/// Most `model.threads`.
pub const MAX_THREADS: usize = 1024;

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

/// Upper bound on `rollout.max_staleness` (each version of lag queues a weight copy).
pub const MAX_STALENESS: u64 = 16;

/// Upper bounds on sizes, so a typo (`group_size = 1000000000`) is refused before anything is
/// allocated; token counts are also checked against the model's context when the run starts
/// ([`TrainConfig::check_context`]).
pub const MAX_GROUP_SIZE: usize = 1024;
pub const MAX_PROMPTS: usize = 65_536;
pub const MAX_STEP_SAMPLES: usize = 1 << 20;
pub const MAX_TOKENS: usize = 1 << 20;
pub const MAX_BATCH: usize = 65_536;
pub const MAX_EVAL_PROBLEMS: usize = 1 << 20;
pub const MAX_EVAL_SAMPLES: usize = 1024;

/// `(key, value, most)`: the first value above its bound is refused, naming the key and the bound.
fn check_upper_bounds(bounds: &[(&str, usize, usize)]) -> Result<(), (String, String)> {
    match bounds.iter().find(|(_, v, most)| v > most) {
        Some((key, v, most)) => Err((key.to_string(), format!("must be at most {most}, got {v}"))),
        None => Ok(()),
    }
}

/// Model presets `model.new_model` accepts (those of `alp-rl new-model`).
pub const PRESETS: &[&str] = &["tiny", "small"];
pub const ARCHS: &[&str] = &["qwen2", "qwen3", "llama"];
pub const DEVICES: &[&str] = &["auto", "cpu", "cuda"];

/// A loaded config and what it came from.
#[derive(Clone)]
pub struct LoadedConfig {
    pub config: TrainConfig,
    /// The `[env]` environment, built by validation from the registry `load` was given.
    pub env: Arc<dyn Environment>,
    pub path: PathBuf,
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

    /// Range and consistency checks; the error names the key (a dotted path) and what is allowed.
    /// Returns the environment, built once from `[env]` with `registry`.
    pub fn validate(&self, registry: &Registry) -> Result<Arc<dyn Environment>, (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        let m = &self.model;
        match (&m.path, &m.new_model) {
            (None, None) => {
                return bad(
                    "model.path",
                    "set `model.path` (an HF checkpoint directory) or `model.new_model` (a preset)"
                        .into(),
                )
            }
            (Some(_), Some(_)) => {
                return bad(
                    "model.new_model",
                    "set either `model.path` or `model.new_model`, not both".into(),
                )
            }
            _ => {}
        }
        if let Some(p) = &m.new_model {
            if !PRESETS.contains(&p.as_str()) {
                return bad(
                    "model.new_model",
                    format!("unknown preset {p:?}; allowed: {}", PRESETS.join(", ")),
                );
            }
        }
        if !ARCHS.contains(&m.arch.as_str()) {
            return bad(
                "model.arch",
                format!("unknown value {:?}; allowed: {}", m.arch, ARCHS.join(", ")),
            );
        }
        if !DEVICES.contains(&m.device.as_str()) {
            return bad(
                "model.device",
                format!(
                    "unknown value {:?}; allowed: {}",
                    m.device,
                    DEVICES.join(", ")
                ),
            );
        }
        if m.threads > MAX_THREADS {
            return bad(
                "model.threads",
                format!(
                    "must be 0 (libtorch's default) to {MAX_THREADS}, got {}",
                    m.threads
                ),
            );
        }
        for (key, v) in [
            ("model.inference_dtype", &m.inference_dtype),
            ("model.train_dtype", &m.train_dtype),
        ] {
            if alp_policy::parse_kind(v).is_err() {
                return bad(key, format!("unknown dtype {v:?}; allowed: f32, bf16, f16"));
            }
        }
        let r = &self.rollout;
        let at_least_one = [
            ("rollout.group_size", r.group_size),
            ("rollout.prompts_per_step", r.prompts_per_step),
            ("rollout.max_new_tokens", r.max_new_tokens),
            ("rollout.max_total_tokens", r.max_total_tokens),
            ("rollout.batch_size", r.batch_size),
            ("run.keep", self.run.keep),
        ];
        for (key, v) in at_least_one {
            if v < 1 {
                return bad(key, format!("must be at least 1, got {v}"));
            }
        }
        check_upper_bounds(&[
            ("rollout.group_size", r.group_size, MAX_GROUP_SIZE),
            ("rollout.prompts_per_step", r.prompts_per_step, MAX_PROMPTS),
            ("rollout.max_new_tokens", r.max_new_tokens, MAX_TOKENS),
            ("rollout.max_total_tokens", r.max_total_tokens, MAX_TOKENS),
            ("rollout.batch_size", r.batch_size, MAX_BATCH),
        ])?;
        if r.group_size * r.prompts_per_step > MAX_STEP_SAMPLES {
            return bad(
                "rollout.prompts_per_step",
                format!(
                    "rollout.group_size x rollout.prompts_per_step is {} samples per step; the most \
                     is {MAX_STEP_SAMPLES}",
                    r.group_size * r.prompts_per_step
                ),
            );
        }
        // Each version of lag keeps one more copy of the weights queued for the rollout worker.
        if r.max_staleness > MAX_STALENESS {
            return bad(
                "rollout.max_staleness",
                format!("must be at most {MAX_STALENESS}, got {}", r.max_staleness),
            );
        }
        if r.max_total_tokens < r.max_new_tokens {
            return bad(
                "rollout.max_total_tokens",
                format!(
                    "must be at least rollout.max_new_tokens ({}), got {}",
                    r.max_new_tokens, r.max_total_tokens
                ),
            );
        }
        let sampling = self.sampling_params();
        if let Err(alp_rollout::RolloutError::InvalidSetting { field, problem }) = sampling
            .validate()
            .and_then(|()| sampling.scoring_temperature().map(|_| ()))
        {
            return bad(&format!("rollout.{field}"), problem);
        }
        if self.run.steps < 1 {
            return bad("run.steps", "must be at least 1, got 0".into());
        }
        if self
            .run
            .out
            .as_ref()
            .is_some_and(|o| o.as_os_str().is_empty())
        {
            return bad(
                "run.out",
                "is empty; set a run directory such as \"runs/x\", or remove the key for runs/<config stem>"
                    .into(),
            );
        }
        if self.run.max_nonfinite_steps < 1 {
            return bad(
                "run.max_nonfinite_steps",
                "must be at least 1, got 0".into(),
            );
        }
        if let Err(e) = self.learner.validate() {
            return bad(&format!("learner.{}", e.field), e.reason);
        }
        let samples = r.group_size * r.prompts_per_step;
        if samples < self.learner.mini_batches {
            return bad(
                "learner.mini_batches",
                format!(
                    "is {} but a step has only {samples} samples (rollout.group_size x rollout.prompts_per_step)",
                    self.learner.mini_batches
                ),
            );
        }
        let env = self.validate_env(registry)?;
        if let Some(sft) = &self.sft {
            self.validate_sft(sft, env.as_ref())?;
        }
        if let Some(e) = &self.eval {
            validate_eval(e)?;
        }
        Ok(env)
    }

    fn validate_sft(&self, s: &SftSection, env: &dyn Environment) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((format!("sft.{key}"), msg));
        if s.steps < 1 {
            return bad("steps", "must be at least 1, got 0".into());
        }
        if s.batch_size < 1 {
            return bad("batch_size", "must be at least 1, got 0".into());
        }
        check_upper_bounds(&[("sft.batch_size", s.batch_size, MAX_BATCH)])?;
        if !(s.lr > 0.0 && s.lr.is_finite()) {
            return bad("lr", format!("must be > 0, got {}", s.lr));
        }
        if !(0.0..=1.0).contains(&s.min_lr_ratio) {
            return bad(
                "min_lr_ratio",
                format!("must be in [0, 1], got {}", s.min_lr_ratio),
            );
        }
        if s.weight_decay < 0.0 || s.max_grad_norm < 0.0 {
            return bad(
                if s.weight_decay < 0.0 {
                    "weight_decay"
                } else {
                    "max_grad_norm"
                },
                "must be >= 0".into(),
            );
        }
        if s.log_every < 1 {
            return bad("log_every", "must be at least 1, got 0".into());
        }
        match &s.data {
            Some(path) if !path.is_file() => bad(
                "data",
                format!(
                    "no such file {} (a JSONL of prompt/completion or messages rows)",
                    path.display()
                ),
            ),
            Some(_) => Ok(()),
            None => {
                // Without a file the pairs come from the environment: it must have worked answers.
                let has = env
                    .example(alp_envs::Split::Train, 0)
                    .and_then(|ex| env.reference_turns(&ex.data))
                    .map_err(|e| ("env".to_string(), e.to_string()))?;
                if has.is_none() {
                    return bad(
                        "data",
                        format!(
                            "environment `{}` has no worked answers (reference_turns); set sft.data to a JSONL file",
                            self.env.name
                        ),
                    );
                }
                Ok(())
            }
        }
    }

    /// Builds the environment once, so a bad setting is refused before the model loads.
    fn validate_env(&self, registry: &Registry) -> Result<Arc<dyn Environment>, (String, String)> {
        let names = registry.names();
        if !names.contains(&self.env.name.as_str()) {
            let mut msg = format!(
                "unknown environment {:?}; allowed: {}",
                self.env.name,
                names.join(", ")
            );
            if let Some(s) = closest(&self.env.name, names.iter().copied()) {
                msg.push_str(&format!("; did you mean `{s}`?"));
            }
            return Err(("env.name".into(), msg));
        }
        match registry.build(&self.env.name, &self.env.settings_json()) {
            Ok(env) => Ok(env),
            Err(e) => {
                let text = e.to_string();
                // The env error names the setting as "setting `NAME`"; point at that key.
                let key = between(&text, "setting `", "`")
                    .map(|s| format!("env.{s}"))
                    .unwrap_or_else(|| "env".into());
                Err((key, text))
            }
        }
    }

    /// `[learner.eggroll]` when `[learner] kind = "eggroll"`. (Placeholder until the config schema
    /// has the key.)
    pub fn eggroll_settings(&self) -> Option<&alp_learner::eggroll::EggrollSettings> {
        None
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

fn validate_eval(e: &EvalSection) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((format!("eval.{key}"), msg));
    if !EVAL_SPLITS.contains(&e.split.as_str()) {
        return bad(
            "split",
            format!(
                "unknown split {:?}; allowed: {}",
                e.split,
                EVAL_SPLITS.join(", ")
            ),
        );
    }
    if e.problems < 1 {
        return bad("problems", "must be at least 1, got 0".into());
    }
    if e.samples < 1 {
        return bad("samples", "must be at least 1, got 0".into());
    }
    check_upper_bounds(&[
        ("eval.problems", e.problems, MAX_EVAL_PROBLEMS),
        ("eval.samples", e.samples, MAX_EVAL_SAMPLES),
        (
            "eval.max_new_tokens",
            e.max_new_tokens.unwrap_or(0),
            MAX_TOKENS,
        ),
    ])?;
    if e.greedy && e.samples > 1 {
        return bad(
            "samples",
            format!("is {} but greedy decoding makes every sample the same; set eval.samples = 1 or eval.greedy = false", e.samples),
        );
    }
    if !(e.temperature > 0.0 && e.temperature.is_finite()) {
        return bad("temperature", format!("must be > 0, got {}", e.temperature));
    }
    if e.max_new_tokens == Some(0) {
        return bad("max_new_tokens", "must be at least 1, got 0".into());
    }
    Ok(())
}

/// Reads, overrides, deserialises and validates a config file.
pub fn load(
    path: &Path,
    overrides: &[String],
    registry: &Registry,
) -> Result<LoadedConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        location: file.clone(),
        key: String::new(),
        message: format!("cannot read the config: {e}"),
    })?;
    let doc = toml_edit::Document::parse(text.as_str()).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigError {
            location: position(&file, &text, span.start),
            key: String::new(),
            message: format!("not valid TOML: {}", e.message()),
        }
    })?;
    let spans = KeySpans::of(&doc);

    // The file alone first, so its errors point into the file.
    let config: TrainConfig = toml::from_str(&text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let key = spans.key_at(span.start).unwrap_or_default();
        ConfigError {
            location: position(&file, &text, span.start),
            message: with_suggestion(e.message(), &key),
            key,
        }
    })?;

    let mut config = config;
    let mut table: toml::Table = toml::from_str(&text).expect("parsed above");
    let mut overridden: Vec<(String, String)> = Vec::new();
    for arg in overrides {
        let location = format!("--set {arg}");
        let (key, value) = parse_override(arg).map_err(|message| ConfigError {
            location: location.clone(),
            key: String::new(),
            message,
        })?;
        set_path(&mut table, &key, value).map_err(|message| ConfigError {
            location: location.clone(),
            key: key.clone(),
            message,
        })?;
        config = TrainConfig::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            ConfigError {
                location: location.clone(),
                key: key.clone(),
                message: with_suggestion(e.message(), &key),
            }
        })?;
        overridden.push((key, location));
    }

    inherit_run_seed(&mut config, &table);
    let env = config.validate(registry).map_err(|(key, message)| {
        let location = overridden
            .iter()
            .rev()
            .find(|(k, _)| key == *k || key.starts_with(&format!("{k}.")))
            .map(|(_, loc)| loc.clone())
            .or_else(|| spans.find(&key).map(|start| position(&file, &text, start)))
            .unwrap_or_else(|| format!("{file} (default value)"));
        ConfigError {
            location,
            key,
            message,
        }
    })?;
    Ok(LoadedConfig {
        config,
        env,
        path: path.to_path_buf(),
    })
}

/// `run.seed` seeds the whole run: the new model's weights, the SFT data order and the learner's ALP
/// noise take it unless the config (or a `--set`) gives their own seed, so `--set run.seed=1` is a
/// different run throughout. The resolved seeds are what `config.toml` in the run directory records.
fn inherit_run_seed(config: &mut TrainConfig, table: &toml::Table) {
    let given = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key)).is_some();
    let seed = config.run.seed;
    if !given("model", "init_seed") {
        config.model.init_seed = seed;
    }
    if !given("learner", "seed") {
        config.learner.seed = seed;
    }
    if let Some(sft) = config.sft.as_mut() {
        if !given("sft", "seed") {
            sft.seed = seed;
        }
    }
}

/// `a.b.c=value`: the value is read as a TOML value when it parses (`3`, `true`, `"x"`, `[1, 2]`) and
/// as a plain string otherwise.
pub fn parse_override(arg: &str) -> Result<(String, toml::Value), String> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {arg:?}"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        return Err(format!(
            "bad key {key:?}: use a dotted path like rollout.group_size"
        ));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((key.to_string(), value))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let (last, parents) = parts.split_last().expect("non-empty key");
    let mut t = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a table", parts[..=i].join(".")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Appends "did you mean `x`?" to serde's unknown-field message (which lists the expected keys).
fn with_suggestion(message: &str, _key: &str) -> String {
    let message = message.trim_end().to_string();
    let Some(unknown) = between(&message, "unknown field `", "`") else {
        return message;
    };
    let Some((_, expected)) = message.split_once("expected ") else {
        return message;
    };
    let candidates = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s);
    match closest(unknown, candidates) {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message,
    }
}

/// The candidate most similar to `word`, if any is similar enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// `FILE:LINE:COL` (1-based, columns in characters) of a byte offset.
fn position(file: &str, text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{file}:{line}:{col}")
}

/// A dotted key path with the spans of the key and of its value.
type KeySpan = (String, Option<Range<usize>>, Option<Range<usize>>);

/// Every key of the document with its spans.
struct KeySpans(Vec<KeySpan>);

impl KeySpans {
    fn of(doc: &toml_edit::Document<&str>) -> Self {
        let mut out = Vec::new();
        walk(doc.as_table(), "", &mut out);
        KeySpans(out)
    }

    /// The deepest key whose key or value span holds `offset`.
    fn key_at(&self, offset: usize) -> Option<String> {
        let holds = |r: &Option<Range<usize>>| r.as_ref().is_some_and(|r| r.contains(&offset));
        self.0
            .iter()
            .filter(|(_, k, v)| holds(k) || holds(v))
            .max_by_key(|(path, _, _)| path.matches('.').count())
            .map(|(path, _, _)| path.clone())
    }

    /// Start of a key's span in the file.
    fn find(&self, key: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(path, _, _)| path == key)
            .and_then(|(_, k, v)| k.clone().or_else(|| v.clone()))
            .map(|r| r.start)
    }
}

fn walk(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut Vec<KeySpan>) {
    for (name, item) in table.iter() {
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        let key_span = table.key(name).and_then(|k| k.span());
        out.push((path.clone(), key_span, item.span()));
        if let Some(t) = item.as_table_like() {
            walk(t, &path, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_as_toml_or_text() {
        let (k, v) = parse_override("rollout.group_size=8").unwrap();
        assert_eq!(
            (k.as_str(), v),
            ("rollout.group_size", toml::Value::Integer(8))
        );
        let (_, v) = parse_override("env.operators=+-").unwrap();
        assert_eq!(v, toml::Value::String("+-".into()));
        assert!(parse_override("nokey").is_err());
        assert!(parse_override("a..b=1").is_err());
    }

    #[test]
    fn run_seed_is_the_default_of_every_other_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seeds.toml");
        let text =
            "[model]\nnew_model = \"tiny\"\n[env]\nname = \"arithmetic\"\n[sft]\nsteps = 1\n\
                    [run]\nseed = 5\n";
        std::fs::write(&path, text).unwrap();
        let seeds = |c: &TrainConfig| {
            (
                c.model.init_seed,
                c.learner.seed,
                c.sft.as_ref().unwrap().seed,
            )
        };
        assert_eq!(
            seeds(&load(&path, &[], &Registry::builtin()).unwrap().config),
            (5, 5, 5)
        );
        let over = ["run.seed=7".to_string(), "learner.seed=3".to_string()];
        assert_eq!(
            seeds(&load(&path, &over, &Registry::builtin()).unwrap().config),
            (7, 3, 7)
        );
        std::fs::write(&path, text.replace("steps = 1", "steps = 1\nseed = 9")).unwrap();
        assert_eq!(
            seeds(&load(&path, &[], &Registry::builtin()).unwrap().config),
            (5, 5, 9)
        );
    }

    #[test]
    fn positions_are_one_based() {
        assert_eq!(position("f", "ab\ncd", 4), "f:2:2");
        assert_eq!(position("f", "ab", 0), "f:1:1");
    }

    #[test]
    fn suggestion_picks_the_closest_key() {
        let m = with_suggestion(
            "unknown field `grup_size`, expected one of `group_size`, `top_p`",
            "",
        );
        assert!(m.ends_with("did you mean `group_size`?"), "{m}");
        assert_eq!(closest("zzz", ["group_size"].into_iter()), None);
    }
}
