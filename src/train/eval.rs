//! The trainer's evaluation (`[eval]`): accuracy (avg@k) and unbiased pass@k of the current weights on a
//! fixed set of problems, with its own inference copy (in `model.inference_dtype`, like the rollouts) so
//! the rollout worker is never interrupted. Logged as `eval/accuracy`, `eval/pass@K`, `eval/mean_reward`.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use alp_envs::{Environment, Example};
use alp_learner::metric_names as names;
use alp_policy::{CausalLM, LoadOptions};
use alp_rollout::eval::PASS_AT_PREFIX;
use alp_rollout::{evaluate, EpisodeSettings, LocalEngine, SamplingParams};
use alp_tokenizer::Tokenizer;
use anyhow::{Context, Result};
use tch::{Device, Kind};

use crate::config::{EvalSection, TrainConfig};

pub struct Evaluator {
    engine: LocalEngine,
    tokenizer: Tokenizer,
    env: Arc<dyn Environment>,
    examples: Vec<Example>,
    samples: usize,
    params: SamplingParams,
    episode: EpisodeSettings,
}

/// Loads the inference copy and draws the problems once: every evaluation sees the same ones.
pub struct EvaluatorSetup<'a> {
    pub config: &'a TrainConfig,
    pub section: &'a EvalSection,
    pub env: Arc<dyn Environment>,
    pub model_dir: &'a Path,
    pub tokenizer_dir: &'a Path,
    pub kind: Kind,
    pub device: Device,
    pub stop_token_ids: Vec<i64>,
    pub episode: EpisodeSettings,
}

impl Evaluator {
    pub fn new(s: EvaluatorSetup<'_>) -> Result<Self> {
        let e = s.section;
        let split = e.split.split();
        let available = s.env.num_examples(split)?.unwrap_or(usize::MAX);
        let examples = (0..e.problems.min(available) as u64)
            .map(|seed| s.env.example(split, seed))
            .collect::<Result<Vec<_>, _>>()?;
        let model = CausalLM::load(
            s.model_dir,
            &LoadOptions {
                kind: s.kind,
                device: s.device,
            },
        )
        .with_context(|| format!("loading the eval copy of {}", s.model_dir.display()))?;
        let params = SamplingParams {
            greedy: e.greedy,
            temperature: e.temperature,
            max_new_tokens: e.max_new_tokens.unwrap_or(s.config.rollout.max_new_tokens),
            stop_token_ids: s.stop_token_ids,
            // Fixed: every evaluation samples with the same seed, so only the weights change.
            seed: s.config.run.seed ^ 0xE7A1,
            ..SamplingParams::default()
        };
        Ok(Evaluator {
            engine: LocalEngine::new(model, s.config.rollout.batch_size),
            tokenizer: Tokenizer::from_dir(s.tokenizer_dir)?,
            env: s.env,
            examples,
            samples: e.samples,
            params,
            episode: s.episode,
        })
    }

    /// Evaluates `policy` (the learner's weights at `version`) and returns the `eval/*` metrics.
    pub fn run(&mut self, policy: &CausalLM, version: u64) -> Result<BTreeMap<String, f64>> {
        let t = Instant::now();
        self.engine.update_weights(policy, version);
        let report = evaluate(
            &mut self.engine,
            &self.tokenizer,
            self.env.as_ref(),
            &self.examples,
            self.samples,
            &self.params,
            &self.episode,
        )?;
        let mut m = BTreeMap::new();
        m.insert(names::EVAL_ACCURACY.into(), report.accuracy);
        m.insert(names::EVAL_MEAN_REWARD.into(), report.mean_reward);
        m.insert(names::EVAL_ERROR_RATE.into(), report.error_rate);
        for (key, v) in &report.pass_at_k {
            let k: usize = key
                .strip_prefix(PASS_AT_PREFIX)
                .and_then(|k| k.parse().ok())
                .with_context(|| format!("evaluation report key `{key}` is not pass@K"))?;
            m.insert(names::eval_pass_at(k), *v);
        }
        m.insert(names::TIME_EVAL_S.into(), t.elapsed().as_secs_f64());
        tracing::info!(
            version,
            accuracy = report.accuracy,
            problems = report.problems,
            samples = self.samples,
            secs = t.elapsed().as_secs_f64(),
            "eval"
        );
        Ok(m)
    }
}
