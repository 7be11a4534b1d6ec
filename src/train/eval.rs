//! The trainer's evaluation (`[eval]`): accuracy (avg@k) and unbiased pass@k of the current weights on a
//! fixed set of problems. It owns no model: the rollout worker runs it on its own engine (the inference
//! copy in `model.inference_dtype`, or the vLLM servers) right after installing the version to evaluate, so a run holds one
//! inference copy, not two. Logged as `eval/accuracy`, `eval/pass@K`, `eval/mean_reward`.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use alp_envs::{Environment, Example};
use alp_learner::metric_names as names;
use alp_rollout::eval::PASS_AT_PREFIX;
use alp_rollout::{evaluate, EpisodeSettings, GenerationBackend, SamplingParams};
use alp_tokenizer::Tokenizer;
use anyhow::{Context, Result};

use crate::config::{EvalSection, TrainConfig};

/// The problems and sampling of every evaluation of a run; moved into the rollout worker.
pub struct Evaluation {
    env: Arc<dyn Environment>,
    examples: Vec<Example>,
    samples: usize,
    params: SamplingParams,
    episode: EpisodeSettings,
}

impl Evaluation {
    /// Draws the problems once: every evaluation sees the same ones.
    pub fn new(
        config: &TrainConfig,
        section: &EvalSection,
        env: Arc<dyn Environment>,
        stop_token_ids: Vec<i64>,
        episode: EpisodeSettings,
    ) -> Result<Self> {
        let split = section.split.split();
        let available = env.num_examples(split)?.unwrap_or(usize::MAX);
        let examples = (0..section.problems.min(available) as u64)
            .map(|seed| env.example(split, seed))
            .collect::<Result<Vec<_>, _>>()?;
        let params = SamplingParams {
            greedy: section.greedy,
            temperature: section.temperature,
            max_new_tokens: section
                .max_new_tokens
                .unwrap_or(config.rollout.max_new_tokens),
            stop_token_ids,
            // Fixed: every evaluation samples with the same seed, so only the weights change.
            seed: config.run.seed ^ 0xE7A1,
            ..SamplingParams::default()
        };
        Ok(Evaluation {
            env,
            examples,
            samples: section.samples,
            params,
            episode,
        })
    }

    /// Evaluates the weights `backend` holds (labelled `version`; the caller has cleared any
    /// population members), and returns the `eval/*` metrics.
    pub fn run(
        &self,
        backend: &mut dyn GenerationBackend,
        tokenizer: &Tokenizer,
        version: u64,
    ) -> Result<BTreeMap<String, f64>> {
        let t = Instant::now();
        let report = evaluate(
            backend,
            tokenizer,
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
