//! The summary quantities of a run, from `metrics.parquet` alone (docs/analysis.md defines each; the
//! report's tests recompute them with pandas). A quantity whose column the run lacks, or whose
//! column holds no finite value, is `None` (JSON `null`, `-` in the tables).
use alp_learner::metric_names as names;
use serde::Serialize;

use super::runs::Run;

/// A KL spike: `mismatch/k3` above this many times the median of the previous steps' values.
pub const SPIKE_FACTOR: f64 = 10.0;
/// Previous finite `mismatch/k3` values needed before a step can count as a spike.
pub const SPIKE_MIN_HISTORY: usize = 3;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub run: String,
    /// `learner.kind`, `learner.correction.kind`, `rollout.backend` of the run's config.
    pub learner: Option<String>,
    pub correction: Option<String>,
    pub backend: Option<String>,
    /// The last step of `metrics.parquet` (learner steps done; a row of step 0 is the evaluation
    /// before training); `planned_steps` is the config's `run.steps`.
    pub steps: Option<i64>,
    pub planned_steps: Option<i64>,
    /// `eval/accuracy` at the last evaluated step, and its largest value.
    pub final_heldout_accuracy: Option<f64>,
    pub best_heldout_accuracy: Option<f64>,
    /// Largest `ratio/q99`, `ratio/q999`, `ratio_seq/max` over the steps.
    pub max_ratio_q99: Option<f64>,
    pub max_ratio_q999: Option<f64>,
    pub max_ratio_seq_max: Option<f64>,
    /// Steps that are KL spikes (see [`kl_spikes`]).
    pub kl_spikes: Option<usize>,
    /// Largest `staleness/max`.
    pub max_staleness: Option<f64>,
    /// Sum of `time/step_s` and `time/eval_s` over the steps (seconds).
    pub wall_time_s: Option<f64>,
}

fn finite(values: &[f64]) -> impl Iterator<Item = f64> + '_ {
    values.iter().copied().filter(|v| v.is_finite())
}

fn max_of(values: Option<&[f64]>) -> Option<f64> {
    finite(values?).reduce(f64::max)
}

/// The median of a non-empty slice (the mean of the two middle values for an even length, as
/// numpy and pandas take it).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// KL spikes of a `mismatch/k3` column: over its finite values in step order (steps that skipped
/// the mismatch forward log NaN and are left out), value `i` is a spike when at least
/// [`SPIKE_MIN_HISTORY`] values precede it and it is above [`SPIKE_FACTOR`] times their median.
pub fn kl_spikes(k3: &[f64]) -> usize {
    let values: Vec<f64> = finite(k3).collect();
    (SPIKE_MIN_HISTORY..values.len())
        .filter(|&i| values[i] > SPIKE_FACTOR * median(&values[..i]))
        .count()
}

pub fn summarise(run: &Run) -> Summary {
    let m = &run.metrics;
    let eval: Option<Vec<f64>> = m.column(names::EVAL_ACCURACY).map(|c| finite(c).collect());
    let time_parts: Vec<&[f64]> = [names::TIME_STEP_S, names::TIME_EVAL_S]
        .iter()
        .filter_map(|n| m.column(n))
        .collect();
    Summary {
        run: run.name.clone(),
        learner: run.learner.clone(),
        correction: run.correction.clone(),
        backend: run.backend.clone(),
        steps: run.last_step(),
        planned_steps: run.planned_steps,
        final_heldout_accuracy: eval.as_ref().and_then(|e| e.last().copied()),
        best_heldout_accuracy: eval.and_then(|e| e.into_iter().reduce(f64::max)),
        max_ratio_q99: max_of(m.column(&names::distribution(names::RATIO, "q99"))),
        max_ratio_q999: max_of(m.column(&names::distribution(names::RATIO, "q999"))),
        max_ratio_seq_max: max_of(m.column(&names::distribution(names::RATIO_SEQ, "max"))),
        kl_spikes: m.column(names::MISMATCH_K3).map(kl_spikes),
        max_staleness: max_of(m.column(names::STALENESS_MAX)),
        wall_time_s: (!time_parts.is_empty())
            .then(|| time_parts.iter().flat_map(|c| finite(c)).sum()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spikes_follow_the_stated_rule() {
        // Three values of history first; NaN steps are skipped, not counted as history.
        let nan = f64::NAN;
        assert_eq!(kl_spikes(&[1.0, 1.0, 100.0]), 0);
        // [1, 1, 1] then 10 (not above 10x1) and 10.1 (above 10x median [1, 1, 1, 10] = 10).
        assert_eq!(kl_spikes(&[1.0, nan, 1.0, 1.0, 10.0, 10.1]), 1);
        // Median of [1, 1, 1] is 1: 10.5 > 10 is a spike; then the median of [1, 1, 1, 10.5] is 1,
        // so 11 is one too; 5 is not.
        assert_eq!(kl_spikes(&[1.0, 1.0, 1.0, 10.5, 11.0, 5.0]), 2);
        // Exactly 10x is not above it.
        assert_eq!(kl_spikes(&[2.0, 2.0, 2.0, 20.0]), 0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
