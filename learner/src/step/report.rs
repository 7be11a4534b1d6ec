//! Metrics phase: the step's running sums as the metric map of design section 4.
use std::time::Instant;

use crate::alp::AlpPerturbation;
use crate::memory::PeakRss;
use crate::metric_names as names;
use crate::metrics::{batch_metrics, Metrics, MismatchStats};
use crate::optimizer::{AdamW, MODEL_GROUP};
use crate::step::gather::SampleSums;
use crate::step::micro::StepTotals;

/// What the metrics of a finished step read besides its running sums.
pub(crate) struct StepReport<'a> {
    pub totals: &'a StepTotals,
    pub optimizer: &'a AdamW,
    pub alp: Option<&'a AlpPerturbation>,
    /// Rewards and completion lengths of the step's samples (of every process).
    pub samples: &'a SampleSums,
    /// Optimizer steps in this learner step (mini-batches times epochs).
    pub optimizer_steps: usize,
    /// No forward of this step gave the `mismatch/*` statistics.
    pub mismatch_skipped: bool,
    /// A KL penalty against a reference policy is part of the loss.
    pub with_kl: bool,
    pub started: Instant,
    /// The step's peak resident set, started with the step.
    pub peak: PeakRss,
}

impl StepReport<'_> {
    /// Losses and the gradient norm are averaged over the optimizer steps; timings end now.
    pub fn metrics(&self) -> Metrics {
        let t = self.totals;
        let mut m = Metrics::new();
        let steps = self.optimizer_steps as f64;
        t.ratios.write(&mut m);
        if let Some(r) = &t.rejection {
            r.write(&mut m);
        }
        if self.mismatch_skipped {
            MismatchStats::write_skipped(&mut m);
        } else {
            t.mismatch.write(&mut m);
        }
        m.insert(names::LOSS_PG.into(), t.pg_sum / steps);
        m.insert(names::LOSS_TOTAL.into(), t.total_sum / steps);
        if self.with_kl {
            m.insert(names::LOSS_KL.into(), t.kl_sum / steps);
        }
        m.insert(
            names::POLICY_ENTROPY.into(),
            if t.ent_tokens > 0.0 {
                t.ent_sum / t.ent_tokens
            } else {
                f64::NAN
            },
        );
        m.insert(names::GRAD_NORM.into(), t.norm_sum / steps);
        m.insert(names::OPTIM_SKIPPED_STEPS.into(), t.skipped as f64);
        let last = self.optimizer.steps_taken().saturating_sub(1);
        m.insert(
            names::OPTIM_LR.into(),
            self.optimizer.lr_at(MODEL_GROUP, last).unwrap_or(f64::NAN),
        );
        if let Some(a) = self.alp {
            a.metrics(&mut m);
        }
        batch_metrics(&self.samples.rewards, &self.samples.lengths, &mut m);
        let secs = self.started.elapsed().as_secs_f64();
        m.insert(names::TIME_LEARNER_STEP_S.into(), secs);
        m.insert(
            names::THROUGHPUT_LEARNER_TOKENS_PER_S.into(),
            t.processed_tokens as f64 / secs.max(1e-9),
        );
        m.insert(names::MEMORY_PEAK_RSS_GB.into(), self.peak.gb());
        m
    }
}
