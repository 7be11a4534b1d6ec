//! The policy-gradient learner in the train loop: group advantages, the learner's clipped update
//! with its mismatch correction, and the `lp_old` / `lp` columns of the rollout logs.
use std::path::Path;

use alp_learner::metric_names as names;
use alp_learner::{Group, PgLearner, Sample};
use alp_policy::CausalLM;
use alp_rollout::{WeightPayload, WeightUpdate};
use anyhow::{Context, Result};
use tch::{Device, Kind};

use super::{RunLearner, StepOutput};
use crate::config::{BackendKind, TrainConfig};
use crate::train::messages::RolloutBatch;
use crate::train::ranks::{training_groups, Ranks};
use crate::train::rows::{to_sample, BatchRows, RowContext};

pub struct PolicyGradient {
    learner: PgLearner<CausalLM>,
    row_context: RowContext,
    /// Log each trained token's log-prob before and after the update (`run.log_logprobs`).
    log_logprobs: bool,
    /// A LoRA adapter goes to the rollout backend as an adapter (vLLM serves it unmerged), not
    /// merged into the projections (the local engine's copy).
    send_adapter: bool,
    micro_batch_size: usize,
    /// This process's rank and the number of ranks: it trains on its part of each mini-batch.
    rank: usize,
    world_size: usize,
}

impl PolicyGradient {
    /// The train loop's policy-gradient learner; on several `ranks`, `learner` must sum its
    /// gradients over them ([`PgLearner::with_gradient_sync`]).
    pub fn new(config: &TrainConfig, learner: PgLearner<CausalLM>, ranks: &Ranks) -> Self {
        PolicyGradient {
            learner,
            row_context: RowContext::of(config),
            log_logprobs: config.run.log_logprobs,
            send_adapter: config.rollout.backend == BackendKind::Vllm,
            micro_batch_size: config.learner.micro_batch_size,
            rank: ranks.rank(),
            world_size: ranks.world_size(),
        }
    }

    /// Whether every rank's part of the mini-batches ([`training_groups`]) has at least one sample
    /// per mini-batch; otherwise (failed episodes are dropped) every rank skips the update alike:
    /// each holds the whole batch, so all decide the same. In one process: whether the batch fills
    /// the mini-batches ([`alp_learner::StepPlan::fills_mini_batches`]).
    fn every_rank_fills(&self, groups: &[Group]) -> bool {
        let minis = self.learner.settings().mini_batches;
        (0..self.world_size).all(|rank| {
            training_groups(groups.len(), minis, rank, self.world_size)
                .into_iter()
                .map(|g| groups[g].samples.len())
                .sum::<usize>()
                >= minis.max(1)
        })
    }

    /// Per-token log-probs of every sample's completion under the current weights, unperturbed and
    /// without grad, `micro_batch_size` samples per forward.
    fn plain_log_probs(&self, groups: &[Group]) -> Result<Vec<Vec<f32>>> {
        let samples: Vec<&Sample> = groups.iter().flat_map(|g| &g.samples).collect();
        let mut out = Vec::with_capacity(samples.len());
        for part in samples.chunks(self.micro_batch_size.max(1)) {
            let lp = self
                .learner
                .log_probs(part, &alp_policy::NoHooks)?
                .to_kind(Kind::Float)
                .to_device(Device::Cpu);
            for (i, s) in part.iter().enumerate() {
                let row = lp.get(i as i64).narrow(0, 0, s.completion_ids.len() as i64);
                out.push(Vec::<f32>::try_from(&row.contiguous())?);
            }
        }
        Ok(out)
    }
}

impl RunLearner for PolicyGradient {
    fn policy(&self) -> &CausalLM {
        self.learner.policy()
    }

    /// With a LoRA adapter: for vLLM the adapter itself (copies of A and B, and its settings); for
    /// the local engine the adapted projections merged (`W + scale B A`, f32; the inference copy
    /// rounds them to its dtype as a merged deployment would), the other weights unchanged and not
    /// sent. Without: every weight.
    fn weight_update(&self, version: u64) -> Result<WeightUpdate> {
        let Some(adapter) = self.learner.adapter() else {
            return Ok(WeightUpdate::copy_of(self.learner.policy(), version));
        };
        if self.send_adapter {
            let tensors = tch::no_grad(|| {
                adapter
                    .named_tensors()
                    .into_iter()
                    .map(|(n, t)| (n, t.detach().copy()))
                    .collect()
            });
            return Ok(WeightUpdate {
                version,
                payload: WeightPayload::Adapter {
                    config: adapter.config().clone(),
                    tensors,
                },
            });
        }
        let merged = adapter
            .merged_weights(self.learner.policy())
            .context("merging the LoRA adapter for the rollout copy")?;
        Ok(WeightUpdate {
            version,
            payload: WeightPayload::Subset(merged),
        })
    }

    fn initial_update(&self, version: u64) -> Result<Option<WeightUpdate>> {
        match self.learner.adapter() {
            Some(_) => self.weight_update(version).map(Some),
            None => Ok(None),
        }
    }

    fn train(&mut self, batch: &RolloutBatch, step: u64) -> Result<StepOutput> {
        let mut rows = BatchRows::new(batch, step, &self.row_context)?;
        let mut groups = Vec::new();
        // Row index of each trained sample, in the order the groups hold them.
        let mut trained_rows = Vec::new();
        for keep in &rows.trainable {
            if !keep.is_empty() {
                trained_rows.extend(keep.iter().map(|&(row, _)| row));
                groups.push(Group {
                    samples: keep.iter().map(|&(_, t)| to_sample(t)).collect(),
                });
            }
        }
        // The learner's plan holds the group advantages the rows log and the step trains on.
        let plan = self.learner.plan(&groups)?;
        for (&row, &advantage) in trained_rows.iter().zip(plan.advantages()) {
            rows.rows[row].advantage = advantage;
        }
        // Rank 0 alone writes the rollout rows.
        let log_lp = self.log_logprobs && !groups.is_empty() && self.rank == 0;
        if log_lp {
            for (row, lp) in trained_rows.iter().zip(self.plain_log_probs(&groups)?) {
                rows.rows[*row].lp_old = Some(lp);
            }
        }
        // The learner splits the batch into `mini_batches` parts; with fewer trainable samples than
        // that (failed episodes are dropped) the step is skipped rather than failing the run.
        let mut metrics = if !self.every_rank_fills(&groups) {
            tracing::warn!(
                step,
                trainable_samples = plan.samples().len(),
                mini_batches = self.learner.settings().mini_batches,
                ranks = self.world_size,
                "too few trainable samples in this step (failed episodes are dropped): no update"
            );
            Default::default()
        } else if self.world_size == 1 {
            self.learner
                .train_planned(&plan)
                .with_context(|| format!("learner step {step}"))?
        } else {
            let mine: Vec<Group> = training_groups(
                groups.len(),
                self.learner.settings().mini_batches,
                self.rank,
                self.world_size,
            )
            .into_iter()
            .map(|g| groups[g].clone())
            .collect();
            let (rank, world) = (self.rank, self.world_size);
            self.learner
                .train_step(&mine)
                .with_context(|| format!("learner step {step} on rank {rank} of {world}"))?
        };
        if log_lp {
            for (row, lp) in trained_rows.iter().zip(self.plain_log_probs(&groups)?) {
                rows.rows[*row].lp = Some(lp);
            }
        }
        metrics.extend(rows.metrics());
        let bad_update = [names::LOSS_TOTAL, names::GRAD_NORM]
            .iter()
            .any(|k| metrics.get(*k).is_some_and(|v| !v.is_finite()))
            || metrics
                .get(names::OPTIM_SKIPPED_STEPS)
                .is_some_and(|&v| v > 0.0);
        let bad_samples = metrics
            .get(names::ROLLOUT_NONFINITE_MU)
            .is_some_and(|&v| v > 0.0);
        Ok(StepOutput {
            metrics,
            sampled_tokens: rows.sampled_tokens,
            rows: rows.rows,
            bad_update,
            bad_samples,
        })
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        Ok(self.learner.save_state(dir)?)
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        Ok(self.learner.load_state(dir)?)
    }

    fn watched_metrics(&self) -> &'static [(&'static str, &'static str)] {
        &[("loss", names::LOSS_TOTAL), ("k3", names::MISMATCH_K3)]
    }
}
