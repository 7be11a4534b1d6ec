//! Acceptance 4: metric math equals a direct computation on random inputs.
// Brute-force references index by position on purpose; settings are built field by field for readability.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::metrics::{
    describe, ess, quantile_sorted, to_vec, MismatchStats, RatioEval, RatioStats, QUANTILES,
};
use alp_learner::{
    policy_loss, Aggregation, AggregationScale, ClipConfig, KlEstimator, LossConfig, LossInputs,
    RatioLevel,
};
use std::collections::BTreeMap;
use tch::Tensor;

/// numpy's linear quantile written the way its docs define it: q-th value of the sorted sample at
/// virtual index q (n - 1).
fn numpy_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let idx = q * (v.len() as f64 - 1.0);
    let (i, frac) = (idx.floor() as usize, idx.fract());
    if i + 1 < v.len() {
        v[i] * (1.0 - frac) + v[i + 1] * frac
    } else {
        v[i]
    }
}

#[test]
fn quantiles_and_moments() {
    let mut rng = common::Rng::new(3);
    for n in [1usize, 2, 7, 1000] {
        let values: Vec<f64> = (0..n).map(|_| (rng.normal() * 0.7).exp()).collect();
        let mut m = BTreeMap::new();
        describe("ratio", &values, &mut m);
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt();
        assert!((m["ratio/mean"] - mean).abs() < 1e-12);
        assert!((m["ratio/std"] - std).abs() < 1e-12);
        assert_eq!(
            m["ratio/min"],
            values.iter().copied().fold(f64::INFINITY, f64::min)
        );
        assert_eq!(
            m["ratio/max"],
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
        for (name, q) in QUANTILES {
            let want = numpy_quantile(&values, q);
            assert!(
                (m[&format!("ratio/{name}")] - want).abs() < 1e-12,
                "n={n} {name}"
            );
        }
    }
    // Known values: numpy.quantile([1, 2, 3, 4], 0.25) == 1.75.
    assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.25), 1.75);
    assert!(quantile_sorted(&[], 0.5).is_nan());
}

#[test]
fn ess_matches_definition() {
    assert_eq!(ess(&[2.0, 2.0, 2.0]), 1.0);
    let w = [1.0, 3.0];
    assert!((ess(&w) - 16.0 / (2.0 * 10.0)).abs() < 1e-15);
    let mut rng = common::Rng::new(5);
    let w: Vec<f64> = (0..500).map(|_| rng.normal().exp()).collect();
    let s: f64 = w.iter().sum();
    let s2: f64 = w.iter().map(|x| x * x).sum();
    assert!((ess(&w) - s * s / (500.0 * s2)).abs() < 1e-12);
}

#[test]
fn mismatch_matches_definition() {
    let mut rng = common::Rng::new(11);
    let (rows, t) = (5usize, 9usize);
    let lp: Vec<f64> = (0..rows * t).map(|_| -rng.uniform() * 4.0).collect();
    let mu: Vec<f64> = lp.iter().map(|x| x + rng.normal() * 0.3).collect();
    let mask: Vec<f64> = (0..rows * t)
        .map(|i| {
            if i % t < 2 + i / t || i % 4 == 0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mut stats = MismatchStats::default();
    // Added in two parts, as the learner does per micro-batch.
    stats.add(&lp[..2 * t], &mu[..2 * t], &mask[..2 * t], 2);
    stats.add(&lp[2 * t..], &mu[2 * t..], &mask[2 * t..], rows - 2);
    let mut m = BTreeMap::new();
    stats.write(&mut m);

    let idx: Vec<usize> = (0..rows * t).filter(|&i| mask[i] > 0.0).collect();
    let n = idx.len() as f64;
    let d = |i: usize| lp[i] - mu[i];
    let k1 = idx.iter().map(|&i| mu[i] - lp[i]).sum::<f64>() / n;
    let k2 = idx.iter().map(|&i| 0.5 * d(i) * d(i)).sum::<f64>() / n;
    let k3 = idx.iter().map(|&i| d(i).exp() - d(i) - 1.0).sum::<f64>() / n;
    let abs_mean = idx.iter().map(|&i| d(i).abs()).sum::<f64>() / n;
    let abs_max = idx.iter().map(|&i| d(i).abs()).fold(0.0, f64::max);
    let mut ppl = 0.0;
    for r in 0..rows {
        let toks: Vec<usize> = idx.iter().copied().filter(|i| i / t == r).collect();
        let k = toks.len() as f64;
        let train_ppl = (-toks.iter().map(|&i| lp[i]).sum::<f64>() / k).exp();
        let infer_ppl = (-toks.iter().map(|&i| mu[i]).sum::<f64>() / k).exp();
        ppl += train_ppl / infer_ppl / rows as f64;
    }
    for (name, want) in [
        ("k1", k1),
        ("k2", k2),
        ("k3", k3),
        ("logp_abs_diff_mean", abs_mean),
        ("logp_abs_diff_max", abs_max),
        ("ppl_ratio", ppl),
    ] {
        let got = m[&format!("mismatch/{name}")];
        assert!(
            (got - want).abs() < 1e-12,
            "mismatch/{name}: {got} vs {want}"
        );
    }
}

/// Clip fractions, ratio fractions, mask fraction and ESS as the learner feeds them from a loss
/// evaluation, against a direct computation from the raw ratios and advantages.
#[test]
fn ratio_and_clip_stats_match_direct_computation() {
    common::init();
    let mut rng = common::Rng::new(17);
    let (b, t) = (6i64, 12i64);
    let mu = rng.normal_tensor(&[b, t], 1.0) - 2.0;
    let lp = &mu + rng.normal_tensor(&[b, t], 0.8);
    let adv_v: Vec<f64> = (0..b).map(|_| rng.normal()).collect();
    let adv = Tensor::from_slice(&adv_v);
    let mask_v: Vec<f64> = (0..b * t)
        .map(|_| if rng.uniform() < 0.8 { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::from_slice(&mask_v).reshape([b, t]);
    let keep_v: Vec<f64> = (0..b * t)
        .map(|_| if rng.uniform() < 0.9 { 1.0 } else { 0.0 })
        .collect();
    let keep = Tensor::from_slice(&keep_v).reshape([b, t]);
    let (el, eh, c) = (0.2, 0.28, 3.0);
    let cfg = LossConfig {
        clip: ClipConfig {
            eps_low: el,
            eps_high: eh,
            dual_clip: Some(c),
        },
        level: RatioLevel::Token,
        geometric: false,
        aggregation: Aggregation::TokenMean,
        entropy_coef: 0.0,
        kl_coef: 0.0,
        kl_estimator: KlEstimator::K1,
        dppo: None,
    };
    let inp = LossInputs {
        lp: &lp,
        base: &mu,
        mask: &mask,
        advantages: &adv,
        weights: Some(&keep),
        entropy: None,
        ref_lp: None,
    };
    let out = policy_loss(&inp, &cfg, AggregationScale::of(&mask));
    let mut stats = RatioStats::default();
    let kv = to_vec(&keep);
    // The loss ratio is against `mu` here, so `ratio/*` and `ratio_loss/*` are the same values.
    let (log_ratio, seq_log_ratio) = (to_vec(&out.log_ratio), to_vec(&out.seq_log_ratio));
    stats.add(&RatioEval {
        log_ratio_vs_mu: &log_ratio,
        seq_log_ratio_vs_mu: &seq_log_ratio,
        loss_log_ratio: &log_ratio,
        mask: &mask_v,
        correction: Some(&kv),
        keep: Some(&kv),
        clip_high: &to_vec(&out.clip_high),
        clip_low: &to_vec(&out.clip_low),
        clip_dual: &to_vec(&out.clip_dual),
    });
    let mut m = BTreeMap::new();
    stats.write(&mut m);

    let lpv = to_vec(&lp);
    let muv = to_vec(&mu);
    let (mut n, mut hi, mut lo, mut du, mut masked) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut above2, mut below05) = (0.0, 0.0);
    let mut ratios = Vec::new();
    let mut weights = Vec::new();
    for i in 0..(b * t) as usize {
        if mask_v[i] == 0.0 {
            continue;
        }
        let r = (lpv[i] - muv[i]).exp();
        let a = adv_v[i / t as usize];
        n += 1.0;
        hi += f64::from(a > 0.0 && r > 1.0 + eh);
        lo += f64::from(a < 0.0 && r < 1.0 - el);
        du += f64::from(a < 0.0 && r > c);
        masked += f64::from(keep_v[i] == 0.0);
        above2 += f64::from(r > 2.0);
        below05 += f64::from(r < 0.5);
        ratios.push(r);
        weights.push(r * keep_v[i]);
    }
    let close = |name: &str, want: f64| {
        let got = m[name];
        assert!((got - want).abs() < 1e-9, "{name}: {got} vs {want}");
    };
    close("clip/high_frac", hi / n);
    close("clip/low_frac", lo / n);
    close("clip/dual_frac", du / n);
    close("mask/frac", masked / n);
    close("ratio/frac_above_2", above2 / n);
    close("ratio/frac_below_0.5", below05 / n);
    close("ratio/q50", numpy_quantile(&ratios, 0.5));
    close("ratio_loss/q50", numpy_quantile(&ratios, 0.5));
    close("ess", ess(&weights));
    assert!(
        hi > 0.0 && lo > 0.0 && du > 0.0,
        "random inputs should exercise every clip"
    );
    // One sequence ratio per row with trained tokens: exp(sum of its masked log-ratios).
    let seq: Vec<f64> = (0..b as usize)
        .map(|r| {
            (0..t as usize)
                .map(|j| r * t as usize + j)
                .filter(|&i| mask_v[i] > 0.0)
                .map(|i| lpv[i] - muv[i])
                .sum::<f64>()
                .exp()
        })
        .collect();
    close("ratio_seq/mean", seq.iter().sum::<f64>() / seq.len() as f64);
    close("ratio_seq/max", seq.iter().copied().fold(0.0, f64::max));
}
