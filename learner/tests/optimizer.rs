//! The AdamW against a direct f64 re-computation, the schedule, and acceptance 6: a resumed run is
//! bit-identical to an uninterrupted one.
// Brute-force references index by position on purpose; settings are built field by field for readability.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::{
    AdamW, AdamWConfig, CorrectionKind, Group, LearnerSettings, LrSchedule, ParamGroup, PgLearner,
    Schedule,
};
use common::{bit_equal, Rng, ToyLm};
use tch::{Device, Kind, Tensor};

/// PyTorch AdamW written out in f64 for one scalar parameter sequence.
fn reference_adamw(p0: f64, grads: &[f64], lrs: &[f64], wd: f64, cfg: AdamWConfig) -> f64 {
    let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
    for (t, (&g, &lr)) in grads.iter().zip(lrs).enumerate() {
        let t = (t + 1) as i32;
        p *= 1.0 - lr * wd;
        m = cfg.beta1 * m + (1.0 - cfg.beta1) * g;
        v = cfg.beta2 * v + (1.0 - cfg.beta2) * g * g;
        let (bc1, bc2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
        p -= lr / bc1 * m / (v.sqrt() / bc2.sqrt() + cfg.eps);
    }
    p
}

#[test]
fn adamw_matches_reference_with_groups_and_schedule() {
    common::init();
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
    };
    let sched = Schedule {
        warmup_steps: 2,
        kind: LrSchedule::Cosine,
        total_steps: Some(6),
        min_lr_ratio: 0.1,
    };
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
    let s = Tensor::from_slice(&[0.3f32]).set_requires_grad(true);
    let mut opt = AdamW::new(
        vec![
            ParamGroup {
                name: "model".into(),
                params: vec![("w".into(), w.shallow_clone())],
                lr: 0.1,
                weight_decay: 0.2,
            },
            ParamGroup {
                name: "alp".into(),
                params: vec![("s".into(), s.shallow_clone())],
                lr: 0.05,
                weight_decay: 0.0,
            },
        ],
        cfg,
        sched,
    );
    let coeffs = [
        [1.0, -2.0, 0.5],
        [0.1, 0.3, -0.7],
        [2.0, 2.0, 2.0],
        [-1.0, 0.0, 0.4],
        [0.5, 0.5, -0.5],
    ];
    for c in coeffs {
        opt.zero_grad();
        let loss = (&w * Tensor::from_slice(&c.map(|x| x as f32))).sum(Kind::Float)
            + (&s * &s).sum(Kind::Float) * 1.5;
        loss.backward();
        opt.step();
    }
    assert_eq!(opt.steps_taken(), 5);
    let factors: Vec<f64> = (0..5).map(|t| sched.factor(t)).collect();
    assert_eq!(&factors[..2], &[0.5, 1.0], "warmup starts at 1/warmup");
    assert!(
        (factors[4] - (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 2.0 / 4.0).cos()))).abs()
            < 1e-12
    );
    let wv = Vec::<f32>::try_from(&w.detach()).unwrap();
    for (i, p0) in [0.5, -1.0, 2.0].iter().enumerate() {
        let grads: Vec<f64> = coeffs.iter().map(|c| c[i]).collect();
        let lrs: Vec<f64> = factors.iter().map(|f| 0.1 * f).collect();
        let want = reference_adamw(*p0, &grads, &lrs, 0.2, cfg);
        assert!(
            (wv[i] as f64 - want).abs() < 1e-5,
            "w[{i}] {} vs {want}",
            wv[i]
        );
    }
    // The quadratic's gradient depends on the trajectory: replay it in f64.
    let (mut p, mut m, mut v) = (0.3f64, 0.0, 0.0);
    for (t, f) in factors.iter().enumerate() {
        let g = 3.0 * p;
        let lr = 0.05 * f;
        m = 0.9 * m + 0.1 * g;
        v = 0.95 * v + 0.05 * g * g;
        let t = (t + 1) as i32;
        p -= lr / (1.0 - 0.9f64.powi(t)) * m / (v.sqrt() / (1.0 - 0.95f64.powi(t)).sqrt() + 1e-8);
    }
    assert!(
        (s.double_value(&[0]) - p).abs() < 1e-5,
        "s {} vs {p}",
        s.double_value(&[0])
    );
    assert_eq!(opt.lr_at("alp", 4), Some(0.05 * factors[4]));
    let lin = Schedule {
        warmup_steps: 0,
        kind: LrSchedule::Linear,
        total_steps: Some(10),
        min_lr_ratio: 0.0,
    };
    assert_eq!(lin.factor(5), 0.5);
    assert_eq!(lin.factor(50), 0.0);
}

#[test]
fn bf16_parameters_get_f32_moments_and_master_weights() {
    common::init();
    let p = Tensor::from_slice(&[1.0f32, 2.0])
        .to_kind(Kind::BFloat16)
        .set_requires_grad(true);
    let mut opt = AdamW::new(
        vec![ParamGroup {
            name: "model".into(),
            params: vec![("p".into(), p.shallow_clone())],
            lr: 1e-4,
            weight_decay: 0.0,
        }],
        AdamWConfig::default(),
        Schedule::constant(),
    );
    for _ in 0..3 {
        opt.zero_grad();
        (&p.to_kind(Kind::Float) * 2.0).sum(Kind::Float).backward();
        opt.step();
    }
    let st = opt.state_tensors();
    let kind_of = |n: &str| st.iter().find(|(k, _)| k == n).map(|(_, t)| t.kind());
    assert_eq!(kind_of("model/p/exp_avg"), Some(Kind::Float));
    assert_eq!(kind_of("model/p/master"), Some(Kind::Float));
    // Three steps of 1e-4 are below bf16's resolution at 1.0 but the master copy keeps them.
    let master = st
        .iter()
        .find(|(k, _)| k == "model/p/master")
        .unwrap()
        .1
        .double_value(&[0]);
    assert!((master - (1.0 - 3e-4)).abs() < 1e-6, "master {master}");
    assert_eq!(p.kind(), Kind::BFloat16);
}

#[test]
fn optimizer_save_load_round_trips_and_checks_shapes() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let p = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
    let make = |p: &Tensor| {
        AdamW::new(
            vec![ParamGroup {
                name: "model".into(),
                params: vec![("p".into(), p.shallow_clone())],
                lr: 0.1,
                weight_decay: 0.01,
            }],
            AdamWConfig::default(),
            Schedule::constant(),
        )
    };
    let mut a = make(&p);
    (&p * &p).sum(Kind::Float).backward();
    a.step();
    let path = dir.path().join("opt.safetensors");
    a.save(&path).unwrap();
    let mut b = make(&p);
    b.load(&path).unwrap();
    assert_eq!(b.steps_taken(), 1);
    for ((n1, t1), (n2, t2)) in a.state_tensors().iter().zip(b.state_tensors().iter()) {
        assert_eq!(n1, n2);
        assert!(bit_equal(t1, t2), "{n1} differs after load");
    }
    let q = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut c = make(&q);
    assert!(
        c.load(&path).is_err(),
        "a state for another shape must be refused"
    );
}

fn fixed_batches(model: &ToyLm, n: usize) -> Vec<Vec<Group>> {
    let mut rng = Rng::new(21);
    (0..n)
        .map(|_| {
            let prompts = common::random_prompts(4, 2, 8, &mut rng);
            common::sample_groups(model, &prompts, 4, 4, 0.2, &mut rng, |c| {
                f64::from(c.contains(&5))
            })
        })
        .collect()
}

fn resumable_settings() -> LearnerSettings {
    let mut s = LearnerSettings::default();
    s.correction.kind = CorrectionKind::Alp;
    s.micro_batch_size = 4;
    s.mini_batches = 2;
    s.epochs = 2;
    s.optimizer.lr = 1e-2;
    s.optimizer.warmup_steps = 3;
    s.optimizer.schedule = LrSchedule::Linear;
    s.optimizer.total_steps = Some(40);
    s.alp.sigma0 = 0.05;
    s
}

/// Acceptance 6: two steps after a save/load equal two steps without one, bit for bit (ALP included:
/// the step counter keys the noise, `log_sigma` and both optimizer groups are restored).
#[test]
fn learner_resume_is_bit_identical() {
    common::init();
    let init = ToyLm::new(8, 16, 2, 9);
    let batches = fixed_batches(&init, 4);
    let strip = |mut m: alp_learner::Metrics| {
        // Wall time and memory are the machine's, not the learner's state.
        m.retain(|k, _| !alp_learner::metric_names::is_timing(k));
        m
    };

    let mut straight = PgLearner::new(resumable_settings(), init.deep_clone(), None).unwrap();
    let mut straight_metrics = Vec::new();
    for b in &batches {
        straight_metrics.push(strip(straight.train_step(b).unwrap()));
    }

    let dir = tempfile::tempdir().unwrap();
    let mut first = PgLearner::new(resumable_settings(), init.deep_clone(), None).unwrap();
    for b in &batches[..2] {
        first.train_step(b).unwrap();
    }
    first.save_state(dir.path()).unwrap();
    let weights = first.policy().deep_clone(); // stands in for the HF checkpoint
    drop(first);
    let mut resumed = PgLearner::new(resumable_settings(), weights, None).unwrap();
    resumed.load_state(dir.path()).unwrap();
    assert_eq!(resumed.step(), 2);
    let mut resumed_metrics = Vec::new();
    for b in &batches[2..] {
        resumed_metrics.push(strip(resumed.train_step(b).unwrap()));
    }

    for (a, b) in straight
        .policy()
        .params()
        .iter()
        .zip(resumed.policy().params())
    {
        assert!(bit_equal(a, b), "model weights differ after resume");
    }
    assert!(bit_equal(
        straight.alp().unwrap().log_sigma(),
        resumed.alp().unwrap().log_sigma()
    ));
    for ((n, a), (_, b)) in straight
        .optimizer()
        .state_tensors()
        .iter()
        .zip(resumed.optimizer().state_tensors().iter())
    {
        assert!(bit_equal(a, b), "optimizer state {n} differs after resume");
    }
    let bits = |ms: &[alp_learner::Metrics]| -> Vec<Vec<(String, u64)>> {
        ms.iter()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect())
            .collect()
    };
    assert_eq!(
        bits(&straight_metrics[2..]),
        bits(&resumed_metrics),
        "metrics differ after resume"
    );
}
