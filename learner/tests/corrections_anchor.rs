//! The anchors' corrections (issue 29) against brute-force computations of the anchors' own formulas,
//! written from their code's definitions in plain f64 loops, not from the learner's tensor code:
//! - verl's rejection sampling (`algorithm.rollout_correction.rollout_rs`, `rollout_corr_helper.py`):
//!   every mode, one rule and two rules at once, on random log-probs; the threshold parsing;
//! - IcePop (token weight `pi_old / mu` kept inside `[alpha, beta]`, 0 outside) through `policy_loss`:
//!   loss and gradient;
//! - prime-rl's default loss (DPPO-binary TV mask + `kl_tau (log r)^2`), loss and gradient;
//! - and each of them through `PgLearner::train_step` on a tiny model, against per-sample forwards.
// Brute-force references index by position on purpose; settings are built field by field.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::correction::correction_weights;
use alp_learner::dppo::DppoConfig;
use alp_learner::rejection::{rejection_keep, rejection_rules, RejectionMode, Threshold};
use alp_learner::{
    group_advantages, policy_loss, AdvantageKind, Aggregation, AggregationScale, ClipConfig,
    CorrectionKind, CorrectionSettings, Group, KlEstimator, LearnerSettings, LossConfig,
    LossInputs, PgLearner, RatioLevel,
};
use common::{Rng, ToyLm};
use serde_json::json;
use tch::{Kind, Tensor};

const MODES: [RejectionMode; 11] = [
    RejectionMode::TokenK1,
    RejectionMode::TokenK2,
    RejectionMode::TokenK3,
    RejectionMode::SeqSumK1,
    RejectionMode::SeqSumK2,
    RejectionMode::SeqSumK3,
    RejectionMode::SeqMeanK1,
    RejectionMode::SeqMeanK2,
    RejectionMode::SeqMeanK3,
    RejectionMode::SeqMaxK2,
    RejectionMode::SeqMaxK3,
];

/// verl's statistic of one mode for one sequence, from its trained tokens' `log r = old - rollout`:
/// per token (`token_*`) or one value for the whole sequence, written as verl defines it.
fn verl_stat(mode: RejectionMode, log_r: &[f64]) -> Vec<f64> {
    let name = mode.to_string();
    let k = |x: f64| -> f64 {
        let x = x.clamp(-20.0, 20.0);
        if name.ends_with("k1") {
            -x
        } else if name.ends_with("k2") {
            0.5 * x * x
        } else {
            x.exp() - 1.0 - x
        }
    };
    let per_token: Vec<f64> = log_r.iter().map(|&x| k(x)).collect();
    let seq = if name.starts_with("seq_sum") {
        per_token.iter().sum::<f64>()
    } else if name.starts_with("seq_mean") {
        per_token.iter().sum::<f64>() / (per_token.len().max(1) as f64)
    } else if name.starts_with("seq_max") {
        per_token.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    } else {
        return per_token;
    };
    vec![seq; log_r.len()]
}

/// verl's verdict on one sequence: k1 modes keep `ln(lower) <= stat <= ln(upper)`, k2/k3 `stat <= upper`.
fn verl_keep(mode: RejectionMode, lower: Option<f64>, upper: f64, log_r: &[f64]) -> Vec<bool> {
    verl_stat(mode, log_r)
        .into_iter()
        .map(|s| match lower {
            Some(lo) => s >= lo.ln() && s <= upper.ln(),
            None => s <= upper,
        })
        .collect()
}

/// Thresholds between order statistics of the data's own statistic, so that some rows pass and some
/// fail and no value sits on a boundary: `(lower, upper)` for k1 modes (ratio bounds), `upper` else.
fn thresholds_for(mode: RejectionMode, rows: &[Vec<f64>]) -> (Option<f64>, f64) {
    let mut v: Vec<f64> = rows.iter().flat_map(|r| verl_stat(mode, r)).collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    let mid = |q: f64| {
        let i = ((v.len() - 1) as f64 * q) as usize;
        0.5 * (v[i] + v[i + 1])
    };
    if mode.is_k1() {
        (Some(mid(0.2).exp()), mid(0.7).exp())
    } else {
        (None, mid(0.6))
    }
}

/// Random `[b, t]` log-probs and a mask with a fully untrained row and a few holes.
fn random_batch(rng: &mut Rng, b: usize, t: usize, spread: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut old = vec![0f32; b * t];
    let mut mu = vec![0f32; b * t];
    let mut mask = vec![0f32; b * t];
    for r in 0..b {
        for c in 0..t {
            let i = r * t + c;
            let lp = -(rng.uniform() * 3.0 + 0.01);
            old[i] = lp as f32;
            mu[i] = (lp + spread * rng.normal()).min(-1e-3) as f32;
            mask[i] = if r == 1 || rng.uniform() < 0.15 {
                0.0
            } else {
                1.0
            };
        }
    }
    (old, mu, mask)
}

fn tensor(v: &[f32], b: usize, t: usize) -> Tensor {
    Tensor::from_slice(v).reshape([b as i64, t as i64])
}

/// Per row, `(column, log r)` of its trained tokens.
fn trained_rows(
    old: &[f32],
    mu: &[f32],
    mask: &[f32],
    b: usize,
    t: usize,
) -> Vec<Vec<(usize, f64)>> {
    (0..b)
        .map(|r| {
            (0..t)
                .filter(|&c| mask[r * t + c] > 0.0)
                .map(|c| (c, old[r * t + c] as f64 - mu[r * t + c] as f64))
                .collect()
        })
        .collect()
}

#[test]
fn every_rejection_mode_keeps_what_verls_formula_keeps() {
    common::init();
    let (b, t) = (12, 9);
    let mut rng = Rng::new(7);
    let (old, mu, mask) = random_batch(&mut rng, b, t, 0.3);
    let rows = trained_rows(&old, &mu, &mask, b, t);
    let log_rs: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().map(|x| x.1).collect())
        .collect();
    let (old_t, mu_t, mask_t) = (tensor(&old, b, t), tensor(&mu, b, t), tensor(&mask, b, t));
    let mut cases: Vec<Vec<RejectionMode>> = MODES.iter().map(|&m| vec![m]).collect();
    cases.push(vec![RejectionMode::TokenK1, RejectionMode::SeqMaxK2]);
    cases.push(vec![RejectionMode::SeqMeanK3, RejectionMode::SeqSumK1]);
    for modes in cases {
        let bounds: Vec<(Option<f64>, f64)> =
            modes.iter().map(|&m| thresholds_for(m, &log_rs)).collect();
        let spec: Vec<Threshold> = bounds
            .iter()
            .map(|&(lo, hi)| match lo {
                Some(lo) => Threshold::Text(format!("{lo}_{hi}")),
                None => Threshold::Number(hi),
            })
            .collect();
        let rules = rejection_rules(&modes, &spec).unwrap();
        let keep =
            Vec::<f32>::try_from(rejection_keep(&rules, &old_t, &mu_t, &mask_t).reshape([-1]))
                .unwrap();
        let (mut kept, mut dropped) = (0, 0);
        for (r, row) in rows.iter().enumerate() {
            let mut want = vec![true; row.len()];
            for (&m, &(lo, hi)) in modes.iter().zip(&bounds) {
                for (w, k) in want.iter_mut().zip(verl_keep(m, lo, hi, &log_rs[r])) {
                    *w &= k;
                }
            }
            for (&(c, _), w) in row.iter().zip(want) {
                assert_eq!(keep[r * t + c] > 0.0, w, "{modes:?}: row {r} column {c}");
                kept += usize::from(w);
                dropped += usize::from(!w);
            }
        }
        assert!(
            kept > 0 && dropped > 0,
            "{modes:?}: kept {kept}, dropped {dropped}"
        );
    }
}

#[test]
fn rejection_thresholds_follow_verls_rules() {
    use RejectionMode::*;
    let num = Threshold::Number;
    let text = |s: &str| Threshold::Text(s.into());
    // A k1 mode with only an upper bound gets lower = 1 / upper; k2/k3 take an upper bound only.
    let r = rejection_rules(&[TokenK1, SeqMaxK3], &[num(2.0)]).unwrap();
    assert_eq!((r[0].lower, r[0].upper), (Some(0.5), 2.0));
    assert_eq!((r[1].lower, r[1].upper), (None, 2.0));
    let r = rejection_rules(&[SeqMeanK1, TokenK2], &[text("0.6_1.6"), text("2.5")]).unwrap();
    assert_eq!((r[0].lower, r[0].upper, r[1].upper), (Some(0.6), 1.6, 2.5));
    // No threshold: verl's presets (decoupled_seq_is_rs, the Geo-RS and K3-RS presets).
    let r = rejection_rules(&[SeqSumK1, SeqMeanK1, SeqMeanK3], &[]).unwrap();
    assert_eq!((r[0].lower, r[0].upper), (Some(0.5), 2.0));
    assert_eq!((r[1].lower, r[1].upper), (Some(0.999), 1.001));
    assert_eq!((r[2].lower, r[2].upper), (None, 0.01));
    for (modes, spec, says) in [
        (vec![TokenK2], vec![], "no recommended threshold"),
        (vec![TokenK3], vec![text("0.5_2.0")], "upper bound only"),
        (
            vec![TokenK1, TokenK2, TokenK3],
            vec![num(1.0), num(2.0)],
            "one per mode",
        ),
        (vec![TokenK1], vec![text("2.0_0.5")], "0 < lower < upper"),
        (vec![TokenK1], vec![text("a_b")], "is not a number"),
        (vec![SeqMaxK2], vec![num(-1.0)], "> 0"),
    ] {
        let e = rejection_rules(&modes, &spec).unwrap_err();
        assert_eq!(e.field, "correction.rejection_threshold");
        assert!(e.reason.contains(says), "{modes:?}: {}", e.reason);
    }
}

/// `[b, t]` f64 leaf with grad and the inputs of one loss evaluation.
struct LossCase {
    lp: Tensor,
    old: Vec<f64>,
    mu: Vec<f64>,
    mask: Vec<f64>,
    adv: Vec<f64>,
    b: usize,
    t: usize,
}

fn loss_case(seed: u64, spread: f64) -> LossCase {
    let (b, t) = (6, 7);
    let mut rng = Rng::new(seed);
    let (old, mu, mask) = random_batch(&mut rng, b, t, spread);
    let lp: Vec<f64> = old
        .iter()
        .map(|&x| (x as f64 + 0.2 * rng.normal()).min(-1e-3))
        .collect();
    let adv: Vec<f64> = (0..b)
        .map(|i| if i % 3 == 2 { 0.0 } else { rng.normal() })
        .collect();
    LossCase {
        lp: Tensor::from_slice(&lp)
            .reshape([b as i64, t as i64])
            .set_requires_grad(true),
        old: old.iter().map(|&x| x as f64).collect(),
        mu: mu.iter().map(|&x| x as f64).collect(),
        mask: mask.iter().map(|&x| x as f64).collect(),
        adv,
        b,
        t,
    }
}

fn loss_cfg(dppo: Option<DppoConfig>) -> LossConfig {
    LossConfig {
        clip: ClipConfig {
            eps_low: 0.2,
            eps_high: 0.28,
            dual_clip: None,
        },
        level: RatioLevel::Token,
        geometric: false,
        aggregation: Aggregation::TokenMean,
        entropy_coef: 0.0,
        kl_coef: 0.0,
        kl_estimator: KlEstimator::K3,
        dppo,
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

/// IcePop's factor through `correction_weights` and `policy_loss` against
/// `L = -(1/N) sum_t M(w_t) min(r_t A, clip(r_t) A)`, `M(w) = w` on `[alpha, beta]` and 0 outside,
/// and its gradient `dL/dlp_t = -(1/N) M(w_t) A r_t` where the unclipped branch is the minimum.
#[test]
fn icepop_loss_and_gradient_equal_the_formula() {
    common::init();
    let c = loss_case(11, 0.8);
    let (b, t) = (c.b, c.t);
    let mut s = CorrectionSettings::default();
    s.kind = CorrectionKind::IcePop;
    assert_eq!(
        (s.icepop_alpha, s.icepop_beta),
        (0.5, 5.0),
        "IcePop's defaults"
    );
    let shape = [b as i64, t as i64];
    let old = Tensor::from_slice(&c.old).reshape(shape);
    let mu = Tensor::from_slice(&c.mu).reshape(shape);
    let mask = Tensor::from_slice(&c.mask).reshape(shape);
    let w = correction_weights(&s, Some(&old), &mu, &mask).unwrap();
    let adv = Tensor::from_slice(&c.adv);
    let scale = AggregationScale::of(&mask);
    let out = policy_loss(
        &LossInputs {
            lp: &c.lp,
            base: &old,
            mask: &mask,
            advantages: &adv,
            weights: Some(&w.weights),
            entropy: None,
            ref_lp: None,
        },
        &loss_cfg(None),
        scale,
    );
    out.total.backward();
    let (lp, grad, keep) = (
        f64s(&c.lp),
        f64s(&c.lp.grad()),
        f64s(w.keep.as_ref().unwrap()),
    );
    let n: f64 = c.mask.iter().sum();
    let (mut loss, mut masked) = (0.0, 0);
    for i in 0..b * t {
        let want_grad = if c.mask[i] > 0.0 {
            let a = c.adv[i / t];
            let iw = (c.old[i] - c.mu[i]).exp();
            let m = if (0.5..=5.0).contains(&iw) { iw } else { 0.0 };
            masked += usize::from(m == 0.0);
            assert_eq!(keep[i] > 0.0, m > 0.0, "keep mask at {i}");
            let r = (lp[i] - c.old[i]).exp();
            let clipped = r.clamp(0.8, 1.28);
            loss += -m * (r * a).min(clipped * a) / n;
            // The unclipped branch carries the gradient (ties count as unclipped).
            if r * a <= clipped * a {
                -m * a * r / n
            } else {
                0.0
            }
        } else {
            0.0
        };
        close(&format!("grad {i}"), grad[i], want_grad, 1e-9);
    }
    assert!(
        masked > 0,
        "the data must put some IcePop weights outside [0.5, 5]"
    );
    close("loss", out.total.double_value(&[]), loss, 1e-9);
}

/// prime-rl's default loss through `policy_loss` against its formula per token:
/// `delta = exp(lp) - exp(mu)`, masked when `A > 0 and delta > high` or `A <= 0 and delta < -low`,
/// `L = (1/N) sum_t [-keep adv_tau A exp(lp - mu) + kl_tau (lp - mu)^2]` and
/// `dL/dlp_t = (1/N) [-keep adv_tau A r + 2 kl_tau (lp - mu)]`.
#[test]
fn dppo_loss_and_gradient_equal_prime_rls_formula() {
    common::init();
    let cfg = DppoConfig {
        mask_low: 0.05,
        mask_high: 0.08,
        adv_tau: 0.7,
        kl_tau: 0.05,
    };
    assert_eq!(
        DppoConfig::default(),
        DppoConfig {
            mask_low: 0.2,
            mask_high: 0.2,
            adv_tau: 1.0,
            kl_tau: 1e-3
        },
        "prime-rl's DefaultLossConfig"
    );
    let c = loss_case(12, 0.5);
    let (b, t) = (c.b, c.t);
    let shape = [b as i64, t as i64];
    let mu = Tensor::from_slice(&c.mu).reshape(shape);
    let mask = Tensor::from_slice(&c.mask).reshape(shape);
    let adv = Tensor::from_slice(&c.adv);
    let out = policy_loss(
        &LossInputs {
            lp: &c.lp,
            base: &mu,
            mask: &mask,
            advantages: &adv,
            weights: None,
            entropy: None,
            ref_lp: None,
        },
        &loss_cfg(Some(cfg)),
        AggregationScale::of(&mask),
    );
    out.total.backward();
    let (lp, grad) = (f64s(&c.lp), f64s(&c.lp.grad()));
    let (high_flags, low_flags) = (f64s(&out.clip_high), f64s(&out.clip_low));
    let n: f64 = c.mask.iter().sum();
    let (mut loss, mut n_high, mut n_low) = (0.0, 0, 0);
    for i in 0..b * t {
        let mut want_grad = 0.0;
        if c.mask[i] > 0.0 {
            let a = c.adv[i / t];
            let d = lp[i] - c.mu[i];
            let delta = lp[i].exp() - c.mu[i].exp();
            let masked = if a > 0.0 {
                delta > cfg.mask_high
            } else {
                delta < -cfg.mask_low
            };
            let keep = if masked { 0.0 } else { 1.0 };
            let r = d.exp();
            loss += (-keep * cfg.adv_tau * a * r + cfg.kl_tau * d * d) / n;
            want_grad = (-keep * cfg.adv_tau * a * r + 2.0 * cfg.kl_tau * d) / n;
            let (hi, lo) = (a > 0.0 && masked, a < 0.0 && masked);
            assert_eq!(
                (high_flags[i] > 0.0, low_flags[i] > 0.0),
                (hi, lo),
                "masks at {i}"
            );
            n_high += usize::from(hi);
            n_low += usize::from(lo);
        }
        close(&format!("grad {i}"), grad[i], want_grad, 1e-9);
    }
    assert!(
        n_high > 0 && n_low > 0,
        "both masks must act: {n_high} {n_low}"
    );
    close("loss", out.total.double_value(&[]), loss, 1e-9);
}

// --- Through `PgLearner::train_step`: one optimizer step at the pre-update weights, against
// per-sample unpadded forwards of the same model (f64 log-softmax), as tests/train_step_reference.rs.

/// A trained token of the brute force: its sample's advantage, `lp` with grad, and `mu`.
struct Tok {
    adv: f64,
    lp: Tensor,
    mu: f64,
    seq: usize,
}

fn tokens(model: &ToyLm, groups: &[Group]) -> Vec<Tok> {
    let mut out = Vec::new();
    let samples = groups.iter().flat_map(|g| {
        let rewards: Vec<f64> = g.samples.iter().map(|x| x.reward).collect();
        g.samples
            .iter()
            .zip(group_advantages(&rewards, AdvantageKind::Grpo))
    });
    for (seq, (x, a)) in samples.enumerate() {
        let lp = common::sample_log_probs(model, x);
        for t in (0..x.loss_mask.len()).filter(|&t| x.loss_mask[t]) {
            out.push(Tok {
                adv: a,
                lp: lp.get(t as i64),
                mu: x.mu[t] as f64,
                seq,
            });
        }
    }
    out
}

/// `loss/pg` and the gradient norm of `terms.sum() / n` over the model's parameters.
fn pg_and_norm(model: &ToyLm, terms: Vec<Tensor>, n: f64) -> (f64, f64) {
    let total = Tensor::stack(&terms, 0).sum(Kind::Double) / n;
    let params: Vec<Tensor> = model
        .params()
        .into_iter()
        .map(|p| p.shallow_clone())
        .collect();
    let grads = Tensor::run_backward(&[&total], &params, true, false);
    let norm = grads
        .iter()
        .map(|g| {
            g.to_kind(Kind::Double)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt();
    (total.double_value(&[]), norm)
}

fn step_settings(kind: CorrectionKind) -> LearnerSettings {
    let mut s = LearnerSettings::default();
    s.correction.kind = kind;
    s.micro_batch_size = 5;
    s.max_grad_norm = 0.0;
    s
}

fn step(
    model: &ToyLm,
    groups: &[Group],
    s: LearnerSettings,
) -> std::collections::BTreeMap<String, f64> {
    let mut learner = PgLearner::new(s, model.deep_clone(), None).unwrap();
    learner.train_step(groups).unwrap()
}

/// IcePop at the pre-update weights: `-A M(w) r` with `r = exp(lp - sg(lp))`, `w = exp(lp_old - mu)`.
#[test]
fn icepop_through_train_step_equals_brute_force() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 31);
    let groups = common::masked_groups(&model, 32, 1.0);
    let mut s = step_settings(CorrectionKind::IcePop);
    // Tighter than the defaults, so that this data's weights leave the interval on both sides.
    (s.correction.icepop_alpha, s.correction.icepop_beta) = (0.7, 1.5);
    let toks = tokens(&model, &groups);
    let (mut terms, mut masked) = (Vec::new(), 0);
    for k in &toks {
        let old = k.lp.double_value(&[]);
        let w = (old - k.mu).exp();
        let m = if (0.7..=1.5).contains(&w) { w } else { 0.0 };
        masked += usize::from(m == 0.0);
        terms.push((&k.lp - k.lp.detach()).exp() * (-k.adv * m));
    }
    let n = toks.len() as f64;
    assert!(masked > 0 && masked < toks.len(), "masked {masked} of {n}");
    let (pg, norm) = pg_and_norm(&model, terms, n);
    let m = step(&model, &groups, s);
    close("loss/pg", m["loss/pg"], pg, 1e-5);
    close("grad/norm", m["grad/norm"], norm, 1e-4);
    close("mask/frac", m["mask/frac"], masked as f64 / n, 1e-12);
}

/// prime-rl's loss at the pre-update weights: against `mu`, so `r != 1` and the mask acts at once.
#[test]
fn dppo_through_train_step_equals_brute_force() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 41);
    let groups = common::masked_groups(&model, 42, 1.5);
    let mut s = step_settings(CorrectionKind::Dppo);
    let c = &mut s.correction;
    (c.dppo_mask_low, c.dppo_mask_high, c.adv_tau, c.kl_tau) = (0.03, 0.01, 0.8, 0.02);
    let toks = tokens(&model, &groups);
    let (mut terms, mut high, mut low) = (Vec::new(), 0, 0);
    for k in &toks {
        let lp = k.lp.double_value(&[]);
        let delta = lp.exp() - k.mu.exp();
        let masked = if k.adv > 0.0 {
            delta > 0.01
        } else {
            delta < -0.03
        };
        high += usize::from(k.adv > 0.0 && masked);
        low += usize::from(k.adv < 0.0 && masked);
        let d = &k.lp - k.mu;
        let keep = if masked { 0.0 } else { 1.0 };
        terms.push(d.exp() * (-keep * 0.8 * k.adv) + d.square() * 0.02);
    }
    let n = toks.len() as f64;
    assert!(high > 0 && low > 0, "masked high {high}, low {low}");
    let (pg, norm) = pg_and_norm(&model, terms, n);
    let m = step(&model, &groups, s);
    close("loss/pg", m["loss/pg"], pg, 1e-5);
    close("grad/norm", m["grad/norm"], norm, 1e-4);
    close(
        "clip/high_frac",
        m["clip/high_frac"],
        high as f64 / n,
        1e-12,
    );
    close("clip/low_frac", m["clip/low_frac"], low as f64 / n, 1e-12);
    close("clip/dual_frac", m["clip/dual_frac"], 0.0, 1e-12);
}

/// Every rejection mode with `kind = "none"` (PPO ratio 1 at the pre-update weights): the kept tokens'
/// `-A r` over the *kept* count (verl rewrites the response mask, denominators included), and the
/// rejected fractions of tokens and sequences.
#[test]
fn rejection_through_train_step_equals_brute_force() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 51);
    let groups = common::masked_groups(&model, 52, 0.6);
    let toks = tokens(&model, &groups);
    let seqs = toks.iter().map(|k| k.seq).max().unwrap() + 1;
    let log_rs: Vec<Vec<f64>> = (0..seqs)
        .map(|q| {
            toks.iter()
                .filter(|k| k.seq == q)
                .map(|k| k.lp.double_value(&[]) - k.mu)
                .collect()
        })
        .collect();
    for mode in MODES {
        let (lo, hi) = thresholds_for(mode, &log_rs);
        let mut s = step_settings(CorrectionKind::None);
        s.correction.rejection = vec![mode];
        s.correction.rejection_threshold = vec![match lo {
            Some(lo) => Threshold::Text(format!("{lo}_{hi}")),
            None => Threshold::Number(hi),
        }];
        let (mut terms, mut dropped, mut dropped_seqs) = (Vec::new(), 0, 0);
        for (q, log_r) in log_rs.iter().enumerate() {
            let keep = verl_keep(mode, lo, hi, log_r);
            dropped_seqs += usize::from(keep.iter().any(|&k| !k));
            for (k, keep) in toks.iter().filter(|k| k.seq == q).zip(keep) {
                dropped += usize::from(!keep);
                if keep {
                    terms.push((&k.lp - k.lp.detach()).exp() * (-k.adv));
                }
            }
        }
        let n = toks.len() as f64;
        assert!(
            dropped > 0 && !terms.is_empty(),
            "{mode}: dropped {dropped} of {n}"
        );
        let (pg, norm) = pg_and_norm(&model, terms, n - dropped as f64);
        let m = step(&model, &groups, s);
        close(&format!("{mode} loss/pg"), m["loss/pg"], pg, 1e-5);
        close(&format!("{mode} grad/norm"), m["grad/norm"], norm, 1e-4);
        let frac = m["rejection/masked_frac"];
        close(
            &format!("{mode} rejection/masked_frac"),
            frac,
            dropped as f64 / n,
            1e-12,
        );
        let seq_frac = m["rejection/seq_masked_frac"];
        close(
            &format!("{mode} seq_masked_frac"),
            seq_frac,
            dropped_seqs as f64 / seqs as f64,
            1e-12,
        );
    }
}

/// The new `[learner.correction]` keys: the anchors' defaults, a serde round trip (the written
/// config; tests/train_config.rs does it in TOML through `alp-rl train`), and refusals that name the
/// key and say what to write instead.
#[test]
fn anchor_settings_default_round_trip_and_refuse_by_key() {
    let d = CorrectionSettings::default();
    assert_eq!((d.icepop_alpha, d.icepop_beta), (0.5, 5.0));
    assert_eq!(
        (d.dppo_mask_low, d.dppo_mask_high, d.adv_tau, d.kl_tau),
        (0.2, 0.2, 1.0, 1e-3)
    );
    assert!(d.rejection.is_empty() && d.rejection_threshold.is_empty());
    let v = json!({
        "kind": "tis",
        "rejection": ["token_k1", "seq_mean_k3"],
        "rejection_threshold": ["0.5_2.0", 0.01]
    });
    let s: CorrectionSettings = serde_json::from_value(v).unwrap();
    s.validate().unwrap();
    let rules = s.rejection_rules().unwrap();
    assert_eq!(
        (rules[0].lower, rules[0].upper, rules[1].upper),
        (Some(0.5), 2.0, 0.01)
    );
    let back: CorrectionSettings =
        serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let refused = |v: serde_json::Value, field: &str, says: &str| {
        let s: CorrectionSettings = serde_json::from_value(v.clone()).unwrap();
        let e = s.validate().unwrap_err();
        assert_eq!(e.field, field, "{v}");
        assert!(e.reason.contains(says), "{v}: {}", e.reason);
    };
    refused(
        json!({"icepop_beta": 0.4}),
        "correction.icepop_beta",
        "> icepop_alpha",
    );
    for kind in ["icepop", "dppo"] {
        let v = json!({"kind": kind, "level": "sequence"});
        refused(v, "correction.level", "level = \"token\"");
    }
    refused(json!({"kl_tau": -1.0}), "correction.kl_tau", ">= 0");
    refused(
        json!({"dppo_mask_high": -0.1}),
        "correction.dppo_mask_high",
        ">= 0",
    );
    let v = json!({"rejection_threshold": [2.0]});
    refused(v, "correction.rejection_threshold", "rejection = [");
    let v = json!({"rejection": ["token_k3"]});
    refused(v, "correction.rejection_threshold", "set one");
    let e = serde_json::from_value::<CorrectionSettings>(json!({"rejection": ["seq_mean_k4"]}))
        .unwrap_err();
    assert!(e.to_string().contains("seq_mean_k3"), "{e}");
}

/// A learner-only run with each anchor correction at its defaults (two mini-batches, so the trust
/// region acts): a noisy sampler, reward 1 when token 3 appears; the mean reward rises within 30 steps
/// (as tests/learning.rs does for ours).
#[test]
fn each_anchor_correction_learns_a_toy_task() {
    common::init();
    type Tweak = fn(&mut LearnerSettings);
    let cases: [(&str, Tweak); 3] = [
        ("icepop", |s| s.correction.kind = CorrectionKind::IcePop),
        ("dppo", |s| s.correction.kind = CorrectionKind::Dppo),
        ("tis + seq_mean_k3 rejection", |s| {
            s.correction.kind = CorrectionKind::Tis;
            s.correction.rejection = vec![RejectionMode::SeqMeanK3, RejectionMode::TokenK1];
            s.correction.rejection_threshold =
                vec![Threshold::Number(0.05), Threshold::Number(3.0)];
        }),
    ];
    for (what, tweak) in cases {
        let mut s = LearnerSettings::default();
        s.loss.dual_clip = Some(3.0);
        s.micro_batch_size = 16;
        s.mini_batches = 2;
        s.optimizer.lr = 1e-3;
        s.optimizer.weight_decay = 0.0;
        tweak(&mut s);
        let mut learner = PgLearner::new(s, ToyLm::new(8, 16, 2, 5), None).unwrap();
        let mut rng = Rng::new(99);
        let mut rewards = Vec::new();
        let mut rejected = 0.0;
        for _ in 0..30 {
            let prompts = common::random_prompts(8, 2, 8, &mut rng);
            let groups =
                common::sample_groups(learner.policy(), &prompts, 8, 4, 0.5, &mut rng, |c| {
                    f64::from(c.contains(&3))
                });
            let m = learner.train_step(&groups).unwrap();
            assert!(m["loss/total"].is_finite(), "{what}: {m:?}");
            rewards.push(m["reward/mean"]);
            rejected += m.get("rejection/masked_frac").copied().unwrap_or(0.0);
        }
        let first = rewards[..5].iter().sum::<f64>() / 5.0;
        let end = rewards[25..].iter().sum::<f64>() / 5.0;
        assert!(
            end > first + 0.2 && end > 0.8,
            "{what}: reward {first:.3} -> {end:.3} ({rewards:?})"
        );
        if what.contains("rejection") {
            assert!(rejected > 0.0, "{what}: nothing was ever rejected");
        }
    }
}
