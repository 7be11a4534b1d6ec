//! Range and consistency checks of a deserialised config: each refusal is `(key, message)`, the
//! dotted key path and what is allowed; [`super::load`] turns it into a positioned `ConfigError`.
use std::sync::Arc;

use alp_envs::{Environment, Registry};
use alp_learner::eggroll::FitnessKind;
use alp_learner::{LearnerKind, LearnerSettings};
use alp_policy::Dtype;

use super::load::{between, closest};
use super::schema::{BackendKind, EvalSection, SftSection, TrainConfig};

/// Most `model.threads`.
pub const MAX_THREADS: usize = 1024;

/// Upper bound on `rollout.max_staleness` (each version of lag queues a weight copy).
pub const MAX_STALENESS: u64 = 16;

/// Upper bounds on sizes, so a typo (`group_size = 1000000000`) is refused before anything is
/// allocated; token counts are also checked against the model's context before the run starts
/// (`train::preflight::check_model`).
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

impl TrainConfig {
    /// Range and consistency checks; the error names the key (a dotted path) and what is allowed.
    /// Returns the environment, built once from `[env]` with `registry`.
    pub fn validate(&self, registry: &Registry) -> Result<Arc<dyn Environment>, (String, String)> {
        self.validate_model()?;
        self.validate_rollout()?;
        self.validate_run()?;
        self.validate_learner()?;
        self.validate_backend()?;
        self.validate_bf16_compute()?;
        let env = self.validate_env(registry)?;
        if let Some(sft) = &self.sft {
            self.validate_sft(sft, env.as_ref())?;
        }
        if let Some(e) = &self.eval {
            validate_eval(e)?;
        }
        Ok(env)
    }

    /// `[model]`: where the model comes from and the thread count.
    fn validate_model(&self) -> Result<(), (String, String)> {
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
        if let Some(lora) = &m.lora {
            lora.validate()?;
            if self.learner.kind == LearnerKind::Eggroll {
                return bad(
                    "model.lora",
                    "is set but learner.kind = \"eggroll\" evolves the full weights (its members' \
                     low-rank perturbations act on every weight matrix, not on an adapter); remove \
                     [model.lora] or use learner.kind = \"pg\""
                        .into(),
                );
            }
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
        Ok(())
    }

    /// `[rollout]` sizes, budgets and sampling (and `run.keep`, checked with the other counts).
    fn validate_rollout(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
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
        Ok(())
    }

    /// `[run]`: steps, output directory, the non-finite step budget.
    fn validate_run(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
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
        Ok(())
    }

    /// `[learner]`: its own checks, then what depends on the step's sample count.
    fn validate_learner(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        let r = &self.rollout;
        if let Err(e) = self.learner.validate() {
            return bad(&format!("learner.{}", e.field), e.reason);
        }
        let samples = r.group_size * r.prompts_per_step;
        if self.learner.kind == LearnerKind::Eggroll {
            self.validate_eggroll(samples)?;
        } else if samples < self.learner.mini_batches {
            return bad(
                "learner.mini_batches",
                format!(
                    "is {} but a step has only {samples} samples (rollout.group_size x rollout.prompts_per_step)",
                    self.learner.mini_batches
                ),
            );
        }
        Ok(())
    }

    /// `model.bf16_compute` against the inference dtype and the backend.
    fn validate_bf16_compute(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.model.bf16_compute != alp_policy::Bf16Compute::Auto {
            if self.model.inference_dtype != alp_policy::Dtype::Bf16 {
                return bad(
                    "model.bf16_compute",
                    format!(
                        "is \"{}\" but model.inference_dtype is \"{}\": it only says how a bf16 \
                         copy computes; remove it or set inference_dtype = \"bf16\"",
                        self.model.bf16_compute, self.model.inference_dtype
                    ),
                );
            }
            if self.rollout.backend == BackendKind::Vllm {
                return bad(
                    "model.bf16_compute",
                    format!(
                        "is \"{}\" but rollout.backend = \"vllm\": the servers compute in the dtype \
                         of their own `--dtype` argument; remove it",
                        self.model.bf16_compute
                    ),
                );
            }
        }
        Ok(())
    }

    /// `rollout.backend` against `[rollout.vllm]` and the learner.
    fn validate_backend(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        match (self.rollout.backend, &self.rollout.vllm) {
            (BackendKind::Local, Some(_)) => bad(
                "rollout.vllm",
                "is set but rollout.backend is \"local\" (the default), which does not read it; \
                 set rollout.backend = \"vllm\" to generate on vLLM servers, or remove \
                 [rollout.vllm]"
                    .into(),
            ),
            (BackendKind::Local, None) => Ok(()),
            (BackendKind::Vllm, None) => bad(
                "rollout.vllm",
                "is missing but rollout.backend = \"vllm\"; add [rollout.vllm] with \
                 `servers = [\"http://127.0.0.1:8000\"]` (running servers) or `launch = true` \
                 (docs/vllm.md)"
                    .into(),
            ),
            (BackendKind::Vllm, Some(_)) => {
                if self.learner.kind == LearnerKind::Eggroll {
                    // Members are served as adapters of the ES rank.
                    if let Err(e) = alp_vllm::lora_server_args(self.learner.eggroll.rank, 1) {
                        return bad("learner.eggroll.rank", e.to_string());
                    }
                }
                if let Some(lora) = &self.model.lora {
                    if let Err(e) = alp_vllm::lora_server_args(lora.rank, 2) {
                        return bad("model.lora.rank", e.to_string());
                    }
                }
                let settings = self
                    .vllm_settings(std::path::Path::new("RUN"))
                    .expect("backend = vllm");
                settings.validate().map_err(|e| match e {
                    alp_vllm::VllmError::Setting { field, problem } => {
                        (format!("rollout.vllm.{field}"), problem)
                    }
                    other => ("rollout.vllm".to_string(), other.to_string()),
                })
            }
        }
    }

    /// What `[learner.eggroll]` needs of the rest of the config (its own ranges are checked by
    /// `EggrollSettings::validate`; rank and parameter patterns against the model at preflight).
    fn validate_eggroll(&self, rollouts: usize) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        let es = &self.learner.eggroll;
        if self.model.train_dtype != Dtype::F32 {
            return bad(
                "model.train_dtype",
                format!(
                    "is \"{}\" but learner.kind = \"eggroll\" evolves f32 weights (steps of lr x g \
                     vanish in half precision); set model.train_dtype = \"f32\"",
                    self.model.train_dtype
                ),
            );
        }
        let k = es.samples_per_member;
        if k >= 1 && !self.rollout.group_size.is_multiple_of(k) {
            return bad(
                "learner.eggroll.samples_per_member",
                format!(
                    "is {k} but must divide rollout.group_size = {} (a member's rollouts all answer \
                     one prompt)",
                    self.rollout.group_size
                ),
            );
        }
        if es.population == 0 {
            if !rollouts.is_multiple_of(k) || !(rollouts / k).is_multiple_of(2) {
                return bad(
                    "learner.eggroll.population",
                    format!(
                        "is 0 (one member per {k} rollout(s) of a step, learner.eggroll.\
                         samples_per_member) but a step has {rollouts} rollouts (rollout.\
                         prompts_per_step x rollout.group_size), which is not an even number of \
                         members: antithetic pairs need an even population; change rollout.\
                         group_size or rollout.prompts_per_step, or set learner.eggroll.population"
                    ),
                );
            }
        } else if es.population * k != rollouts {
            return bad(
                "learner.eggroll.population",
                format!(
                    "is {} with samples_per_member = {k}, so a step needs {} rollouts, but it has \
                     {rollouts} (rollout.prompts_per_step x rollout.group_size); make them equal, \
                     or set population = 0 (one member per rollout)",
                    es.population,
                    es.population * k
                ),
            );
        }
        if es.fitness == FitnessKind::Group && self.rollout.group_size < 2 {
            return bad(
                "learner.eggroll.fitness",
                "is \"group\" (each prompt's group mean subtracted) but rollout.group_size = 1 \
                 leaves every member alone in its group, so every update would be zero; set \
                 rollout.group_size >= 2, or fitness = \"zscore\" or \"rank\""
                    .into(),
            );
        }
        if self.rollout.max_staleness != 0 {
            return bad(
                "rollout.max_staleness",
                format!(
                    "is {} but EGGROLL's members are perturbations of the learner's current weights, \
                     scored to update exactly those weights: set rollout.max_staleness = 0",
                    self.rollout.max_staleness
                ),
            );
        }
        Ok(())
    }

    /// `[learner]` keys that the chosen learner would ignore are refused, not silently dropped:
    /// with `kind = "eggroll"` every policy-gradient key (`[learner.alp]`, `[learner.correction]`,
    /// ...), with `kind = "pg"` the `[learner.eggroll]` table. `table` is the file with the `--set`
    /// overrides applied, so only keys the user gave count (defaults do not).
    pub(super) fn check_learner_tables(&self, table: &toml::Table) -> Result<(), (String, String)> {
        let Some(learner) = table.get("learner").and_then(toml::Value::as_table) else {
            return Ok(());
        };
        match self.learner.kind {
            LearnerKind::Eggroll => {
                if let Some(key) = learner
                    .keys()
                    .find(|k| LearnerSettings::PG_KEYS.contains(&k.as_str()))
                {
                    return Err((
                        format!("learner.{key}"),
                        "is a setting of the policy-gradient learner, but learner.kind = \
                         \"eggroll\" (which reads only learner.seed and [learner.eggroll]); remove \
                         it, or set learner.kind = \"pg\""
                            .into(),
                    ));
                }
            }
            LearnerKind::Pg => {
                if learner.contains_key("eggroll") {
                    return Err((
                        "learner.eggroll".into(),
                        "is set but learner.kind is \"pg\" (the default), which does not read it; \
                         set learner.kind = \"eggroll\" to train with evolution strategies, or \
                         remove [learner.eggroll]"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
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
}

fn validate_eval(e: &EvalSection) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((format!("eval.{key}"), msg));
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
