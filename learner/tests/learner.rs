//! Learner orchestration: advantages, packing, gradient accumulation, PPO epochs, KL reference, and the
//! metric map of acceptance 2 on a real forward.
// Brute-force references index by position on purpose; settings are built field by field for readability.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::{
    group_advantages, token_log_probs, AdvantageKind, Aggregation, CorrectionKind, Entropy, Group,
    LearnerSettings, PackedBatch, PgLearner, RatioLevel, Sample, TrainablePolicy,
};
use alp_policy::NoHooks;
use common::{Rng, ToyLm};
use tch::{Kind, Tensor};

fn groups(model: &ToyLm, seed: u64, noise: f64) -> Vec<Group> {
    let mut rng = Rng::new(seed);
    let prompts = common::random_prompts(4, 3, 8, &mut rng);
    common::sample_groups(model, &prompts, 4, 5, noise, &mut rng, |c| {
        c.iter().filter(|&&t| t == 1).count() as f64
    })
}

#[test]
fn advantages() {
    let r = [1.0, 0.0, 0.0, 1.0, 1.0];
    let mean = 0.6;
    let std = (r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 4.0).sqrt();
    let g = group_advantages(&r, AdvantageKind::Grpo);
    for (a, x) in g.iter().zip(r) {
        assert!((a - (x - mean) / (std + 1e-6)).abs() < 1e-12);
    }
    let d = group_advantages(&r, AdvantageKind::DrGrpo);
    assert!(d.iter().zip(r).all(|(a, x)| (a - (x - mean)).abs() < 1e-12));
    let l = group_advantages(&r, AdvantageKind::Rloo);
    for (i, a) in l.iter().enumerate() {
        let others: f64 = r
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, x)| x)
            .sum::<f64>()
            / 4.0;
        assert!((a - (r[i] - others)).abs() < 1e-12);
    }
    assert_eq!(group_advantages(&[3.0], AdvantageKind::Grpo), vec![0.0]);
    assert_eq!(
        group_advantages(&[2.0, 2.0], AdvantageKind::Grpo),
        vec![0.0, 0.0]
    );
}

/// Packing right-pads and picks, for every completion token, the logit of the previous position.
#[test]
fn packing_and_token_log_probs() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 1);
    let a = Sample {
        prompt_ids: vec![1, 2],
        completion_ids: vec![3, 4, 5],
        loss_mask: vec![true, false, true],
        mu: vec![-1.0, f32::NAN, -2.0],
        reward: 1.0,
        policy_version: 0,
    };
    let b = Sample {
        prompt_ids: vec![6, 7, 1, 2],
        completion_ids: vec![0],
        loss_mask: vec![true],
        mu: vec![-0.5],
        ..a.clone()
    };
    let packed = PackedBatch::pack(&[&a, &b], &[0.5, -0.5], tch::Device::Cpu).unwrap();
    assert_eq!(packed.input_ids.size(), vec![2, 5]);
    assert_eq!(packed.row_tokens, vec![2, 1]);
    let mask = Vec::<f32>::try_from(packed.mask.reshape([-1])).unwrap();
    assert_eq!(mask, vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    let mu = Vec::<f32>::try_from(packed.mu.reshape([-1])).unwrap();
    assert_eq!(
        mu,
        vec![-1.0, 0.0, -2.0, -0.5, 0.0, 0.0],
        "untrained mu is zeroed (NaN must not leak)"
    );
    let logits =
        tch::no_grad(|| model.forward(&packed.input_ids, Some(&packed.attention_mask), &NoHooks));
    let (lp, ent) = token_log_probs(&logits, &packed, Entropy::WithGrad);
    // Direct: unpadded forward of each sequence alone, logit at position p + j - 1.
    for (row, s) in [&a, &b].iter().enumerate() {
        let ids: Vec<i64> = s
            .prompt_ids
            .iter()
            .chain(&s.completion_ids)
            .copied()
            .collect();
        let one = tch::no_grad(|| {
            model.forward(&Tensor::from_slice(&ids).reshape([1, -1]), None, &NoHooks)
        });
        let logp = one.log_softmax(-1, Kind::Float);
        for (j, &tok) in s.completion_ids.iter().enumerate() {
            let pos = (s.prompt_ids.len() + j - 1) as i64;
            let want = logp.double_value(&[0, pos, tok]);
            let got = lp.double_value(&[row as i64, j as i64]);
            assert!(
                (want - got).abs() < 1e-5,
                "row {row} token {j}: {got} vs {want}"
            );
            let p = logp.get(0).get(pos);
            let want_ent = -(p.exp() * &p).sum(Kind::Float).double_value(&[]);
            assert!(
                (ent.as_ref().unwrap().double_value(&[row as i64, j as i64]) - want_ent).abs()
                    < 1e-5
            );
        }
    }
    let bad = Sample {
        mu: vec![-1.0],
        ..a.clone()
    };
    assert!(PackedBatch::pack(&[&bad], &[0.0], tch::Device::Cpu).is_err());
    let empty_prompt = Sample {
        prompt_ids: vec![],
        ..a.clone()
    };
    assert!(PackedBatch::pack(&[&empty_prompt], &[0.0], tch::Device::Cpu).is_err());
}

/// Micro-batches sum to the mini-batch loss: the gradient norm and loss are the same whatever the
/// micro-batch size, for every aggregation and correction.
#[test]
fn gradient_accumulation_is_exact() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 2);
    let data = groups(&model, 3, 0.2);
    for agg in [
        Aggregation::TokenMean,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSum,
    ] {
        for kind in [
            CorrectionKind::Bypass,
            CorrectionKind::Tis,
            CorrectionKind::Mis,
        ] {
            let run = |micro: usize| {
                let mut s = LearnerSettings::default();
                s.loss.aggregation = agg;
                s.correction.kind = kind;
                s.micro_batch_size = micro;
                s.max_grad_norm = 0.0;
                let mut l = PgLearner::new(s, model.deep_clone(), None).unwrap();
                l.train_step(&data).unwrap()
            };
            let (a, b) = (run(3), run(16));
            for k in [
                "grad/norm",
                "loss/pg",
                "loss/total",
                "ratio/mean",
                "mismatch/k3",
                "policy/entropy",
            ] {
                let (x, y) = (a[k], b[k]);
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1e-3),
                    "{agg:?} {kind:?} {k}: micro 3 {x} vs micro 16 {y}"
                );
            }
        }
    }
}

/// Acceptance 2 on a real forward: lp == mu gives ratios exactly 1, zero mismatch, and the plain PG loss.
#[test]
fn learner_with_exact_mu_reports_unit_ratios_and_zero_mismatch() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 4);
    let mut data = groups(&model, 5, 0.0);
    let mut s = LearnerSettings::default();
    s.micro_batch_size = 16;
    s.correction.level = RatioLevel::Sequence;
    let learner = PgLearner::new(s.clone(), model.deep_clone(), None).unwrap();
    let samples: Vec<&Sample> = data.iter().flat_map(|g| &g.samples).collect();
    let lp =
        Vec::<f32>::try_from(learner.log_probs(&samples, &NoHooks).unwrap().reshape([-1])).unwrap();
    let t = lp.len() / samples.len();
    for (i, x) in data
        .iter_mut()
        .flat_map(|g| g.samples.iter_mut())
        .enumerate()
    {
        let n = x.mu.len();
        x.mu = lp[i * t..i * t + n].to_vec();
    }
    for level in [RatioLevel::Token, RatioLevel::Sequence] {
        let mut s = s.clone();
        s.correction.level = level;
        let mut learner = PgLearner::new(s, model.deep_clone(), None).unwrap();
        let m = learner.train_step(&data).unwrap();
        for q in ["min", "max", "mean", "q01", "q50", "q999"] {
            assert_eq!(m[&format!("ratio/{q}")], 1.0, "{level:?} ratio/{q}");
            assert_eq!(m[&format!("ratio_seq/{q}")], 1.0, "{level:?} ratio_seq/{q}");
        }
        assert_eq!(m["ratio/std"], 0.0);
        assert_eq!(m["ess"], 1.0);
        for k in ["k1", "k2", "k3", "logp_abs_diff_mean", "logp_abs_diff_max"] {
            assert_eq!(m[&format!("mismatch/{k}")], 0.0, "mismatch/{k}");
        }
        assert_eq!(
            m["clip/high_frac"] + m["clip/low_frac"] + m["clip/dual_frac"],
            0.0
        );
        // Plain PG loss: token-mean of -A.
        let mut num = 0.0;
        let mut den = 0.0;
        for g in &data {
            let adv = group_advantages(
                &g.samples.iter().map(|x| x.reward).collect::<Vec<_>>(),
                AdvantageKind::Grpo,
            );
            for (x, a) in g.samples.iter().zip(adv) {
                num += -a * x.num_loss_tokens() as f64;
                den += x.num_loss_tokens() as f64;
            }
        }
        assert!(
            (m["loss/pg"] - num / den).abs() < 1e-6,
            "loss/pg {} vs {}",
            m["loss/pg"],
            num / den
        );
    }
}

/// PPO epochs and mini-batches: the right number of optimizer steps, lp_old-based mismatch, and a KL
/// penalty that is 0 while the policy equals the reference and grows once it moves.
#[test]
fn several_optimizer_steps_and_kl_reference() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 6);
    let data = groups(&model, 7, 0.0);
    let mut s = LearnerSettings::default();
    s.mini_batches = 2;
    s.epochs = 3;
    s.micro_batch_size = 4;
    s.loss.kl_coef = 0.1;
    s.optimizer.lr = 1e-2;
    let reference: Box<dyn TrainablePolicy> = Box::new(model.deep_clone());
    let mut learner = PgLearner::new(s, model, Some(reference)).unwrap();
    let m1 = learner.train_step(&data).unwrap();
    assert_eq!(learner.optimizer().steps_taken(), 6);
    assert!(
        m1["loss/kl"] > 0.0,
        "the policy moved during the step's later mini-batches"
    );
    assert!(
        m1["mismatch/k3"] < 1e-6,
        "mu came from the pre-update weights (lp_old)"
    );
    let m2 = learner.train_step(&data).unwrap();
    assert!(m2["loss/kl"] > m1["loss/kl"]);
    assert!(
        m2["mismatch/k3"] > 1e-6,
        "after updates the pre-update weights of step 2 differ from the sampler"
    );
    assert_eq!(learner.step(), 2);
    let names = [
        "ratio/q999",
        "ratio_seq/q50",
        "ratio/frac_above_10",
        "ratio/frac_below_0.1",
        "clip/dual_frac",
        "mask/frac",
        "ess",
        "mismatch/ppl_ratio",
        "policy/entropy",
        "grad/norm",
        "loss/total",
        "reward/mean",
        "len/max",
    ];
    for n in names {
        assert!(m2.contains_key(n), "missing metric {n}");
    }
}
