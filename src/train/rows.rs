//! What every learner does first with a rollout batch: check each sample's staleness, log every
//! trajectory as a rollout row, and pick out the trajectories that can be trained on.
use std::collections::BTreeMap;

use alp_learner::metric_names as names;
use alp_learner::Sample;
use alp_rollout::Trajectory;
use anyhow::{ensure, Context, Result};

use super::messages::RolloutBatch;
use crate::config::TrainConfig;
use crate::parquet_log::RolloutRow;

/// Whether a trajectory can be trained on: failed episodes (environment error, non-finite reward)
/// and empty completions are logged but not trained on, nor are samples with a non-finite `mu`
/// (see [`finite_mu`]).
pub fn trainable(t: &Trajectory) -> bool {
    t.error.is_none()
        && t.reward.is_finite()
        && !t.prompt_ids.is_empty()
        && !t.completion_ids.is_empty()
        && t.loss_mask.len() == t.completion_ids.len()
        && t.mu.len() == t.completion_ids.len()
        && finite_mu(t)
}

/// A non-finite sampling log-prob on a trained token means the inference copy's weights have gone
/// non-finite (a diverged update): the step counts as non-finite.
pub fn finite_mu(t: &Trajectory) -> bool {
    t.mu.iter()
        .zip(&t.loss_mask)
        .all(|(m, &k)| k == 0 || m.is_finite())
}

pub fn to_sample(t: &Trajectory) -> Sample {
    Sample {
        prompt_ids: t.prompt_ids.clone(),
        completion_ids: t.completion_ids.clone(),
        loss_mask: t.loss_mask.iter().map(|&m| m != 0).collect(),
        mu: t.mu.clone(),
        reward: t.reward,
        policy_version: t.policy_version,
    }
}

/// What every learner needs to turn a batch into rows: the staleness bound, the environment's
/// name and the group ids' stride.
pub struct RowContext {
    pub max_staleness: u64,
    pub env_name: String,
    pub prompts_per_step: usize,
}

impl RowContext {
    pub fn of(config: &TrainConfig) -> Self {
        RowContext {
            max_staleness: config.rollout.max_staleness,
            env_name: config.env.name.clone(),
            prompts_per_step: config.rollout.prompts_per_step,
        }
    }
}

/// A batch as rows to log, with the trainable trajectories of each group and the counts behind the
/// `acc`, `staleness/*` and `rollout/*` metrics.
pub struct BatchRows<'a> {
    /// One row per trajectory, groups in order; `advantage` 0 until a learner sets it.
    pub rows: Vec<RolloutRow>,
    /// Per group: (row index, trajectory) of its trainable trajectories.
    pub trainable: Vec<Vec<(usize, &'a Trajectory)>>,
    correct: usize,
    failed: usize,
    nonfinite_mu: usize,
    staleness_sum: f64,
    staleness_max: u64,
    /// Completion tokens the policy sampled (tool and environment tokens excluded).
    pub sampled_tokens: usize,
}

impl<'a> BatchRows<'a> {
    /// The rows of `batch`, trained at `step` by a learner holding version `step - 1`. A sample
    /// staler than `context.max_staleness` is a bug (the worker's pacing makes it impossible), never
    /// something to train through.
    pub fn new(batch: &'a RolloutBatch, step: u64, context: &RowContext) -> Result<Self> {
        let RowContext {
            max_staleness,
            ref env_name,
            prompts_per_step,
        } = *context;
        let learner_version = step - 1;
        let mut out = BatchRows {
            rows: Vec::new(),
            trainable: Vec::with_capacity(batch.groups.len()),
            correct: 0,
            failed: 0,
            nonfinite_mu: 0,
            staleness_sum: 0.0,
            staleness_max: 0,
            sampled_tokens: 0,
        };
        for (g, trajectories) in batch.groups.iter().enumerate() {
            let mut keep = Vec::new();
            for t in trajectories {
                let staleness =
                    learner_version
                        .checked_sub(t.policy_version)
                        .with_context(|| {
                            format!(
                            "a sample of version {} is newer than the learner ({learner_version})",
                            t.policy_version
                        )
                        })?;
                ensure!(
                    staleness <= max_staleness,
                    "a sample of version {} is {staleness} versions stale at step {step} \
                     (rollout.max_staleness = {max_staleness})",
                    t.policy_version
                );
                out.correct += t.correct as usize;
                out.sampled_tokens += t.loss_mask.iter().filter(|&&m| m != 0).count();
                if trainable(t) {
                    keep.push((out.rows.len(), t));
                    out.staleness_sum += staleness as f64;
                    out.staleness_max = out.staleness_max.max(staleness);
                } else if finite_mu(t) {
                    out.failed += 1;
                } else {
                    out.nonfinite_mu += 1;
                }
                out.rows.push(RolloutRow {
                    step,
                    policy_version: t.policy_version,
                    worker: 0,
                    env: env_name.to_string(),
                    example_id: t.example_id.clone(),
                    group_id: batch.index * prompts_per_step as u64 + g as u64,
                    prompt_text: t.prompt_text.clone(),
                    completion_text: t.completion_text.clone(),
                    prompt_ids: t.prompt_ids.clone(),
                    completion_ids: t.completion_ids.clone(),
                    loss_mask: t.loss_mask.clone(),
                    mu: t.mu.clone(),
                    lp_old: None,
                    lp: None,
                    reward: t.reward,
                    advantage: 0.0,
                    correct: t.correct,
                    num_turns: t.num_turns,
                    finish_reason: t.finish_reason.clone(),
                    staleness,
                    error: t.error.clone(),
                });
            }
            out.trainable.push(keep);
        }
        Ok(out)
    }

    /// Trajectories that can be trained on.
    pub fn trained(&self) -> usize {
        self.trainable.iter().map(Vec::len).sum()
    }

    /// `acc`, `staleness/{mean,max}`, `rollout/failed_episodes`, `rollout/nonfinite_mu`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let total = self.rows.len();
        BTreeMap::from([
            (
                names::ACC.to_string(),
                self.correct as f64 / total.max(1) as f64,
            ),
            (
                names::STALENESS_MEAN.to_string(),
                self.staleness_sum / self.trained().max(1) as f64,
            ),
            (names::STALENESS_MAX.to_string(), self.staleness_max as f64),
            (
                names::ROLLOUT_FAILED_EPISODES.to_string(),
                self.failed as f64,
            ),
            (
                names::ROLLOUT_NONFINITE_MU.to_string(),
                self.nonfinite_mu as f64,
            ),
        ])
    }
}
