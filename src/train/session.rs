//! A run in progress: what one RL step does once [`super::setup`] has started everything. Each step takes
//! the next rollout batch, trains on it, publishes the new version to the rollout worker, writes the
//! batch's rollout rows, evaluates when due, appends the metrics row and checkpoints when due.
use std::collections::BTreeMap;
use std::time::Instant;

use alp_learner::metric_names as names;
use alp_tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};

use super::learners::{RunLearner, StepOutput};
use super::messages::RolloutBatch;
use super::preflight::RunLock;
use super::ranks::Ranks;
use super::rollout_worker::RolloutWorker;
use super::run_state::{self, RuntimeState};
use super::{logs, pause, TrainSummary};
use crate::config::TrainConfig;
use crate::parquet_log::{self, MetricsRow};
use crate::run_dir::RunDir;
use crate::schedule::due;

/// The state of a run between steps.
pub(super) struct Session<'a> {
    pub config: &'a TrainConfig,
    pub run: RunDir,
    /// The resolved config, stored in every parquet file's metadata.
    pub config_toml: String,
    pub tokenizer: Tokenizer,
    pub learner: Box<dyn RunLearner>,
    pub worker: RolloutWorker,
    /// The first step this process trains (1 for a fresh run).
    pub first_step: u64,
    pub state: RuntimeState,
    /// Every metrics row of the run so far (`metrics.parquet` is rewritten from them).
    pub metrics_rows: Vec<MetricsRow>,
    pub evaluates: bool,
    /// The ranks of a run on several processes: rank 0 alone writes the run directory.
    pub ranks: Ranks,
    /// Held for the whole run (by rank 0): another process cannot train into the same directory.
    pub _lock: Option<RunLock>,
}

impl Session<'_> {
    /// Steps until `run.steps`, then stops the rollout worker and sums the run up.
    pub fn run_to_end(mut self) -> Result<TrainSummary> {
        let config = self.config;
        tracing::info!(
            run = %self.run.root.display(),
            from_step = self.state.step,
            steps = config.run.steps,
            learner = %config.learner_kind(),
            correction = %config.learner.correction.kind,
            max_staleness = config.rollout.max_staleness,
            "training"
        );
        // RL steps of this run (a resumed run counts from its first step); the time left is the
        // steps still to do at the rate so far.
        // (On rank 0 only: the other ranks' steps are the same steps.)
        let progress = self.ranks.is_leader().then(|| {
            crate::progress::Progress::new(
                "train",
                Some(config.run.steps.saturating_sub(self.state.step)),
                "steps",
            )
        });
        while self.state.step < config.run.steps {
            self.step()?;
            if let Some(p) = &progress {
                p.inc(1, 0);
            }
        }
        if let Some(p) = progress {
            p.finish();
        }
        drop(self.worker);
        let evals: Vec<(u64, f64)> = self
            .metrics_rows
            .iter()
            .filter_map(|r| r.values.get(names::EVAL_ACCURACY).map(|&a| (r.step, a)))
            .collect();
        Ok(TrainSummary {
            run_dir: self.run.root.clone(),
            first_step: self.first_step,
            last_step: self.state.step,
            first_eval: evals.first().copied(),
            last_eval: evals.last().copied(),
        })
    }

    /// One RL step: rollout, learn, publish, log, checkpoint.
    fn step(&mut self) -> Result<()> {
        let config = self.config;
        let step = self.state.step + 1;
        let started = Instant::now();
        let mut batch = self.worker.next_batch()?;
        // Each rank generated its share of the batch; every rank trains from the whole of it.
        batch.groups = self.ranks.gather_groups(
            batch.index,
            batch.policy_version,
            std::mem::take(&mut batch.groups),
        )?;
        let wait_s = started.elapsed().as_secs_f64();
        tracing::debug!(
            step,
            version = batch.policy_version,
            wait_s,
            "rollout batch received"
        );
        ensure!(
            batch.index == step - 1,
            "rollout batch {} arrived for step {step}",
            batch.index
        );
        let out = self.learner.train(&batch, step)?;
        // The update is applied in memory, nothing of it is on disk yet.
        pause::point("update", step);
        self.count_nonfinite(&out, step)?;
        self.state.step = step;
        self.state.policy_version = step;
        let evaluate = self.evaluates
            && due(
                step,
                config.eval.as_ref().map_or(0, |e| e.every),
                config.run.steps,
            );
        self.worker
            .publish(self.learner.weight_update(step)?, evaluate);
        let values = self.step_metrics(&batch, out, wait_s, started, evaluate)?;
        pause::point("metrics", step);
        if self.ranks.is_leader() {
            tracing::info!(
                "{}",
                logs::summary_line(
                    step,
                    config.run.steps,
                    &values,
                    self.learner.watched_metrics()
                )
            );
        }
        self.metrics_rows.push(MetricsRow {
            step,
            policy_version: step,
            values,
        });
        self.write_metrics()?;
        if due(step, config.run.checkpoint_every, config.run.steps) {
            self.checkpoint()?;
            // No rank goes on before the checkpoint a resume would start from is complete.
            self.ranks
                .barrier(&format!("after the checkpoint of step {step}"))?;
        }
        Ok(())
    }

    /// Counts a step whose update or samples were not finite, saying exactly what happened, and stops
    /// the run after `run.max_nonfinite_steps` of them in a row.
    fn count_nonfinite(&mut self, out: &StepOutput, step: u64) -> Result<()> {
        let state = &mut self.state;
        if !(out.bad_update || out.bad_samples) {
            state.nonfinite_run = 0;
            return Ok(());
        }
        state.nonfinite_run += 1;
        state.nonfinite_total += 1;
        // A non-finite loss or gradient skips the optimizer update; samples with non-finite sampling
        // log-probs are dropped and the rest is trained on.
        let what = match (out.bad_update, out.bad_samples) {
            (true, true) => "non-finite loss or gradient (update skipped) and non-finite sampling log-probs (those samples dropped)",
            (true, false) => "non-finite loss or gradient: the optimizer update was skipped",
            _ => "non-finite sampling log-probs: those samples were dropped, the rest trained on",
        };
        tracing::warn!(step, consecutive = state.nonfinite_run, "{what}");
        let most = self.config.run.max_nonfinite_steps;
        if state.nonfinite_run >= most {
            bail!(
                "{} consecutive steps (up to step {step}) had a non-finite loss, gradient or \
                 sampling log-prob \
                 (run.max_nonfinite_steps = {most}); lower learner.optimizer.lr or check the data",
                state.nonfinite_run,
            );
        }
        Ok(())
    }

    /// The step's metrics row: the learner's, the run's timings and counts, the backend's, and the
    /// evaluation when one was due; writes the step's rollout rows on the way (their time counts).
    fn step_metrics(
        &mut self,
        batch: &RolloutBatch,
        out: StepOutput,
        wait_s: f64,
        started: Instant,
        evaluate: bool,
    ) -> Result<BTreeMap<String, f64>> {
        let mut values = out.metrics;
        values.insert(
            names::TRAIN_NONFINITE_STEPS.into(),
            self.state.nonfinite_total as f64,
        );
        values.insert(names::TIME_ROLLOUT_WAIT_S.into(), wait_s);
        values.insert(names::TIME_GENERATE_S.into(), batch.generate_s);
        values.insert(names::TIME_WEIGHTS_WAIT_S.into(), batch.wait_weights_s);
        values.extend(logs::backend_metrics(batch));
        values.insert(
            names::THROUGHPUT_ROLLOUT_TOKENS_PER_S.into(),
            out.sampled_tokens as f64 / batch.generate_s.max(1e-9),
        );
        if self.ranks.is_leader() {
            parquet_log::write_parquet(
                &self.run.rollouts(self.state.step),
                &parquet_log::rollout_batch(&out.rows)?,
                &self.config_toml,
            )?;
        }
        let step_s = started.elapsed().as_secs_f64();
        values.insert(names::TIME_STEP_S.into(), step_s);
        values.insert(
            names::THROUGHPUT_SAMPLES_PER_S.into(),
            out.rows.len() as f64 / step_s.max(1e-9),
        );
        if evaluate {
            values.extend(self.worker.evaluation()?);
        }
        Ok(values)
    }

    /// Rewrites `metrics.parquet` from every row so far.
    pub fn write_metrics(&self) -> Result<()> {
        if !self.ranks.is_leader() {
            return Ok(());
        }
        parquet_log::write_parquet(
            &self.run.metrics(),
            &parquet_log::metrics_batch(&self.metrics_rows)?,
            &self.config_toml,
        )?;
        Ok(())
    }

    /// A checkpoint of the current step: the policy in HF layout, the learner's state, the run state.
    fn checkpoint(&self) -> Result<()> {
        if !self.ranks.is_leader() {
            // The replicas are equal: rank 0's state is every rank's.
            return Ok(());
        }
        let t = Instant::now();
        let state = &self.state;
        run_state::writer(&self.run, self.config.run.keep).save(state, |staging| {
            run_state::write_model(staging, self.learner.policy(), &self.tokenizer)?;
            pause::point("checkpoint", state.step);
            self.learner
                .save_state(&staging.join("learner"))
                .context("saving the learner state")
        })?;
        tracing::debug!(secs = t.elapsed().as_secs_f64(), "checkpoint time");
        Ok(())
    }
}
