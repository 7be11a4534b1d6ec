//! Acceptance 3: ALP noise placement, reproducibility, and learning of `log_sigma`.
// Brute-force references index by position on purpose; settings are built field by field for readability.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use std::cell::RefCell;

use alp_learner::noise::{standard_normal, NoiseKey};
use alp_learner::{
    AlpPerturbation, AlpSettings, AlpTarget, CorrectionKind, Group, LearnerSettings, PgLearner,
    TrainablePolicy,
};
use alp_policy::{ForwardHooks, NoHooks};
use common::{bit_equal, ToyLm};
use tch::{Device, Kind, Tensor};

/// Wraps hooks and records `output - input` of every `layer_input` call.
struct Recorder<'a> {
    inner: &'a dyn ForwardHooks,
    deltas: RefCell<Vec<(usize, Tensor)>>,
}

impl ForwardHooks for Recorder<'_> {
    fn layer_input(&self, layer: usize, h: Tensor) -> Tensor {
        let out = self.inner.layer_input(layer, h.shallow_clone());
        self.deltas.borrow_mut().push((layer, (&out - &h).detach()));
        out
    }
    fn logits(&self, logits: Tensor) -> Tensor {
        self.inner.logits(logits)
    }
}

fn ids() -> Tensor {
    Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6, 7, 0, 3, 3, 2, 1]).reshape([2, 6])
}

#[test]
fn noise_only_inside_the_layer_range_and_exactly_sigma_eps() {
    common::init();
    let model = ToyLm::new(8, 16, 4, 1);
    let settings = AlpSettings {
        sigma0: 0.05,
        layer_start: 1,
        layer_end: Some(3),
        ..Default::default()
    };
    let alp = AlpPerturbation::new(&settings, 4, 42, Device::Cpu).unwrap();
    assert_eq!(alp.layers(), 1..3);
    let hooks = alp.hooks(5, 2);
    let rec = Recorder {
        inner: &hooks,
        deltas: RefCell::new(Vec::new()),
    };
    let _ = tch::no_grad(|| model.forward(&ids(), None, &rec));
    let deltas = rec.deltas.into_inner();
    assert_eq!(deltas.len(), 4);
    for (layer, d) in &deltas {
        if (1..3).contains(layer) {
            // Exactly sigma0 * eps with eps from the documented key.
            let eps = standard_normal(&d.size(), alp.noise_key(5, 2, *layer as u64), Device::Cpu);
            let want = eps * 0.05f64.ln().exp();
            let err = (d - &want).abs().max().double_value(&[]);
            assert!(
                err < 1e-6,
                "layer {layer}: delta differs from sigma * eps by {err}"
            );
            assert!(d.abs().max().double_value(&[]) > 0.0);
        } else {
            assert_eq!(
                d.abs().max().double_value(&[]),
                0.0,
                "layer {layer} is outside the range but was perturbed"
            );
        }
    }
    // Logits are untouched by the layer variant; the logits variant touches only the logits.
    let logits = Tensor::ones([2, 6, 8], (Kind::Float, Device::Cpu));
    assert!(bit_equal(&hooks.logits(logits.shallow_clone()), &logits));
    let lg = AlpPerturbation::new(
        &AlpSettings {
            target: AlpTarget::Logits,
            ..Default::default()
        },
        4,
        42,
        Device::Cpu,
    )
    .unwrap();
    let lh = lg.hooks(0, 0);
    let h = Tensor::ones([2, 6, 16], (Kind::Float, Device::Cpu));
    for l in 0..4 {
        assert!(bit_equal(&lh.layer_input(l, h.shallow_clone()), &h));
    }
    assert!(!bit_equal(&lh.logits(logits.shallow_clone()), &logits));
    assert_eq!(lg.sigmas().len(), 1);
}

#[test]
fn noise_is_reproducible_per_key_and_fresh_across_steps() {
    common::init();
    let model = ToyLm::new(8, 16, 3, 2);
    let alp = AlpPerturbation::new(
        &AlpSettings {
            sigma0: 0.1,
            ..Default::default()
        },
        3,
        7,
        Device::Cpu,
    )
    .unwrap();
    let plain = tch::no_grad(|| model.forward(&ids(), None, &NoHooks));
    let run = |step, fwd| tch::no_grad(|| model.forward(&ids(), None, &alp.hooks(step, fwd)));
    let a = run(3, 0);
    assert!(
        bit_equal(&a, &run(3, 0)),
        "same key must give bit-identical noise"
    );
    assert!(
        !bit_equal(&a, &run(4, 0)),
        "another step must give other noise"
    );
    assert!(
        !bit_equal(&a, &run(3, 1)),
        "another micro-batch forward must give other noise"
    );
    assert!(!bit_equal(&a, &plain));
    let other_seed = AlpPerturbation::new(
        &AlpSettings {
            sigma0: 0.1,
            ..Default::default()
        },
        3,
        8,
        Device::Cpu,
    )
    .unwrap();
    let b = tch::no_grad(|| model.forward(&ids(), None, &other_seed.hooks(3, 0)));
    assert!(!bit_equal(&a, &b), "another seed must give other noise");
    // Reproducible from another thread too: no global RNG state is involved.
    let key = NoiseKey {
        seed: 1,
        step: 2,
        forward: 3,
        slot: 4,
    };
    let here = standard_normal(&[64, 32], key, Device::Cpu);
    let there = std::thread::spawn(move || standard_normal(&[64, 32], key, Device::Cpu))
        .join()
        .unwrap();
    assert!(bit_equal(&here, &there));
}

#[test]
fn noise_is_standard_normal_and_independent() {
    common::init();
    let n = 1 << 18;
    let a = standard_normal(
        &[n],
        NoiseKey {
            seed: 0,
            step: 0,
            forward: 0,
            slot: 0,
        },
        Device::Cpu,
    )
    .to_kind(Kind::Double);
    let b = standard_normal(
        &[n],
        NoiseKey {
            seed: 0,
            step: 0,
            forward: 0,
            slot: 1,
        },
        Device::Cpu,
    )
    .to_kind(Kind::Double);
    let mean = a.mean(Kind::Double).double_value(&[]);
    let var = a.var(false).double_value(&[]);
    let kurt = a.pow_tensor_scalar(4).mean(Kind::Double).double_value(&[]);
    let corr = (&a * &b).mean(Kind::Double).double_value(&[]);
    let lag = (a.narrow(0, 0, n - 1) * a.narrow(0, 1, n - 1))
        .mean(Kind::Double)
        .double_value(&[]);
    let tol = 5.0 / (n as f64).sqrt();
    assert!(mean.abs() < tol, "mean {mean}");
    assert!((var - 1.0).abs() < 3.0 * tol, "var {var}");
    assert!((kurt - 3.0).abs() < 0.05, "fourth moment {kurt}");
    assert!(corr.abs() < tol, "correlation across slots {corr}");
    assert!(lag.abs() < tol, "lag-1 autocorrelation {lag}");
    let frac_beyond_2 = a
        .abs()
        .gt(2.0)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(
        (frac_beyond_2 - 0.0455).abs() < 0.003,
        "P(|z| > 2) = {frac_beyond_2}"
    );
}

fn batch(model: &ToyLm, seed: u64) -> Vec<Group> {
    let mut rng = common::Rng::new(seed);
    let prompts = common::random_prompts(4, 3, 8, &mut rng);
    common::sample_groups(model, &prompts, 4, 5, 0.0, &mut rng, |c| {
        f64::from(c.contains(&2))
    })
}

fn alp_settings() -> LearnerSettings {
    let mut s = LearnerSettings::default();
    s.correction.kind = CorrectionKind::Alp;
    s.alp.sigma0 = 0.3;
    s.alp.perturb_lr = 1e-2;
    s.micro_batch_size = 8;
    s.optimizer.lr = 0.0;
    s.optimizer.weight_decay = 0.5;
    s.max_grad_norm = 0.0;
    s
}

/// With the model frozen (lr 0, heavy weight decay on the model group that lr 0 neutralises), one step
/// moves every `log_sigma` by exactly Adam's first step `perturb_lr * g / (|g| + eps)`: a non-zero
/// gradient reached it, its own learning rate applied, and no decay term.
#[test]
fn log_sigma_learns_under_its_own_lr_without_weight_decay() {
    common::init();
    let model = ToyLm::new(8, 16, 3, 3);
    let groups = batch(&model, 1);
    let before: Vec<Tensor> = model.params().iter().map(|p| p.detach().copy()).collect();
    let mut learner = PgLearner::new(alp_settings(), model, None).unwrap();
    let log0 = learner.alp().unwrap().log_sigma().detach().copy();
    learner.train_step(&groups).unwrap();
    let log1 = learner.alp().unwrap().log_sigma().detach().copy();
    let step = Vec::<f64>::try_from((&log1 - &log0).to_kind(Kind::Double)).unwrap();
    for (l, d) in step.iter().enumerate() {
        assert!(
            (d.abs() - 1e-2).abs() < 2e-6,
            "layer {l}: log_sigma moved by {d}, expected +-perturb_lr"
        );
    }
    for (p, b) in learner.policy().params().iter().zip(&before) {
        assert!(bit_equal(p, b), "model weights changed with lr 0");
    }
    // A zero perturb_lr freezes it while the model group (lr > 0) moves.
    let mut s = alp_settings();
    s.alp.perturb_lr = 0.0;
    s.optimizer.lr = 1e-3;
    s.optimizer.weight_decay = 0.0;
    let model = ToyLm::new(8, 16, 3, 3);
    let mut learner = PgLearner::new(s, model, None).unwrap();
    learner.train_step(&groups).unwrap();
    assert!(bit_equal(
        &learner.alp().unwrap().log_sigma().detach(),
        &log0
    ));
    assert!(!bit_equal(
        &learner.policy().params()[0].detach(),
        &before[0]
    ));
}

/// The noise lives only in the training forward: with `mu` equal to the plain model's log-probs, the
/// mismatch metrics (unperturbed forward) are exactly 0 while the loss ratio (perturbed forward) is
/// not 1; and the plain forward (what generation and `lp_old` use) is unchanged by a step with lr 0.
#[test]
fn noise_only_in_the_training_forward() {
    common::init();
    let model = ToyLm::new(8, 16, 3, 4);
    let mut groups = batch(&model, 2);
    let mut s = alp_settings();
    s.micro_batch_size = 16;
    s.alp.perturb_lr = 0.0;
    let mut learner = PgLearner::new(s, model, None).unwrap();
    // mu := the learner's own unperturbed log-probs, packed exactly as the training step packs them.
    let samples: Vec<&alp_learner::Sample> = groups.iter().flat_map(|g| &g.samples).collect();
    let lp = learner.log_probs(&samples, &NoHooks).unwrap();
    let lp = Vec::<f32>::try_from(lp.reshape([-1])).unwrap();
    let t = lp.len() / samples.len();
    for (i, s) in groups
        .iter_mut()
        .flat_map(|g| g.samples.iter_mut())
        .enumerate()
    {
        let n = s.mu.len();
        s.mu = lp[i * t..i * t + n].to_vec();
    }
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).reshape([1, 4]);
    let plain_before = tch::no_grad(|| learner.policy().forward(&ids, None, &NoHooks));
    let m = learner.train_step(&groups).unwrap();
    for k in ["k1", "k2", "k3", "logp_abs_diff_mean", "logp_abs_diff_max"] {
        assert_eq!(
            m[&format!("mismatch/{k}")],
            0.0,
            "mismatch/{k} must use the unperturbed forward"
        );
    }
    assert_eq!(m["mismatch/ppl_ratio"], 1.0);
    assert!(
        m["ratio/std"] > 1e-3,
        "the training forward must be perturbed (ratio/std {})",
        m["ratio/std"]
    );
    let plain_after = tch::no_grad(|| learner.policy().forward(&ids, None, &NoHooks));
    assert!(bit_equal(&plain_before, &plain_after));
    assert!((m["alp/sigma_mean"] - 0.3).abs() < 1e-6);
    assert!(m.contains_key("alp/sigma_l0") && m.contains_key("alp/sigma_l2"));
}

/// `mismatch_every` spaces out the extra unperturbed forward under ALP; skipped steps report NaN.
#[test]
fn mismatch_forward_can_be_spaced_out() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 8);
    let data = batch(&model, 3);
    let mut s = alp_settings();
    s.mismatch_every = 2;
    let mut learner = PgLearner::new(s, model, None).unwrap();
    let m0 = learner.train_step(&data).unwrap();
    let m1 = learner.train_step(&data).unwrap();
    let m2 = learner.train_step(&data).unwrap();
    assert!(m0["mismatch/k3"].is_finite() && m2["mismatch/k3"].is_finite());
    assert!(m1["mismatch/k3"].is_nan() && m1["mismatch/ppl_ratio"].is_nan());
}

/// The fused CPU generator is the tensor-op generator: bit-identical integer hash, and values within a
/// few f32 ulps (Giles' erfinv against libtorch's), over 2^20 elements including the far tails.
#[test]
fn cpu_noise_equals_the_tensor_op_noise() {
    use alp_learner::noise::{hash32, hash_bits, standard_normal_tensor_ops};
    common::init();
    let key = NoiseKey {
        seed: 7,
        step: 3,
        forward: 1,
        slot: 2,
    };
    let n = 1i64 << 20;
    let fused = standard_normal(&[n], key, Device::Cpu);
    let ops = standard_normal_tensor_ops(&[n], key, Device::Cpu);
    let rel = ((&fused - &ops).abs() / (ops.abs() + 1.0))
        .max()
        .double_value(&[]);
    assert!(
        rel < 2e-6,
        "fused vs tensor-op noise: relative difference {rel:e}"
    );
    assert!(
        ops.abs().max().double_value(&[]) > 4.5,
        "the tails were exercised"
    );
    // The integer hash, element by element, against the int64 tensor ops.
    let bits = Vec::<i64>::try_from(hash_bits(4096, key, Device::Cpu)).unwrap();
    let (k1, k2) = key.round_keys();
    for (i, &b) in bits.iter().enumerate() {
        assert_eq!(
            hash32(i as u32, k1 as u32, k2 as u32) as i64,
            b,
            "element {i}"
        );
    }
}
