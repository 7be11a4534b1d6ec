//! Acceptance 1 and 2: loss values and gradients against closed forms and finite differences, on f64
//! tensors so that finite differences are tight.
// Brute-force references index by position on purpose; settings are built field by field for readability.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::correction::{correction_weights, log_is_weight};
use alp_learner::loss::{aggregate, kl_penalty, loss_log_ratio};
use alp_learner::{
    policy_loss, Aggregation, AggregationScale, ClipConfig, CorrectionKind, CorrectionSettings,
    KlEstimator, LossConfig, LossInputs, RatioLevel,
};
use tch::{Kind, Tensor};

const EL: f64 = 0.2;
const EH: f64 = 0.28;
const C: f64 = 3.0;

fn cfg(level: RatioLevel, agg: Aggregation, dual: Option<f64>) -> LossConfig {
    LossConfig {
        clip: ClipConfig {
            eps_low: EL,
            eps_high: EH,
            dual_clip: dual,
        },
        level,
        geometric: false,
        aggregation: agg,
        entropy_coef: 0.0,
        kl_coef: 0.0,
        kl_estimator: KlEstimator::K3,
        dppo: None,
    }
}

fn t2(rows: &[&[f64]]) -> Tensor {
    let cols = rows[0].len() as i64;
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, cols])
}

fn vec2(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.reshape([-1])).unwrap()
}

fn leaf(t: &Tensor) -> Tensor {
    t.detach().copy().set_requires_grad(true)
}

/// Per-token closed form of the token-level surrogate: (loss, dloss/dlp).
fn closed_form_token(r: f64, a: f64, dual: Option<f64>) -> (f64, f64) {
    if a > 0.0 && r > 1.0 + EH {
        return (-a * (1.0 + EH), 0.0);
    }
    if a < 0.0 && r < 1.0 - EL {
        return (-a * (1.0 - EL), 0.0);
    }
    if let Some(c) = dual {
        if a < 0.0 && r > c {
            return (-a * c, 0.0);
        }
    }
    (-a * r, -a * r)
}

fn loss_value(lp: &Tensor, base: &Tensor, mask: &Tensor, adv: &Tensor, c: &LossConfig) -> f64 {
    let scale = AggregationScale::of(mask);
    let inp = LossInputs {
        lp,
        base,
        mask,
        advantages: adv,
        weights: None,
        entropy: None,
        ref_lp: None,
    };
    policy_loss(&inp, c, scale).total.double_value(&[])
}

/// Token level, every clip region on both sides of each boundary, with masks.
#[test]
fn token_loss_matches_closed_form_and_finite_differences() {
    common::init();
    // Ratios chosen just inside/outside 1 - eps_low = 0.8, 1 + eps_high = 1.28 and c = 3.
    let ratios: [&[f64]; 2] = [
        &[0.79, 0.81, 1.27, 1.29, 2.99, 3.01],
        &[0.5, 1.0, 1.279, 1.281, 2.0, 4.0],
    ];
    let adv = Tensor::from_slice(&[1.5f64, -0.7]);
    let mu = t2(&[
        &[-1.0, -2.0, -0.5, -3.0, -1.2, -0.1],
        &[-2.2, -0.3, -0.9, -1.7, -2.5, -0.4],
    ]);
    let mask = t2(&[
        &[1.0, 1.0, 1.0, 0.0, 1.0, 1.0],
        &[1.0, 1.0, 1.0, 1.0, 0.0, 1.0],
    ]);
    let lp0 = &mu + t2(&ratios).log();
    let a = [1.5, -0.7];
    for dual in [None, Some(C)] {
        for agg in [
            Aggregation::TokenMean,
            Aggregation::SeqMeanTokenMean,
            Aggregation::SeqMeanTokenSum,
        ] {
            let c = cfg(RatioLevel::Token, agg, dual);
            let lp = leaf(&lp0);
            let scale = AggregationScale::of(&mask);
            let inp = LossInputs {
                lp: &lp,
                base: &mu,
                mask: &mask,
                advantages: &adv,
                weights: None,
                entropy: None,
                ref_lp: None,
            };
            let out = policy_loss(&inp, &c, scale);
            out.total.backward();
            let grad = vec2(&lp.grad());

            // Closed form, aggregated by hand.
            let m = vec2(&mask);
            let mut want_loss = 0.0;
            let mut want_grad = [0.0; 12];
            let n_tokens: f64 = m.iter().sum();
            for row in 0..2 {
                let len: f64 = m[row * 6..row * 6 + 6].iter().sum();
                for j in 0..6 {
                    let i = row * 6 + j;
                    let (l, g) = closed_form_token(ratios[row][j], a[row], dual);
                    let w = m[i]
                        * match agg {
                            Aggregation::TokenMean => 1.0 / n_tokens,
                            Aggregation::SeqMeanTokenMean => 1.0 / (2.0 * len),
                            Aggregation::SeqMeanTokenSum => 1.0 / 2.0,
                        };
                    want_loss += w * l;
                    want_grad[i] = w * g;
                }
            }
            let got = out.total.double_value(&[]);
            assert!(
                (got - want_loss).abs() < 1e-12,
                "{agg:?} {dual:?}: loss {got} vs closed form {want_loss}"
            );
            for i in 0..12 {
                assert!(
                    (grad[i] - want_grad[i]).abs() < 1e-12,
                    "{agg:?} {dual:?} token {i}: grad {} vs {}",
                    grad[i],
                    want_grad[i]
                );
            }

            // Central finite differences (no boundary lies within h of any ratio).
            let h = 1e-7;
            for i in 0..12 {
                let bump = |d: f64| {
                    let e = Tensor::zeros([12], (Kind::Double, tch::Device::Cpu));
                    let _ = e.narrow(0, i as i64, 1).fill_(d);
                    loss_value(&(&lp0 + e.reshape([2, 6])), &mu, &mask, &adv, &c)
                };
                let fd = (bump(h) - bump(-h)) / (2.0 * h);
                assert!(
                    (fd - grad[i]).abs() < 1e-6,
                    "{agg:?} {dual:?} token {i}: fd {fd} vs autograd {}",
                    grad[i]
                );
            }

            // Clip flags agree with the closed form's regions on trained tokens.
            let (hi, lo, du) = (
                vec2(&out.clip_high.to_kind(Kind::Double)),
                vec2(&out.clip_low.to_kind(Kind::Double)),
                vec2(&out.clip_dual.to_kind(Kind::Double)),
            );
            for row in 0..2 {
                for j in 0..6 {
                    let (i, r, av) = (row * 6 + j, ratios[row][j], a[row]);
                    if m[i] == 0.0 {
                        assert!(hi[i] + lo[i] + du[i] == 0.0, "untrained token {i} flagged");
                        continue;
                    }
                    assert_eq!(hi[i] > 0.0, av > 0.0 && r > 1.0 + EH, "high flag at {i}");
                    assert_eq!(lo[i] > 0.0, av < 0.0 && r < 1.0 - EL, "low flag at {i}");
                    assert_eq!(
                        du[i] > 0.0,
                        dual.is_some() && av < 0.0 && r > C,
                        "dual flag at {i}"
                    );
                }
            }
        }
    }
}

/// Masked tokens do not influence the loss or receive gradient, even with absurd or non-finite values.
#[test]
fn masked_tokens_are_inert() {
    common::init();
    let mu = t2(&[&[-1.0, -2.0, 0.0]]);
    let mask = t2(&[&[1.0, 1.0, 0.0]]);
    let adv = Tensor::from_slice(&[0.9f64]);
    let c = cfg(RatioLevel::Token, Aggregation::TokenMean, Some(C));
    let mut results = Vec::new();
    for garbage in [0.0, 80.0, f64::NAN] {
        let lp = leaf(&t2(&[&[-1.1, -1.9, garbage]]));
        let base = t2(&[&[-1.0, -2.0, -garbage]]);
        let _ = &mu;
        let inp = LossInputs {
            lp: &lp,
            base: &base,
            mask: &mask,
            advantages: &adv,
            weights: None,
            entropy: None,
            ref_lp: None,
        };
        let out = policy_loss(&inp, &c, AggregationScale::of(&mask));
        out.total.backward();
        let g = vec2(&lp.grad());
        assert_eq!(g[2], 0.0, "masked token got gradient {}", g[2]);
        results.push((out.total.double_value(&[]), g[0], g[1]));
    }
    assert!(
        results.iter().all(|r| r == &results[0]),
        "masked values changed the loss: {results:?}"
    );
    assert!(results[0].0.is_finite());
}

/// Sequence level: every token carries exp(S) as its value, but the gradient of token t is only through
/// its own lp (the GSPO stop-gradient), which differs from the derivative of the value.
#[test]
fn sequence_ratio_uses_stop_gradient() {
    common::init();
    let mu = t2(&[&[-1.0, -2.0, -0.5, -1.5], &[-0.7, -1.1, -2.0, -0.2]]);
    let mask = t2(&[&[1.0, 1.0, 1.0, 0.0], &[1.0, 1.0, 1.0, 1.0]]);
    let delta = t2(&[&[0.05, -0.02, 0.04, 9.0], &[0.3, 0.1, 0.2, 0.05]]);
    let lp0 = &mu + &delta;
    let adv = Tensor::from_slice(&[0.8f64, -1.2]);
    let a = [0.8, -1.2];
    for geometric in [false, true] {
        for dual in [None, Some(1.05)] {
            let mut c = cfg(RatioLevel::Sequence, Aggregation::TokenMean, dual);
            c.geometric = geometric;
            c.clip.eps_low = 0.5;
            c.clip.eps_high = 1.0;
            let lp = leaf(&lp0);
            let inp = LossInputs {
                lp: &lp,
                base: &mu,
                mask: &mask,
                advantages: &adv,
                weights: None,
                entropy: None,
                ref_lp: None,
            };
            let out = policy_loss(&inp, &c, AggregationScale::of(&mask));
            out.total.backward();
            let grad = vec2(&lp.grad());
            let d = vec2(&delta);
            let m = vec2(&mask);
            let n_tokens: f64 = m.iter().sum();
            let mut want_loss = 0.0;
            for row in 0..2 {
                let len: f64 = m[row * 4..row * 4 + 4].iter().sum();
                let mut s: f64 = (0..4).map(|j| d[row * 4 + j] * m[row * 4 + j]).sum();
                if geometric {
                    s /= len;
                }
                let r = s.exp();
                // Closed form with this test's clip settings.
                let (l, g) = {
                    let av = a[row];
                    if av > 0.0 && r > 2.0 {
                        (-av * 2.0, 0.0)
                    } else if av < 0.0 && r < 0.5 {
                        (-av * 0.5, 0.0)
                    } else if dual.is_some_and(|c| av < 0.0 && r > c) {
                        (-av * dual.unwrap(), 0.0)
                    } else {
                        (-av * r, -av * r)
                    }
                };
                let seq_lr = vec2(&out.seq_log_ratio)[row];
                assert!((seq_lr - s).abs() < 1e-12, "seq log ratio {seq_lr} vs {s}");
                for j in 0..4 {
                    let i = row * 4 + j;
                    want_loss += m[i] * l / n_tokens;
                    let want = m[i] * g / n_tokens;
                    assert!(
                        (grad[i] - want).abs() < 1e-12,
                        "geo={geometric} dual={dual:?} token {i}: {} vs {want}",
                        grad[i]
                    );
                    if m[i] > 0.0 {
                        let used = vec2(&out.log_ratio)[i];
                        assert!(
                            (used - s).abs() < 1e-12,
                            "token {i} carries {used}, sequence value {s}"
                        );
                    }
                }
            }
            assert!((out.total.double_value(&[]) - want_loss).abs() < 1e-12);
        }
    }
    // The value's own derivative (finite differences) is not the stop-gradient gradient: with token-mean
    // and no clipping active it is `len` times larger for a product ratio.
    let c = cfg(RatioLevel::Sequence, Aggregation::TokenMean, None);
    let mut wide = c;
    wide.clip = ClipConfig {
        eps_low: 0.9,
        eps_high: 100.0,
        dual_clip: None,
    };
    let lp = leaf(&lp0);
    let inp = LossInputs {
        lp: &lp,
        base: &mu,
        mask: &mask,
        advantages: &adv,
        weights: None,
        entropy: None,
        ref_lp: None,
    };
    policy_loss(&inp, &wide, AggregationScale::of(&mask))
        .total
        .backward();
    let g = vec2(&lp.grad())[0];
    let h = 1e-7;
    let e = t2(&[&[h, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]]);
    let fd = (loss_value(&(&lp0 + &e), &mu, &mask, &adv, &wide)
        - loss_value(&(&lp0 - &e), &mu, &mask, &adv, &wide))
        / (2.0 * h);
    assert!(
        (fd - 3.0 * g).abs() < 1e-6,
        "finite difference {fd} should be 3 x stop-gradient grad {g}"
    );
}

/// The log-ratio clamp at [-20, 20] bounds the ratio and stops the gradient beyond it.
#[test]
fn log_ratio_is_clamped() {
    common::init();
    let mu = t2(&[&[-30.0, -1.0]]);
    let mask = t2(&[&[1.0, 1.0]]);
    let lp = leaf(&t2(&[&[-1.0, -40.0]]));
    let lr = loss_log_ratio(&lp, &mu, &mask, RatioLevel::Token, false);
    assert_eq!(vec2(&lr.detach()), vec![20.0, -20.0]);
    lr.sum(Kind::Double).backward();
    assert_eq!(vec2(&lp.grad()), vec![0.0, 0.0]);
}

/// Acceptance 2: lp == mu gives ratios of exactly 1 and the plain policy-gradient loss and gradient.
#[test]
fn equal_log_probs_give_plain_policy_gradient() {
    common::init();
    let mut rng = common::Rng::new(7);
    let lp0 = rng.normal_tensor(&[3, 5], 1.0) - 2.0;
    let mask = t2(&[
        &[1.0, 1.0, 1.0, 1.0, 0.0],
        &[1.0, 1.0, 0.0, 0.0, 0.0],
        &[1.0, 0.0, 1.0, 1.0, 1.0],
    ]);
    let adv = Tensor::from_slice(&[1.2f64, -0.4, -0.8]);
    for level in [RatioLevel::Token, RatioLevel::Sequence] {
        for agg in [
            Aggregation::TokenMean,
            Aggregation::SeqMeanTokenMean,
            Aggregation::SeqMeanTokenSum,
        ] {
            let c = cfg(level, agg, Some(C));
            let scale = AggregationScale::of(&mask);
            let lp = leaf(&lp0);
            let mu = lp0.detach().copy();
            let inp = LossInputs {
                lp: &lp,
                base: &mu,
                mask: &mask,
                advantages: &adv,
                weights: None,
                entropy: None,
                ref_lp: None,
            };
            let out = policy_loss(&inp, &c, scale);
            let ratio = out.log_ratio.exp();
            assert!(
                ratio.eq(1.0).all().int64_value(&[]) == 1,
                "ratio not exactly 1: {ratio}"
            );
            assert!(out.seq_log_ratio.eq(0.0).all().int64_value(&[]) == 1);
            out.total.backward();
            // Plain PG: agg(-A * lp) has the same gradient, and the value agg(-A).
            let pg_lp = leaf(&lp0);
            let pg = aggregate(&(-adv.unsqueeze(1) * &pg_lp), &mask, agg, scale);
            pg.backward();
            let want_value = aggregate(
                &(-adv.unsqueeze(1)).expand([3, 5], false),
                &mask,
                agg,
                scale,
            )
            .double_value(&[]);
            assert!(
                (out.total.double_value(&[]) - want_value).abs() < 1e-12,
                "{level:?} {agg:?}"
            );
            let diff = (lp.grad() - pg_lp.grad()).abs().max().double_value(&[]);
            assert!(
                diff < 1e-12,
                "{level:?} {agg:?}: grad differs from plain PG by {diff}"
            );
            assert!(
                out.clip_high
                    .logical_or(&out.clip_low)
                    .logical_or(&out.clip_dual)
                    .any()
                    .int64_value(&[])
                    == 0
            );
        }
    }
}

/// TIS truncates and MIS masks `pi_old / mu` at token and sequence level; the loss multiplies them in.
#[test]
fn tis_and_mis_weights() {
    common::init();
    let mu = t2(&[&[-1.0, -2.0, -0.5], &[-0.3, -0.4, -0.5]]);
    let old = t2(&[&[-0.2, -2.1, -1.9], &[-0.3, -0.35, -0.5]]);
    let mask = t2(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
    let mut s = CorrectionSettings {
        kind: CorrectionKind::Tis,
        tis_cap: 2.0,
        mis_low: 0.5,
        mis_high: 2.0,
        ..Default::default()
    };
    let dtok: [f64; 6] = [0.8, -0.1, -1.4, 0.0, 0.05, 0.0];
    let m = vec2(&mask);
    // Token TIS: min(exp(d), 2) on trained tokens, 1 elsewhere.
    let w = vec2(
        &correction_weights(&s, Some(&old), &mu, &mask)
            .unwrap()
            .weights,
    );
    for i in 0..6 {
        let want = if m[i] > 0.0 {
            dtok[i].exp().min(2.0)
        } else {
            1.0
        };
        assert!(
            (w[i] - want).abs() < 1e-12,
            "tis token {i}: {} vs {want}",
            w[i]
        );
    }
    // Token MIS: keep iff 0.5 <= exp(d) <= 2.
    s.kind = CorrectionKind::Mis;
    let cw = correction_weights(&s, Some(&old), &mu, &mask).unwrap();
    let keep = vec2(&cw.keep.unwrap());
    let mis_w = vec2(&cw.weights);
    for i in 0..6 {
        let r = if m[i] > 0.0 { dtok[i].exp() } else { 1.0 };
        let kept = (0.5..=2.0).contains(&r);
        assert_eq!(keep[i], if kept { 1.0 } else { 0.0 }, "mis token {i}");
        // Kept tokens keep their importance weight; masked ones weigh nothing.
        let want = if kept { r } else { 0.0 };
        assert!(
            (mis_w[i] - want).abs() < 1e-12,
            "mis weight {i}: {} vs {want}",
            mis_w[i]
        );
    }
    // Sequence level: one weight per row from the summed log-ratio.
    s.level = RatioLevel::Sequence;
    let lw = vec2(&log_is_weight(
        &old,
        &mu,
        &mask,
        RatioLevel::Sequence,
        false,
    ));
    let sums = [0.8 - 0.1 - 1.4, 0.05];
    for i in 0..6 {
        let want = if m[i] > 0.0 { sums[i / 3] } else { 0.0 };
        assert!((lw[i] - want).abs() < 1e-12);
    }
    let keep = vec2(
        &correction_weights(&s, Some(&old), &mu, &mask)
            .unwrap()
            .keep
            .unwrap(),
    );
    assert_eq!(
        &keep[..3],
        &[0.0, 0.0, 0.0],
        "row 0 ratio exp(-0.7) < 0.5 is masked"
    );
    assert_eq!(&keep[3..5], &[1.0, 1.0]);
    s.kind = CorrectionKind::Bypass;
    assert!(correction_weights(&s, Some(&old), &mu, &mask).is_none());

    // The loss multiplies the weight into each token's surrogate.
    s.kind = CorrectionKind::Tis;
    s.level = RatioLevel::Token;
    let weights = correction_weights(&s, Some(&old), &mu, &mask)
        .unwrap()
        .weights;
    let adv = Tensor::from_slice(&[1.0f64, -1.0]);
    let lp = leaf(&(&old + 0.01));
    let c = cfg(RatioLevel::Token, Aggregation::TokenMean, None);
    let inp = LossInputs {
        lp: &lp,
        base: &old,
        mask: &mask,
        advantages: &adv,
        weights: Some(&weights),
        entropy: None,
        ref_lp: None,
    };
    let out = policy_loss(&inp, &c, AggregationScale::of(&mask));
    out.total.backward();
    let wv = vec2(&weights);
    let r = 0.01f64.exp();
    let want: f64 = (0..6)
        .map(|i| m[i] * wv[i] * -[1.0, -1.0][i / 3] * r)
        .sum::<f64>()
        / 5.0;
    assert!((out.total.double_value(&[]) - want).abs() < 1e-12);
    let g = vec2(&lp.grad());
    for i in 0..6 {
        let want = m[i] * wv[i] * -[1.0, -1.0][i / 3] * r / 5.0;
        assert!((g[i] - want).abs() < 1e-12);
    }
}

/// KL estimators and the entropy bonus enter the total with their coefficients; gradients by FD.
#[test]
fn kl_and_entropy_terms() {
    common::init();
    let lp0 = t2(&[&[-1.0, -0.2, -3.0]]);
    let rf = t2(&[&[-1.3, -0.1, -2.0]]);
    let mask = t2(&[&[1.0, 1.0, 1.0]]);
    let d = [0.3, -0.1, -1.0];
    for (est, f) in [
        (
            KlEstimator::K1,
            Box::new(|d: f64| d) as Box<dyn Fn(f64) -> f64>,
        ),
        (KlEstimator::K2, Box::new(|d: f64| 0.5 * d * d)),
        (KlEstimator::K3, Box::new(|d: f64| (-d).exp() + d - 1.0)),
    ] {
        let k = vec2(&kl_penalty(&lp0, &rf, est));
        for i in 0..3 {
            assert!((k[i] - f(d[i])).abs() < 1e-12, "{est:?} token {i}");
        }
        let mut c = cfg(RatioLevel::Token, Aggregation::TokenMean, None);
        c.kl_coef = 0.5;
        c.kl_estimator = est;
        c.entropy_coef = 0.1;
        let ent = t2(&[&[1.0, 2.0, 0.5]]);
        let adv = Tensor::from_slice(&[0.0f64]);
        let total = |lp: &Tensor| {
            let inp = LossInputs {
                lp,
                base: &lp.detach(),
                mask: &mask,
                advantages: &adv,
                weights: None,
                entropy: Some(&ent),
                ref_lp: Some(&rf),
            };
            policy_loss(&inp, &c, AggregationScale::of(&mask)).total
        };
        let lp = leaf(&lp0);
        let t = total(&lp);
        let want = 0.5 * (0..3).map(|i| f(d[i])).sum::<f64>() / 3.0 - 0.1 * 3.5 / 3.0;
        assert!(
            (t.double_value(&[]) - want).abs() < 1e-12,
            "{est:?}: {} vs {want}",
            t.double_value(&[])
        );
        t.backward();
        let g = vec2(&lp.grad());
        let h = 1e-6;
        for i in 0..3 {
            let mut e = [0.0; 3];
            e[i] = h;
            let e = t2(&[&e]);
            let fd = (total(&(&lp0 + &e)).double_value(&[])
                - total(&(&lp0 - &e)).double_value(&[]))
                / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-6,
                "{est:?} token {i}: fd {fd} vs {}",
                g[i]
            );
        }
    }
}
