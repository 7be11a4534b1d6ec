//! Per-step metric math, on plain f64 values pulled off the device once per micro-batch.
//!
//! The names are the interface of design section 4, spelt by [`crate::metric_names`]. Definitions
//! where the design leaves a choice:
//! - quantiles interpolate linearly between order statistics (numpy's default), `std` is the population
//!   std (ddof 0), and a statistic of an empty set is NaN;
//! - `ratio/*` is `exp(lp - mu)` (the training forward, perturbed under ALP, against the inference
//!   policy) whatever the correction, over every trained token of every loss evaluation of the step
//!   (all epochs and mini-batches); `ratio_seq/*` is `exp(S)` over every sequence of those
//!   evaluations; `ratio_loss/*` is the ratio the loss actually used (against `lp_old` for TIS, MIS
//!   and none, equal to `ratio/*` for token-level bypass and ALP, the sequence ratio at sequence level);
//! - `clip/*` and `mask/frac` are fractions of those trained tokens (`mask/frac` = MIS-rejected),
//!   the clips being those of the loss ratio;
//! - `ess = (sum w)^2 / (n sum w^2)` over the per-token importance weights the loss applies: the loss
//!   ratio times the TIS weight or MIS mask;
//! - `mismatch/*` compare unperturbed pre-update training log-probs `lp` with `mu` per trained token,
//!   `d = lp - mu` clamped to [-20, 20]: `k1 = mean(mu - lp)`, `k2 = mean(d^2 / 2)`,
//!   `k3 = mean(exp(d) - d - 1)`, `logp_abs_diff_{mean,max}` of `|d|`, and `ppl_ratio` = mean over
//!   sequences of `exp(mean_t mu - mean_t lp)` = training ppl / inference ppl (verl's definition).
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::loss::LOG_RATIO_CLAMP;
use crate::metric_names as names;
pub use crate::metric_names::QUANTILES;

/// Metric name to value; the runtime writes one row per step.
pub type Metrics = BTreeMap<String, f64>;

/// Tensor (any shape, any float kind, any device) to a flat `Vec<f64>`.
pub fn to_vec(t: &Tensor) -> Vec<f64> {
    let flat = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .reshape([-1]);
    Vec::<f64>::try_from(flat).expect("a flat double tensor converts to Vec<f64>")
}

/// Linear-interpolation quantile of sorted values (numpy `method="linear"`).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// `{family}/{min,max,mean,std,q01..q999}` of `values` ([`names::distribution`]).
pub fn describe(family: &str, values: &[f64], out: &mut Metrics) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mean = if sorted.is_empty() {
        f64::NAN
    } else {
        sorted.iter().sum::<f64>() / n
    };
    let var = if sorted.is_empty() {
        f64::NAN
    } else {
        sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n
    };
    let [min, max, mean_, std] = names::MOMENTS;
    out.insert(
        names::distribution(family, min),
        sorted.first().copied().unwrap_or(f64::NAN),
    );
    out.insert(
        names::distribution(family, max),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    out.insert(names::distribution(family, mean_), mean);
    out.insert(names::distribution(family, std), var.sqrt());
    for (stat, q) in QUANTILES {
        out.insert(
            names::distribution(family, stat),
            quantile_sorted(&sorted, q),
        );
    }
}

/// Effective sample size fraction `(sum w)^2 / (n sum w^2)` (1 for equal weights, NaN when empty).
pub fn ess(weights: &[f64]) -> f64 {
    let n = weights.len() as f64;
    let s: f64 = weights.iter().sum();
    let s2: f64 = weights.iter().map(|w| w * w).sum();
    if weights.is_empty() || s2 == 0.0 {
        return f64::NAN;
    }
    s * s / (n * s2)
}

fn frac(count: usize, total: usize) -> f64 {
    if total == 0 {
        f64::NAN
    } else {
        count as f64 / total as f64
    }
}

/// One loss evaluation's per-token values for [`RatioStats::add`]. Token slices are flat `[b * t]`,
/// sequence slices `[b]`.
#[derive(Debug, Clone, Copy)]
pub struct RatioEval<'a> {
    /// `lp - mu` per token: the training forward (perturbed under ALP) against the inference policy.
    pub log_ratio_vs_mu: &'a [f64],
    /// `S = sum_t m_t (lp_t - mu_t)` per sequence (divided by the length when geometric).
    pub seq_log_ratio_vs_mu: &'a [f64],
    /// The log-ratio the loss used: against `mu` (bypass, ALP) or `lp_old` (TIS, MIS, none), and the
    /// sequence value on every token at sequence level.
    pub loss_log_ratio: &'a [f64],
    pub mask: &'a [f64],
    /// TIS weight or MIS mask per token.
    pub correction: Option<&'a [f64]>,
    /// MIS keep mask per token.
    pub keep: Option<&'a [f64]>,
    pub clip_high: &'a [f64],
    pub clip_low: &'a [f64],
    pub clip_dual: &'a [f64],
}

/// Accumulates the ratio, clip, mask and ESS statistics of one step's loss evaluations.
#[derive(Debug, Default, Clone)]
pub struct RatioStats {
    /// `exp(lp - mu)` per trained token, whatever the correction (`ratio/*`).
    pub token_ratios: Vec<f64>,
    /// `exp(S)` per trained sequence (`ratio_seq/*`).
    pub seq_ratios: Vec<f64>,
    /// The ratio in the loss per trained token (`ratio_loss/*`).
    pub loss_ratios: Vec<f64>,
    pub weights: Vec<f64>,
    pub clip_high: usize,
    pub clip_low: usize,
    pub clip_dual: usize,
    pub masked: usize,
}

impl RatioStats {
    /// Adds one evaluation.
    pub fn add(&mut self, e: &RatioEval<'_>) {
        let cols = e.mask.len() / e.seq_log_ratio_vs_mu.len().max(1);
        for (i, &m) in e.mask.iter().enumerate() {
            if m <= 0.0 {
                continue;
            }
            self.token_ratios.push(e.log_ratio_vs_mu[i].exp());
            let r = e.loss_log_ratio[i].exp();
            self.loss_ratios.push(r);
            self.weights.push(r * e.correction.map_or(1.0, |c| c[i]));
            self.clip_high += usize::from(e.clip_high[i] > 0.0);
            self.clip_low += usize::from(e.clip_low[i] > 0.0);
            self.clip_dual += usize::from(e.clip_dual[i] > 0.0);
            self.masked += usize::from(e.keep.is_some_and(|k| k[i] <= 0.0));
        }
        for (row, &s) in e.seq_log_ratio_vs_mu.iter().enumerate() {
            let trained = e.mask[row * cols..(row + 1) * cols]
                .iter()
                .any(|&m| m > 0.0);
            if trained {
                self.seq_ratios.push(s.exp());
            }
        }
    }

    /// Adds another process's statistics of the same step (the learner on several processes).
    pub fn merge(&mut self, other: RatioStats) {
        self.token_ratios.extend(other.token_ratios);
        self.seq_ratios.extend(other.seq_ratios);
        self.loss_ratios.extend(other.loss_ratios);
        self.weights.extend(other.weights);
        self.clip_high += other.clip_high;
        self.clip_low += other.clip_low;
        self.clip_dual += other.clip_dual;
        self.masked += other.masked;
    }

    /// `ratio/*`, `ratio_seq/*`, `ratio_loss/*`, `clip/*`, `mask/frac`, `ess`.
    pub fn write(&self, out: &mut Metrics) {
        describe(names::RATIO, &self.token_ratios, out);
        describe(names::RATIO_SEQ, &self.seq_ratios, out);
        describe(names::RATIO_LOSS, &self.loss_ratios, out);
        let n = self.token_ratios.len();
        for (name, t) in [
            (names::RATIO_FRAC_ABOVE_2, 2.0),
            (names::RATIO_FRAC_ABOVE_5, 5.0),
            (names::RATIO_FRAC_ABOVE_10, 10.0),
        ] {
            out.insert(
                name.into(),
                frac(self.token_ratios.iter().filter(|&&r| r > t).count(), n),
            );
        }
        for (name, t) in [
            (names::RATIO_FRAC_BELOW_0_5, 0.5),
            (names::RATIO_FRAC_BELOW_0_2, 0.2),
            (names::RATIO_FRAC_BELOW_0_1, 0.1),
        ] {
            out.insert(
                name.into(),
                frac(self.token_ratios.iter().filter(|&&r| r < t).count(), n),
            );
        }
        out.insert(names::CLIP_HIGH_FRAC.into(), frac(self.clip_high, n));
        out.insert(names::CLIP_LOW_FRAC.into(), frac(self.clip_low, n));
        out.insert(names::CLIP_DUAL_FRAC.into(), frac(self.clip_dual, n));
        out.insert(names::MASK_FRAC.into(), frac(self.masked, n));
        out.insert(names::ESS.into(), ess(&self.weights));
    }
}

/// Accumulates `mismatch/*` between unperturbed training log-probs and inference log-probs.
#[derive(Debug, Default, Clone)]
pub struct MismatchStats {
    k1: f64,
    k2: f64,
    k3: f64,
    abs_sum: f64,
    abs_max: f64,
    tokens: usize,
    ppl_ratio_sum: f64,
    seqs: usize,
}

impl MismatchStats {
    /// Adds `rows` sequences given as flat row-major `[rows * t]` slices.
    pub fn add(&mut self, lp: &[f64], mu: &[f64], mask: &[f64], rows: usize) {
        let t = mask.len() / rows.max(1);
        for r in 0..rows {
            let (mut n, mut lp_sum, mut mu_sum) = (0usize, 0.0, 0.0);
            for i in r * t..(r + 1) * t {
                if mask[i] <= 0.0 {
                    continue;
                }
                let d = (lp[i] - mu[i]).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
                self.k1 += -d;
                self.k2 += 0.5 * d * d;
                self.k3 += d.exp() - d - 1.0;
                self.abs_sum += d.abs();
                self.abs_max = self.abs_max.max(d.abs());
                n += 1;
                lp_sum += lp[i];
                mu_sum += mu[i];
            }
            if n > 0 {
                self.tokens += n;
                self.ppl_ratio_sum += ((mu_sum - lp_sum) / n as f64).exp();
                self.seqs += 1;
            }
        }
    }

    /// The sums as numbers, for [`MismatchStats::merge_values`] in another process.
    pub fn values(&self) -> [f64; 8] {
        [
            self.k1,
            self.k2,
            self.k3,
            self.abs_sum,
            self.abs_max,
            self.tokens as f64,
            self.ppl_ratio_sum,
            self.seqs as f64,
        ]
    }

    /// Adds another process's [`MismatchStats::values`] of the same step.
    pub fn merge_values(&mut self, v: [f64; 8]) {
        self.k1 += v[0];
        self.k2 += v[1];
        self.k3 += v[2];
        self.abs_sum += v[3];
        self.abs_max = self.abs_max.max(v[4]);
        self.tokens += v[5] as usize;
        self.ppl_ratio_sum += v[6];
        self.seqs += v[7] as usize;
    }

    /// The same names as NaN, for steps that skip the mismatch forward (`mismatch_every`).
    pub fn write_skipped(out: &mut Metrics) {
        for name in names::MISMATCH {
            out.insert(name.into(), f64::NAN);
        }
    }

    pub fn write(&self, out: &mut Metrics) {
        let per_token = |x: f64| {
            if self.tokens == 0 {
                f64::NAN
            } else {
                x / self.tokens as f64
            }
        };
        out.insert(names::MISMATCH_K1.into(), per_token(self.k1));
        out.insert(names::MISMATCH_K2.into(), per_token(self.k2));
        out.insert(names::MISMATCH_K3.into(), per_token(self.k3));
        out.insert(
            names::MISMATCH_LOGP_ABS_DIFF_MEAN.into(),
            per_token(self.abs_sum),
        );
        out.insert(
            names::MISMATCH_LOGP_ABS_DIFF_MAX.into(),
            if self.tokens == 0 {
                f64::NAN
            } else {
                self.abs_max
            },
        );
        let ppl = if self.seqs == 0 {
            f64::NAN
        } else {
            self.ppl_ratio_sum / self.seqs as f64
        };
        out.insert(names::MISMATCH_PPL_RATIO.into(), ppl);
    }
}

/// `reward/{mean,std}` (population std) and `len/{mean,max}` (completion tokens) of a batch.
pub fn batch_metrics(rewards: &[f64], lengths: &[usize], out: &mut Metrics) {
    let n = rewards.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    out.insert(names::REWARD_MEAN.into(), mean);
    out.insert(names::REWARD_STD.into(), var.sqrt());
    let ln = lengths.len().max(1) as f64;
    out.insert(
        names::LEN_MEAN.into(),
        lengths.iter().sum::<usize>() as f64 / ln,
    );
    out.insert(
        names::LEN_MAX.into(),
        lengths.iter().copied().max().unwrap_or(0) as f64,
    );
}
