//! Which curves the report draws: one chart per question, each a list of metric names (the catalog's,
//! `alp_learner::metric_names`) or a family of them, every run overlaid.
use alp_learner::metric_names as names;

use super::plot::{HeatMap, LineChart, Series};
use super::rollouts::Mismatch;
use super::runs::Run;

/// The metrics of a chart: fixed names, or every column with a prefix.
pub enum Pick {
    Names(Vec<String>),
    Prefix(&'static str),
}

pub struct ChartSpec {
    pub id: &'static str,
    pub title: &'static str,
    pub y_label: &'static str,
    pub log_y: bool,
    pub pick: Pick,
    /// What the chart answers, shown under it.
    pub caption: &'static str,
}

fn names(list: &[&str]) -> Pick {
    Pick::Names(list.iter().map(|s| s.to_string()).collect())
}

/// The charts over steps, in the report's order: the mismatch and ratio tails, the training signal,
/// then EGGROLL's own.
pub fn specs() -> Vec<ChartSpec> {
    let mut all = mismatch_specs();
    all.extend(training_specs());
    all.extend(es_specs());
    all
}

/// Ratio tails and the training-inference mismatch.
fn mismatch_specs() -> Vec<ChartSpec> {
    let ratio = |s: &str| names::distribution(names::RATIO, s);
    vec![
        ChartSpec {
            id: "ratio-envelope",
            title: "Token ratio exp(lp - mu): tail envelope",
            y_label: "ratio",
            log_y: true,
            pick: Pick::Names(["q01", "q50", "q99", "q999", "max"].map(ratio).to_vec()),
            caption: "Quantiles q01, q50, q99, q999 and the max of the per-token importance ratio \
                      of each step: heavy tails show as q999/max far above q99.",
        },
        ChartSpec {
            id: "ratio-seq",
            title: "Sequence ratio: max",
            y_label: "ratio_seq/max",
            log_y: true,
            pick: Pick::Names(vec![names::distribution(names::RATIO_SEQ, "max")]),
            caption: "Largest per-sequence ratio exp(sum_t (lp_t - mu_t)) of each step.",
        },
        ChartSpec {
            id: "mismatch-k3",
            title: "Training-inference mismatch: k3",
            y_label: "mismatch/k3",
            log_y: true,
            pick: names(&[names::MISMATCH_K3]),
            caption: "k3 KL estimate between the training policy (before the update) and the \
                      sampling policy; a spike is k3 above 10x the median of the \
                      previous steps.",
        },
        ChartSpec {
            id: "mismatch-k1",
            title: "Training-inference mismatch: k1",
            y_label: "mismatch/k1 (nats)",
            log_y: false,
            pick: names(&[names::MISMATCH_K1]),
            caption: "mean(mu - lp) per trained token.",
        },
        ChartSpec {
            id: "logp-gap",
            title: "Log-prob gap |lp - mu|",
            y_label: "nats",
            log_y: true,
            pick: names(&[
                names::MISMATCH_LOGP_ABS_DIFF_MEAN,
                names::MISMATCH_LOGP_ABS_DIFF_MAX,
            ]),
            caption: "Mean and largest per-token |lp - mu| of each step.",
        },
    ]
}

/// Reward, evaluation, corrections, staleness and time.
fn training_specs() -> Vec<ChartSpec> {
    vec![
        ChartSpec {
            id: "reward",
            title: "Reward and accuracy (training batches)",
            y_label: "per sample",
            log_y: false,
            pick: names(&[names::REWARD_MEAN, names::ACC]),
            caption: "Mean reward and fraction correct of each step's rollouts.",
        },
        ChartSpec {
            id: "eval",
            title: "Held-out evaluation",
            y_label: "eval/*",
            log_y: false,
            pick: Pick::Prefix("eval/"),
            caption: "Every eval/* metric on the evaluated steps (accuracy, mean reward, pass@k, \
                      error rate).",
        },
        ChartSpec {
            id: "clip-mask",
            title: "Clip and mask fractions",
            y_label: "fraction of trained tokens",
            log_y: false,
            pick: names(&[
                names::CLIP_HIGH_FRAC,
                names::CLIP_LOW_FRAC,
                names::CLIP_DUAL_FRAC,
                names::MASK_FRAC,
            ]),
            caption:
                "Tokens whose loss ratio the upper, lower or dual clip caught, and tokens MIS \
                      rejected.",
        },
        ChartSpec {
            id: "ess",
            title: "Effective sample size",
            y_label: "ess (fraction)",
            log_y: false,
            pick: names(&[names::ESS]),
            caption: "(sum w)^2 / (n sum w^2) of the per-token loss weights: 1 is uniform weights.",
        },
        ChartSpec {
            id: "staleness",
            title: "Staleness",
            y_label: "versions",
            log_y: false,
            pick: names(&[names::STALENESS_MEAN, names::STALENESS_MAX]),
            caption: "Learner version minus the version that generated the trained samples.",
        },
        ChartSpec {
            id: "throughput",
            title: "Throughput",
            y_label: "per second",
            log_y: true,
            pick: Pick::Prefix("throughput/"),
            caption: "Rollout tokens, learner tokens and samples per second.",
        },
        ChartSpec {
            id: "time",
            title: "Time per phase",
            y_label: "seconds",
            log_y: false,
            pick: Pick::Prefix("time/"),
            caption: "Wall time of each phase of a step: waiting for the batch, generating, \
                      waiting for weights, the update, the whole step, evaluation.",
        },
    ]
}

/// The evolution-strategies learner's fitness and update.
fn es_specs() -> Vec<ChartSpec> {
    vec![
        ChartSpec {
            id: "es-fitness",
            title: "EGGROLL fitness",
            y_label: "raw fitness",
            log_y: false,
            pick: names(&[
                names::ES_FITNESS_MEAN,
                names::ES_FITNESS_MAX,
                names::ES_FITNESS_MIN,
                names::ES_FITNESS_STD,
            ]),
            caption: "Mean, best, worst and spread of the population members' fitness.",
        },
        ChartSpec {
            id: "es-update",
            title: "EGGROLL update norm",
            y_label: "Frobenius norm",
            log_y: true,
            pick: names(&[names::ES_UPDATE_NORM]),
            caption: "Norm of the update applied over all evolved matrices.",
        },
    ]
}

/// The metric names a chart draws for these runs (a prefix: every matching column of any run).
fn resolve(pick: &Pick, runs: &[&Run]) -> Vec<String> {
    match pick {
        Pick::Names(list) => list.clone(),
        Pick::Prefix(prefix) => {
            let mut found: Vec<String> = runs
                .iter()
                .flat_map(|r| r.metrics.columns.keys())
                .filter(|n| n.starts_with(prefix))
                .cloned()
                .collect();
            found.sort();
            found.dedup();
            found
        }
    }
}

/// The chart of `spec` over `runs`, or `None` when no run has a finite value of its metrics.
pub fn build(spec: &ChartSpec, runs: &[&Run]) -> Option<LineChart> {
    let metrics = resolve(&spec.pick, runs);
    let mut series = Vec::new();
    for (run_index, run) in runs.iter().enumerate() {
        for (metric_index, metric) in metrics.iter().enumerate() {
            let points = run.metrics.points(metric);
            if points.is_empty() {
                continue;
            }
            series.push(Series {
                run: run.label(),
                metric: metric.clone(),
                run_index,
                metric_index,
                points,
            });
        }
    }
    (!series.is_empty()).then(|| LineChart {
        id: spec.id.to_string(),
        title: spec.title.to_string(),
        x_label: "step".into(),
        y_label: spec.y_label.to_string(),
        log_y: spec.log_y,
        series,
        colour_by_run: runs.len() > 1,
    })
}

/// Sigma per layer and step (`alp/sigma_l{i}`) of an ALP run with `target = "layers"`.
pub fn sigma_heat_map(run: &Run) -> Option<HeatMap> {
    let mut layers: Vec<(usize, &Vec<f64>)> = run
        .metrics
        .columns
        .iter()
        .filter_map(|(name, values)| {
            let layer = name
                .strip_prefix(names::ALP_SIGMA_LAYER_PREFIX)?
                .parse()
                .ok()?;
            Some((layer, values))
        })
        .collect();
    if layers.is_empty() || run.metrics.steps.is_empty() {
        return None;
    }
    layers.sort_by_key(|(l, _)| *l);
    // Layers the learner does not perturb (outside layer_start..layer_end) are absent: NaN rows.
    let count = layers.last().map_or(0, |(l, _)| l + 1);
    let mut values = vec![vec![f64::NAN; run.metrics.steps.len()]; count];
    for (layer, column) in layers {
        values[layer] = column.clone();
    }
    if !values.iter().flatten().any(|v| v.is_finite()) {
        return None;
    }
    Some(HeatMap {
        id: format!("sigma-{}", run.name),
        title: format!("ALP sigma per layer: {}", run.label()),
        steps: run.metrics.steps.clone(),
        values,
    })
}

/// Mean `|lp_old - mu|` by completion position, from the rollouts, every run overlaid.
pub fn position_chart(runs: &[(&Run, &Mismatch)]) -> Option<LineChart> {
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .filter(|(_, (_, m))| !m.by_position.is_empty())
        .map(|(run_index, (run, m))| Series {
            run: run.label(),
            metric: "mean |lp_old - mu|".into(),
            run_index,
            metric_index: 0,
            points: m
                .by_position
                .iter()
                .map(|p| (p.position as f64, p.mean_abs_gap))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    (!series.is_empty()).then(|| LineChart {
        id: "mismatch-position".into(),
        title: "Mismatch by token position (rollouts)".into(),
        x_label: "position in the completion".into(),
        y_label: "mean |lp_old - mu| (nats)".into(),
        log_y: true,
        series,
        colour_by_run: true,
    })
}
