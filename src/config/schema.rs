//! The schema of the run config: one serde struct per section, with its documented defaults, and
//! the views of it the runtime takes (sampling settings, learner settings, the run directory).
use std::path::{Path, PathBuf};

use alp_learner::eggroll::EggrollSettings;
use alp_learner::{LearnerKind, LearnerSettings};
use alp_macros::string_enum;
use alp_policy::{Architecture, Bf16Compute, Dtype};
use alp_rollout::{LogprobMode, SamplingParams};
use alp_vllm::VllmSettings;
use serde::{Deserialize, Serialize};

use super::lora::LoraSection;

string_enum! {
    /// Where the model runs (`model.device`).
    pub enum Device {
        /// CUDA when libtorch sees a GPU, otherwise the CPU.
        Auto => "auto",
        Cpu => "cpu",
        /// The first CUDA device.
        Cuda => "cuda",
    }
}

impl Device {
    /// The libtorch device.
    pub fn to_tch(self) -> tch::Device {
        match self {
            Device::Auto => tch::Device::cuda_if_available(),
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda => tch::Device::Cuda(0),
        }
    }
}

string_enum! {
    /// A random-model size of `alp-rl new-model --preset` and `model.new_model`.
    pub enum Preset: "preset" {
        /// 2 layers, hidden size 64.
        Tiny => "tiny",
        /// 4 layers, hidden size 256.
        Small => "small",
        /// 2 layers, hidden size 128, head_dim 64: the smallest shape vLLM's CPU attention serves.
        VllmTiny => "vllm-tiny",
    }
}

string_enum! {
    /// What generates the rollouts (`rollout.backend`).
    pub enum BackendKind: "rollout backend" {
        /// The embedded libtorch engine on the rollout thread (`model.inference_dtype`, `model.device`).
        Local => "local",
        /// vLLM servers (`[rollout.vllm]`), synced to the learner's weights after every update.
        Vllm => "vllm",
    }
}

string_enum! {
    /// A split by the name users give it (`eval.split`, `--split`).
    pub enum SplitName: "split" {
        /// The environment's test split: problems training never draws.
        Heldout => "heldout",
        Train => "train",
    }
}

impl SplitName {
    /// The environment's split of this name.
    pub fn split(self) -> alp_envs::Split {
        match self {
            SplitName::Heldout => alp_envs::Split::Test,
            SplitName::Train => alp_envs::Split::Train,
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
    /// With `[model.lora]`: the warm start trains a LoRA adapter too (merged into the model RL starts
    /// from) when true, every weight when false. Ignored without `[model.lora]`.
    pub lora: bool,
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
            lora: true,
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
    pub split: SplitName,
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
            split: SplitName::Heldout,
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
    pub new_model: Option<Preset>,
    /// Decoder family of a `new_model`: qwen2, qwen3 or llama.
    pub arch: Architecture,
    /// Seed of a `new_model`'s random weights.
    pub init_seed: u64,
    /// Compute dtype of the rollout (inference) copy: bf16 makes the training-inference mismatch real.
    pub inference_dtype: Dtype,
    /// How a bf16 inference copy computes: auto (native bf16 on CUDA and on CPUs with bf16
    /// arithmetic, bf16-rounded f32 on the others), native or rounded-f32.
    pub bf16_compute: Bf16Compute,
    /// Dtype of the trained (master) weights.
    pub train_dtype: Dtype,
    /// auto (CUDA when available), cpu or cuda.
    pub device: Device,
    /// CPU threads of each libtorch op (intra-op parallelism); 0 keeps libtorch's default (one per core).
    pub threads: usize,
    /// `[model.lora]`: train a LoRA adapter instead of the weights (absent: full fine-tuning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: None,
            new_model: None,
            arch: Architecture::Qwen2,
            init_seed: 0,
            inference_dtype: Dtype::Bf16,
            bf16_compute: Bf16Compute::Auto,
            train_dtype: Dtype::F32,
            device: Device::Auto,
            threads: 0,
            lora: None,
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
    /// What generates the rollouts (and runs the evaluation): `local` or `vllm`.
    pub backend: BackendKind,
    /// The vLLM servers of `backend = "vllm"`: where they are or how to launch them, timeouts,
    /// retries and how syncs are verified (docs/vllm.md). Logs and synced weights go in the run
    /// directory unless `log_dir` / `sync_dir` say otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vllm: Option<VllmSettings>,
}

impl RolloutSection {
    /// `chat_extra` as the JSON object the chat template renders with (rollouts, warm start and
    /// evaluation all pass the same variables).
    pub fn chat_extra_json(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::to_value(&self.chat_extra)
            .expect("a TOML table converts to JSON")
            .as_object()
            .cloned()
            .unwrap_or_default()
    }
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
            backend: BackendKind::Local,
            vllm: None,
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
            first_stream: 0,
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

    /// Which learner trains the policy (`learner.kind`): [`LearnerKind::Pg`] runs
    /// [`alp_learner::PgLearner`] with [`TrainConfig::learner_settings`], [`LearnerKind::Eggroll`] runs
    /// [`alp_learner::eggroll::EsLearner`] with [`TrainConfig::eggroll_settings`].
    /// `[rollout.vllm]` of `backend = "vllm"` with the run directory's defaults filled in: server
    /// logs in `RUN/vllm/logs/`, synced weights in `RUN/vllm/weights/`, and a leading `~` of
    /// `python` expanded.
    pub fn vllm_settings(&self, run_root: &Path) -> Option<VllmSettings> {
        if self.rollout.backend != BackendKind::Vllm {
            return None;
        }
        let mut s = self.rollout.vllm.clone()?;
        // `~/` in `python` is the home folder (where scripts/setup-vllm.sh installs the CPU build).
        if let (Ok(rest), Some(home)) = (s.python.strip_prefix("~"), std::env::var_os("HOME")) {
            s.python = Path::new(&home).join(rest);
        }
        let vllm_dir = run_root.join("vllm");
        s.log_dir.get_or_insert_with(|| vllm_dir.join("logs"));
        s.sync_dir.get_or_insert_with(|| vllm_dir.join("weights"));
        // Servers we launch serve adapters for a LoRA run (the policy's) and for EGGROLL (one per
        // member): add the flags they need (unless given).
        let adapters = match (&self.model.lora, self.learner.kind) {
            (Some(lora), _) => Some((lora.rank, 2)),
            (None, LearnerKind::Eggroll) => {
                Some((self.learner.eggroll.rank, self.eggroll_population()))
            }
            (None, _) => None,
        };
        if let (true, Some((rank, max_loras))) = (s.launch, adapters) {
            if let Ok((args, env)) = alp_vllm::lora_server_args(rank, max_loras) {
                if !s.args.iter().any(|a| a == "--enable-lora") {
                    s.args.extend(args);
                }
                for (k, v) in env {
                    s.env.entry(k).or_insert(v);
                }
            }
        }
        Some(s)
    }

    pub fn learner_kind(&self) -> LearnerKind {
        self.learner.kind
    }

    /// `[learner.eggroll]` when `learner.kind = "eggroll"` (`None` for the policy-gradient learner),
    /// with `population` resolved: 0 in the config becomes [`TrainConfig::eggroll_population`], so
    /// `EsLearner::update` refuses a step with any other number of members. Its noise seed is
    /// `learner.seed` (`run.seed` unless set).
    pub fn eggroll_settings(&self) -> Option<EggrollSettings> {
        (self.learner.kind == LearnerKind::Eggroll).then(|| EggrollSettings {
            population: self.eggroll_population(),
            ..self.learner.eggroll.clone()
        })
    }

    /// Members of one ES step: `learner.eggroll.population`, or for 0 one member per
    /// `samples_per_member` rollouts of the step (`rollout.prompts_per_step x rollout.group_size`
    /// rollouts; with the default 1, every rollout is its own member and the `group_size` members
    /// answering one prompt are its fitness group). Validation makes it even and makes
    /// `population x samples_per_member` the step's rollouts.
    pub fn eggroll_population(&self) -> usize {
        let es = &self.learner.eggroll;
        match es.population {
            0 => {
                self.rollout.prompts_per_step * self.rollout.group_size
                    / es.samples_per_member.max(1)
            }
            n => n,
        }
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

#[cfg(test)]
mod tests {
    use super::super::{load, ConfigError};
    use super::*;

    fn load_text(text: &str, overrides: &[&str]) -> (Result<TrainConfig, ConfigError>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let loaded = load(&path, &overrides, &alp_envs::Registry::builtin()).map(|l| l.config);
        (loaded, path.display().to_string())
    }

    const ENV: &str = "[env]\nname = \"arithmetic\"\n";

    #[test]
    fn enum_values_are_written_as_old_run_directories_hold_them() {
        // The spellings `config.toml` held before these values were typed: a run directory written
        // then must still resume (the resumed config is compared with the saved one).
        let text = format!("[model]\nnew_model = \"small\"\n{ENV}[eval]\nevery = 1\n");
        let config = load_text(&text, &[]).0.unwrap();
        let written = config.to_toml();
        for line in [
            "new_model = \"small\"",
            "arch = \"qwen2\"",
            "inference_dtype = \"bf16\"",
            "train_dtype = \"f32\"",
            "device = \"auto\"",
            "logprob_mode = \"temperature\"",
            "split = \"heldout\"",
            "advantage = \"grpo\"",
            "aggregation = \"token-mean\"",
            "kind = \"bypass\"",
            "schedule = \"constant\"",
        ] {
            assert!(
                written.lines().any(|l| l == line),
                "`{line}` missing from\n{written}"
            );
        }
        assert_eq!(toml::from_str::<TrainConfig>(&written).unwrap(), config);
    }

    #[test]
    fn dtype_aliases_are_read_and_written_canonically() {
        let text = format!(
            "[model]\nnew_model = \"tiny\"\ntrain_dtype = \"float32\"\ninference_dtype = \"bfloat16\"\n{ENV}"
        );
        let config = load_text(&text, &[]).0.unwrap();
        assert_eq!(
            (config.model.train_dtype, config.model.inference_dtype),
            (Dtype::F32, Dtype::Bf16)
        );
        assert_eq!(config.model.train_dtype.kind(), tch::Kind::Float);
        let written = config.to_toml();
        assert!(written.contains("train_dtype = \"f32\""), "{written}");
        assert!(written.contains("inference_dtype = \"bf16\""), "{written}");
    }

    #[test]
    fn unknown_enum_values_name_position_key_allowed_values_and_the_closest() {
        for (line, key, message) in [
            (
                "device = \"gpu\"",
                "model.device",
                "unknown value \"gpu\"; allowed: auto, cpu, cuda",
            ),
            (
                "device = \"CPU\"",
                "model.device",
                "unknown value \"CPU\"; allowed: auto, cpu, cuda; did you mean `cpu`?",
            ),
            (
                "arch = \"qwen\"",
                "model.arch",
                "unknown architecture \"qwen\"; allowed: qwen2, qwen3, llama; did you mean `qwen2`?",
            ),
            (
                "train_dtype = \"f64\"",
                "model.train_dtype",
                "unknown dtype \"f64\"; allowed: f32, bf16, f16",
            ),
        ] {
            let text = format!("[model]\nnew_model = \"tiny\"\n{line}\n{ENV}");
            let (result, file) = load_text(&text, &[]);
            let e = result.unwrap_err();
            let col = line.find('"').unwrap() + 1;
            assert_eq!(e.location, format!("{file}:3:{col}"), "{line}");
            assert_eq!(e.key, key, "{line}");
            assert!(e.message.starts_with(message), "{line}: {}", e.message);
        }
        let text = format!("[model]\nnew_model = \"tiyn\"\n{ENV}");
        let e = load_text(&text, &[]).0.unwrap_err();
        assert!(
            e.message.starts_with(
                "unknown preset \"tiyn\"; allowed: tiny, small, vllm-tiny; did you mean `tiny`?"
            ),
            "{}",
            e.message
        );
        let text = format!("[model]\nnew_model = \"tiny\"\n{ENV}");
        let e = load_text(&text, &["model.device=gpu"]).0.unwrap_err();
        assert_eq!(
            (e.location.as_str(), e.key.as_str()),
            ("--set model.device=gpu", "model.device")
        );
        assert!(
            e.message.contains("allowed: auto, cpu, cuda"),
            "{}",
            e.message
        );
    }

    #[test]
    fn eggroll_settings_resolve_the_population_and_exist_only_for_that_learner() {
        let text = format!("[model]\nnew_model = \"tiny\"\n{ENV}");
        let pg = load_text(&text, &[]).0.unwrap();
        assert_eq!(pg.learner_kind(), LearnerKind::Pg);
        assert!(pg.eggroll_settings().is_none());
        // 0: one member per rollout of a step, 3 prompts x 4 samples.
        let over = [
            "learner.kind=eggroll",
            "rollout.prompts_per_step=3",
            "rollout.group_size=4",
            "learner.eggroll.rank=2",
        ];
        let es = load_text(&text, &over).0.unwrap();
        assert_eq!(es.learner_kind(), LearnerKind::Eggroll);
        let settings = es.eggroll_settings().unwrap();
        assert_eq!((settings.population, settings.rank), (12, 2));
        assert_eq!(
            es.learner.eggroll.population, 0,
            "the config keeps what was written"
        );
        let halves = [&over[..], &["learner.eggroll.samples_per_member=2"]].concat();
        let es = load_text(&text, &halves).0.unwrap();
        assert_eq!(es.eggroll_population(), 6);
    }

    #[test]
    fn split_names_map_to_the_environment_splits() {
        assert_eq!(SplitName::Heldout.split(), alp_envs::Split::Test);
        assert_eq!(SplitName::Train.split(), alp_envs::Split::Train);
        assert_eq!(Device::Cpu.to_tch(), tch::Device::Cpu);
        assert_eq!(Device::Cuda.to_tch(), tch::Device::Cuda(0));
    }
}
