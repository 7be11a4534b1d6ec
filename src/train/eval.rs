//! The trainer's evaluation (`[eval]`): accuracy (avg@k) and unbiased pass@k of the current weights on a
//! fixed set of problems, with its own inference copy (in `model.inference_dtype`, like the rollouts) so
//! the rollout worker is never interrupted. Logged as `eval/accuracy`, `eval/pass@K`, `eval/mean_reward`.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use alp_envs::{Environment, Example};
use alp_policy::{CausalLM, LoadOptions};
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
        m.insert("eval/accuracy".into(), report.accuracy);
        m.insert("eval/mean_reward".into(), report.mean_reward);
        m.insert("eval/error_rate".into(), report.error_rate);
        for (k, v) in &report.pass_at_k {
            m.insert(format!("eval/{k}"), *v);
        }
        m.insert("time/eval_s".into(), t.elapsed().as_secs_f64());
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
