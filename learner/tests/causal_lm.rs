//! The learner on the real decoder (`alp_policy::CausalLM`), tiny random Qwen2 / Qwen3 / Llama models.
mod common;

use std::cell::RefCell;

use alp_learner::{
    AlpPerturbation, AlpSettings, CorrectionKind, LearnerSettings, PgLearner, RatioLevel,
    TrainablePolicy,
};
use alp_policy::{CausalLM, ForwardHooks, NoHooks};
use alp_test_support::tiny_model::TinyModel;
use common::{bit_equal, Rng};
use tch::{Device, Kind, Tensor};

fn tiny(arch: &str, kind: Kind, seed: u64) -> CausalLM {
    TinyModel::new(arch)
        .with("num_hidden_layers", 3)
        .with("initializer_range", 0.1)
        .random_as(kind, seed)
}

/// The head-on-selected-rows path equals the full forward followed by the selection, with padding.
#[test]
fn selected_logits_equal_full_forward() {
    common::init();
    for arch in ["qwen2", "qwen3", "llama"] {
        let model = tiny(arch, Kind::Float, 1);
        let ids = Tensor::from_slice(&[5i64, 9, 13, 2, 7, 3, 8, 0, 0, 0]).reshape([2, 5]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0, 0, 0]).reshape([2, 5]);
        let rows = Tensor::from_slice(&[1i64, 2, 3, 5, 6, 5]);
        let (a, b) = tch::no_grad(|| {
            let full = TrainablePolicy::forward(&model, &ids, Some(&mask), &NoHooks);
            (
                full.reshape([10, 64]).index_select(0, &rows),
                model.selected_logits(&ids, Some(&mask), &rows, &NoHooks),
            )
        });
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{arch}: {diff}");
        assert_eq!(TrainablePolicy::num_layers(&model), 3);
        assert!(model
            .trainable_parameters()
            .iter()
            .any(|(n, _)| n == "model.layers.0.mlp.up_proj.weight"));
    }
}

struct Recorder<'a> {
    inner: &'a dyn ForwardHooks,
    deltas: RefCell<Vec<(usize, f64)>>,
}

impl ForwardHooks for Recorder<'_> {
    fn layer_input(&self, layer: usize, h: Tensor) -> Tensor {
        let out = self.inner.layer_input(layer, h.shallow_clone());
        let d = (&out - &h).abs().max().double_value(&[]);
        self.deltas.borrow_mut().push((layer, d));
        out
    }
}

/// The real decoder calls the ALP hook once per layer; only layers in the range change.
#[test]
fn alp_hooks_on_the_real_decoder() {
    common::init();
    let model = tiny("qwen2", Kind::Float, 2);
    let alp = AlpPerturbation::new(
        &AlpSettings {
            sigma0: 0.1,
            layer_start: 1,
            layer_end: Some(2),
            ..Default::default()
        },
        3,
        0,
        Device::Cpu,
    )
    .unwrap();
    let hooks = alp.hooks(0, 0);
    let rec = Recorder {
        inner: &hooks,
        deltas: RefCell::new(Vec::new()),
    };
    let ids = Tensor::from_slice(&[5i64, 9, 13, 2]).reshape([1, 4]);
    let noisy = tch::no_grad(|| TrainablePolicy::forward(&model, &ids, None, &rec));
    let deltas = rec.deltas.into_inner();
    assert_eq!(
        deltas.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(deltas[0].1, 0.0);
    assert!(deltas[1].1 > 0.0);
    assert_eq!(deltas[2].1, 0.0);
    let again = tch::no_grad(|| TrainablePolicy::forward(&model, &ids, None, &alp.hooks(0, 0)));
    assert!(bit_equal(&noisy, &again));
    let plain = tch::no_grad(|| TrainablePolicy::forward(&model, &ids, None, &NoHooks));
    assert!(!bit_equal(&noisy, &plain));
}

/// RL on the real decoder: samples come from a bf16 inference copy refreshed from the f32 learner each
/// step (the CPU-sized stand-in for vLLM, design section 8), so `mu` and the mismatch are real; the
/// reward (token 7 appears) rises for bypass and for Seq-ALP.
#[test]
fn learner_raises_reward_on_a_real_decoder() {
    common::init();
    for (kind, level) in [
        (CorrectionKind::Bypass, RatioLevel::Token),
        (CorrectionKind::Alp, RatioLevel::Sequence),
    ] {
        let mut s = LearnerSettings::default();
        s.correction.kind = kind;
        s.correction.level = level;
        s.micro_batch_size = 32;
        s.optimizer.lr = 3e-3;
        s.optimizer.weight_decay = 0.0;
        s.loss.dual_clip = Some(3.0);
        s.alp.sigma0 = 0.02;
        let mut learner = PgLearner::new(s, tiny("qwen2", Kind::Float, 3), None).unwrap();
        let inference = tiny("qwen2", Kind::BFloat16, 0);
        let mut rng = Rng::new(4);
        let mut rewards = Vec::new();
        let mut mismatch = Vec::new();
        for _ in 0..25 {
            inference.copy_weights_from(learner.policy());
            let prompts = common::random_prompts(4, 3, 64, &mut rng);
            let groups = common::sample_groups(&inference, &prompts, 8, 6, 0.0, &mut rng, |c| {
                f64::from(c.contains(&7))
            });
            let m = learner.train_step(&groups).unwrap();
            rewards.push(m["reward/mean"]);
            mismatch.push(m["mismatch/k3"]);
            if kind == CorrectionKind::Alp {
                assert!(m["alp/sigma_l0"] > 0.0 && m.contains_key("alp/sigma_l2"));
            }
        }
        let first = rewards[..5].iter().sum::<f64>() / 5.0;
        let end = rewards[20..].iter().sum::<f64>() / 5.0;
        assert!(
            end > first + 0.2,
            "{kind:?}: reward {first:.3} -> {end:.3} ({rewards:?})"
        );
        assert!(
            mismatch.iter().all(|&k| k > 0.0),
            "bf16 sampling must show a mismatch: {mismatch:?}"
        );
    }
}

/// bf16 weights train through f32 master copies; the step changes the bf16 weights.
#[test]
fn bf16_policy_trains() {
    common::init();
    let model = tiny("llama", Kind::BFloat16, 5);
    let before = model.named_parameters()[0].1.detach().copy();
    let mut s = LearnerSettings::default();
    s.optimizer.lr = 1e-2;
    s.correction.kind = CorrectionKind::Alp;
    let mut learner = PgLearner::new(s, model, None).unwrap();
    let mut rng = Rng::new(6);
    let prompts = common::random_prompts(2, 3, 64, &mut rng);
    let groups = common::sample_groups(learner.policy(), &prompts, 4, 4, 0.0, &mut rng, |c| {
        c.iter().filter(|&&t| t % 2 == 0).count() as f64
    });
    let m = learner.train_step(&groups).unwrap();
    assert!(m["loss/total"].is_finite() && m["grad/norm"] > 0.0, "{m:?}");
    let after = &learner.policy().named_parameters()[0].1;
    assert_eq!(after.kind(), Kind::BFloat16);
    assert!(!bit_equal(&before, &after.detach()));
}

/// What ALP did before the perturbed residual was kept in f32: the sum rounded back to the input dtype.
struct RoundedBack<'a>(&'a dyn ForwardHooks);

impl ForwardHooks for RoundedBack<'_> {
    fn layer_input(&self, layer: usize, h: Tensor) -> Tensor {
        let kind = h.kind();
        self.0.layer_input(layer, h).to_kind(kind)
    }
}

/// Log-probs `[rows, vocab]` (f64) of every position of `ids` under `model` with `hooks`.
fn all_log_probs(model: &CausalLM, ids: &Tensor, hooks: &dyn ForwardHooks) -> Tensor {
    tch::no_grad(|| {
        TrainablePolicy::forward(model, ids, None, hooks)
            .to_kind(Kind::Double)
            .log_softmax(-1, Kind::Double)
            .reshape([-1])
    })
}

fn rms(t: &Tensor) -> f64 {
    t.square().mean(Kind::Double).sqrt().double_value(&[])
}

/// ALP's perturbation reaches the forward in every training dtype: at sigma far below half an ulp of
/// the bf16 hidden states, the bf16 model's perturbed log-probs move from its unperturbed ones by what
/// the same noise does to an f32 model with the same (bf16-rounded) weights, the independent
/// reference; rounding the perturbed residual back to bf16 (the old behaviour) erases most of it.
#[test]
fn alp_perturbation_reaches_a_bf16_forward() {
    common::init();
    for arch in ["qwen2", "llama"] {
        let bf16 = tiny(arch, Kind::BFloat16, 8);
        let f32_ref = tiny(arch, Kind::Float, 8);
        f32_ref.copy_weights_from(&bf16);
        let mut rng = Rng::new(3);
        let ids: Vec<i64> = (0..64).map(|_| rng.below(64) as i64).collect();
        let ids = Tensor::from_slice(&ids).reshape([4, 16]);
        let alp = |sigma0: f64| {
            AlpPerturbation::new(
                &AlpSettings {
                    sigma0,
                    ..Default::default()
                },
                3,
                11,
                Device::Cpu,
            )
            .unwrap()
        };
        // The same numerics with noise too small to change any f32 value: what the perturbed forward
        // is compared with, so that only the noise's effect remains.
        let silent = alp(1e-30);
        let zero_noise = all_log_probs(&bf16, &ids, &silent.hooks(0, 0));
        let plain = all_log_probs(&bf16, &ids, &NoHooks);
        let mut per_sigma = Vec::new();
        for sigma in [1e-5, 1e-4, 1e-3] {
            let alp = alp(sigma);
            let hooks = alp.hooks(0, 0);
            let reference =
                all_log_probs(&f32_ref, &ids, &hooks) - all_log_probs(&f32_ref, &ids, &NoHooks);
            let moved = all_log_probs(&bf16, &ids, &hooks) - &zero_noise;
            let rounded = all_log_probs(&bf16, &ids, &RoundedBack(&hooks)) - &plain;
            let (r, m, o) = (rms(&reference), rms(&moved), rms(&rounded));
            let corr = (&moved * &reference).sum(Kind::Double).double_value(&[])
                / (m * r * moved.numel() as f64);
            let corr_rounded = (&rounded * &reference).sum(Kind::Double).double_value(&[])
                / (o * r * rounded.numel() as f64);
            println!(
                "{arch} sigma {sigma:e}: f32 reference rms {r:.3e}, bf16 {m:.3e} (ratio {:.2}, \
                 correlation {corr:.3}), rounded back {o:.3e} (ratio {:.2}, correlation \
                 {corr_rounded:.2})",
                m / r,
                o / r
            );
            assert!(
                (m / r - 1.0).abs() < 0.05 && corr > 0.99,
                "{arch} sigma {sigma:e}: bf16 moved {m:e} vs {r:e}, correlation {corr}"
            );
            // In f32 the effect is first order in sigma at these scales (it scales linearly).
            per_sigma.push(r / sigma);
            if sigma <= 1e-4 {
                assert!(
                    corr_rounded < 0.5,
                    "rounding back would have kept the perturbation?"
                );
            }
        }
        let (lo, hi) = per_sigma
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(
            hi / lo < 1.02,
            "{arch}: rms / sigma {per_sigma:?} is not linear in sigma"
        );
    }
}
