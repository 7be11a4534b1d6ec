//! Training a LoRA adapter with the policy-gradient learner (`PgLearner::with_adapter`, issue 26
//! acceptance 2 and the first half of 3):
//! - the adapter's gradient of one learner step (captured by a recording `GradientSync`, before any
//!   clip) equals an independent PyTorch computation (scripts/oracles/lora_pg_step.py: transformers'
//!   model, the adapter and ALP's noise as plain-torch hooks, the clipped surrogate written out), with
//!   ALP off (several micro-batches) and on (the same noise on both sides, and `log_sigma`'s gradient);
//! - after several steps the base weights (f32 and bf16) are bit-identical to the start and never got
//!   a gradient, and the optimizer holds only the adapter's factors and `log_sigma`;
//! - saving the learner's state, loading it into a fresh learner (whose adapter starts elsewhere) and
//!   training on gives bit-identical adapters to an uninterrupted run; a state saved for another
//!   adapter, or without one, is refused.
#![allow(clippy::field_reassign_with_default)]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use alp_learner::noise::standard_normal;
use alp_learner::{
    CorrectionKind, GradientSync, Group, LearnerSettings, PgLearner, Result, Sample,
};
use alp_policy::lora::TargetModules;
use alp_policy::{CausalLM, ForwardHooks, LoadOptions, LoraAdapter, LoraConfig};
use alp_test_support::tiny_model::TinyModel;
use alp_test_support::{hf_models, oracle};
use common::{bit_equal, Rng};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Our gradients against PyTorch's: f32 through a 3-layer model, summed in another order.
const GRAD_TOL: f64 = 2e-4;

fn lora_config(r: i64) -> LoraConfig {
    LoraConfig::new(r, 2.0 * r as f64, TargetModules::AllLinear)
}

/// An adapter as PEFT initialises it, then B drawn at random too, so that A gets a gradient.
fn adapter_with_random_b(model: &CausalLM, r: i64, seed: u64) -> LoraAdapter {
    let adapter = LoraAdapter::init(lora_config(r), model, seed).unwrap();
    let mut rng = Rng::new(seed + 1);
    let b: Vec<(String, Tensor)> = adapter
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| n.ends_with("lora_B.weight"))
        .map(|(n, t)| (n, rng.normal_tensor(&t.size(), 0.05).to_kind(Kind::Float)))
        .collect();
    adapter.set_named_tensors(&b).unwrap();
    adapter
}

/// Per-token log-probs of `completion` after `prompt` under `model` with `hooks`, alone, no grad.
fn completion_lp(
    model: &CausalLM,
    hooks: &dyn ForwardHooks,
    prompt: &[i64],
    completion: &[i64],
) -> Vec<f32> {
    let seq: Vec<i64> = prompt.iter().chain(completion).copied().collect();
    let ids = Tensor::from_slice(&seq).view([1, seq.len() as i64]);
    let logits = tch::no_grad(|| model.forward(&ids, None, hooks)).get(0);
    let (p, n) = (prompt.len() as i64, completion.len() as i64);
    let lp = logits
        .narrow(0, p - 1, n)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float)
        .gather(1, &Tensor::from_slice(completion).unsqueeze(1), false)
        .squeeze_dim(1);
    Vec::<f32>::try_from(lp).unwrap()
}

/// Two groups of four samples of uneven lengths, some untrained tokens, and `mu` within +-0.3 of the
/// adapted model's own log-probs (so some ratios are clipped and most are not).
fn batch(model: &CausalLM, adapter: &LoraAdapter, seed: u64) -> Vec<Group> {
    batch_with_jitter(model, adapter, seed, 0.3)
}

/// [`batch`] with `mu` within `+-jitter` of the adapted model's log-probs.
fn batch_with_jitter(
    model: &CausalLM,
    adapter: &LoraAdapter,
    seed: u64,
    jitter: f64,
) -> Vec<Group> {
    let mut rng = Rng::new(seed);
    let vocab = model.config().vocab_size as u64;
    let draw =
        |n: u64, rng: &mut Rng| -> Vec<i64> { (0..n).map(|_| rng.below(vocab) as i64).collect() };
    (0..2)
        .map(|_| Group {
            samples: (0..4)
                .map(|i| {
                    let prompt_len = 2 + rng.below(4);
                    let prompt_ids = draw(prompt_len, &mut rng);
                    let completion_len = 3 + rng.below(5);
                    let completion_ids = draw(completion_len, &mut rng);
                    let lp = completion_lp(model, adapter, &prompt_ids, &completion_ids);
                    let mu = lp
                        .iter()
                        .map(|&x| x + (jitter * (2.0 * rng.uniform() - 1.0)) as f32)
                        .collect();
                    let loss_mask = (0..completion_ids.len())
                        .map(|t| (t + i) % 4 != 1)
                        .collect();
                    Sample {
                        prompt_ids,
                        completion_ids,
                        loss_mask,
                        mu,
                        reward: rng.uniform(),
                        policy_version: 0,
                    }
                })
                .collect(),
        })
        .collect()
}

fn settings(alp: bool) -> LearnerSettings {
    let mut s = LearnerSettings::default();
    if alp {
        s.correction.kind = CorrectionKind::Alp;
        s.alp.sigma0 = 0.05;
        // One micro-batch: its noise is drawn here for the oracle at the learner's packed shape.
        s.micro_batch_size = 64;
    } else {
        s.micro_batch_size = 3;
    }
    s.max_grad_norm = 0.0;
    s.optimizer.lr = 1e-2;
    s
}

/// Keeps a copy of the gradients of every optimizer step; one process, so nothing is summed.
struct Recorder(Arc<Mutex<Vec<Vec<Tensor>>>>);

impl GradientSync for Recorder {
    fn sum_gradients(&mut self, params: &[Tensor]) -> Result<()> {
        let grads = params.iter().map(|p| p.grad().detach().copy()).collect();
        self.0.lock().unwrap().push(grads);
        Ok(())
    }

    fn sum_counts(&mut self, _counts: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// The optimizer's parameters as `group/name`, in its order (the order the gradient sync sees).
fn optimizer_params<P: alp_learner::TrainablePolicy>(learner: &PgLearner<P>) -> Vec<String> {
    learner
        .optimizer()
        .state_tensors()
        .into_iter()
        .filter_map(|(n, _)| n.strip_suffix("/exp_avg").map(str::to_string))
        .collect()
}

/// One oracle job: the samples in the learner's order with their advantages and packed row, and the
/// job's tensors (the adapter, and ALP's noise for the learner's single training forward).
fn oracle_job(
    name: &str,
    learner: &PgLearner<CausalLM>,
    groups: &[Group],
    tensors: &mut Vec<(String, Tensor)>,
) -> Value {
    let s = learner.settings();
    let plan = learner.plan(groups).unwrap();
    let samples: Vec<Value> = plan
        .samples()
        .iter()
        .zip(plan.advantages())
        .enumerate()
        .map(|(row, (x, a))| {
            json!({"prompt_ids": x.prompt_ids, "completion_ids": x.completion_ids,
                   "loss_mask": x.loss_mask, "mu": x.mu, "advantage": a, "row": row})
        })
        .collect();
    let adapter = learner.adapter().unwrap();
    for (n, t) in adapter.named_tensors() {
        tensors.push((format!("{name}/{n}"), t.detach().copy()));
    }
    let alp = learner.alp().map(|alp| {
        let rows = samples.len() as i64;
        let seq = plan
            .samples()
            .iter()
            .map(|x| (x.prompt_ids.len() + x.completion_ids.len()) as i64)
            .max()
            .unwrap();
        let hidden = learner.policy().config().hidden_size;
        for layer in alp.layers() {
            let key = alp.noise_key(learner.step(), 0, layer as u64);
            let eps = standard_normal(&[rows, seq, hidden], key, Device::Cpu);
            tensors.push((format!("{name}/eps.{layer}"), eps));
        }
        json!({"log_sigma": Vec::<f32>::try_from(alp.log_sigma().detach()).unwrap(),
               "layer_start": alp.layers().start})
    });
    json!({"name": name, "scale": adapter.scale(), "eps_low": s.loss.eps_low,
           "eps_high": s.loss.eps_high, "samples": samples, "alp": alp})
}

fn run_oracle(
    model_dir: &Path,
    jobs: Vec<Value>,
    tensors: &[(String, Tensor)],
) -> Vec<HashMap<String, Tensor>> {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, input) = (
        tmp.path().join("spec.json"),
        tmp.path().join("in.safetensors"),
    );
    let names: Vec<String> = jobs
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect();
    std::fs::write(&spec, json!({"model": model_dir, "jobs": jobs}).to_string()).unwrap();
    Tensor::write_safetensors(tensors, &input).unwrap();
    let prefix = tmp.path().join("out-");
    oracle::run(
        oracle::python_command()
            .arg(oracle::script("lora_pg_step.py"))
            .arg(&spec)
            .arg(&input)
            .arg(&prefix)
            .env("HF_HUB_OFFLINE", "1")
            .env("OMP_NUM_THREADS", "1"),
        "LoRA policy-gradient oracle",
    );
    names
        .iter()
        .map(|n| {
            let path = tmp.path().join(format!("out-{n}.safetensors"));
            Tensor::read_safetensors(path)
                .unwrap()
                .into_iter()
                .collect()
        })
        .collect()
}

/// `max |ours - theirs| / max |theirs|`, and `max |theirs|`.
fn rel_diff(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    let scale = theirs.abs().max().double_value(&[]);
    let diff = (ours.to_kind(Kind::Float) - theirs)
        .abs()
        .max()
        .double_value(&[]);
    (diff / scale.max(1e-30), scale)
}

#[test]
fn adapter_gradient_of_one_step_equals_pytorch_with_alp_off_and_on() {
    common::init();
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("qwen2");
    hf_models::make_model("qwen2", &model_dir, false, 2);
    let load = || CausalLM::load(&model_dir, &LoadOptions::default()).unwrap();
    let mut tensors = Vec::new();
    let mut jobs = Vec::new();
    let mut ours = Vec::new();
    for (name, alp) in [("plain", false), ("alp", true)] {
        let model = load();
        let adapter = adapter_with_random_b(&model, 4, 3);
        let groups = batch(&model, &adapter, 11);
        let record = Arc::new(Mutex::new(Vec::new()));
        let mut learner = PgLearner::with_adapter(settings(alp), model, None, adapter)
            .unwrap()
            .with_gradient_sync(Box::new(Recorder(record.clone())));
        jobs.push(oracle_job(name, &learner, &groups, &mut tensors));
        let params = optimizer_params(&learner);
        let m = learner.train_step(&groups).unwrap();
        let grads = record.lock().unwrap().pop().expect("one optimizer step");
        ours.push((name, params, grads, m["loss/pg"]));
    }
    let results = run_oracle(&model_dir, jobs, &tensors);
    for ((name, params, grads, pg), theirs) in ours.into_iter().zip(results) {
        let loss = theirs["loss"].double_value(&[0]);
        assert!(
            (pg - loss).abs() <= 1e-5 * loss.abs().max(1e-3),
            "{name}: loss/pg {pg} vs PyTorch {loss}"
        );
        assert_eq!(params.len(), grads.len());
        let mut checked = 0;
        for (param, grad) in params.iter().zip(&grads) {
            let key = match param.split_once('/').unwrap() {
                ("model", peft) => format!("grad/{peft}"),
                ("alp", "log_sigma") => "grad/log_sigma".to_string(),
                other => panic!("{name}: unexpected optimizer parameter {other:?}"),
            };
            let want = theirs
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: no oracle {key}"));
            let (rel, scale) = rel_diff(grad, want);
            assert!(scale > 1e-6, "{name}: {key} has no gradient in PyTorch");
            assert!(
                rel < GRAD_TOL,
                "{name}: {key} differs from PyTorch's by {rel:e} (relative)"
            );
            checked += 1;
        }
        // 3 layers x 7 projections x (A, B), and log_sigma with ALP.
        assert_eq!(checked, 42 + usize::from(name == "alp"), "{name}");
    }
}

#[test]
fn base_weights_stay_bit_identical_and_the_optimizer_holds_only_the_adapter() {
    common::init();
    for kind in [Kind::Float, Kind::BFloat16] {
        let model = TinyModel::new("qwen2").random_as(kind, 5);
        let start: Vec<(String, Tensor)> = model
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        let adapter = LoraAdapter::init(lora_config(2), &model, 9).unwrap();
        let names: BTreeSet<String> = adapter
            .named_tensors()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let groups = batch(&model, &adapter, 12);
        let mut learner = PgLearner::with_adapter(settings(true), model, None, adapter).unwrap();
        for _ in 0..3 {
            learner.train_step(&groups).unwrap();
        }
        let mut want: BTreeSet<String> = names.iter().map(|n| format!("model/{n}")).collect();
        want.insert("alp/log_sigma".into());
        let held: BTreeSet<String> = optimizer_params(&learner).into_iter().collect();
        assert_eq!(
            held, want,
            "{kind:?}: the optimizer holds exactly the adapter and log_sigma"
        );
        assert!(
            !learner
                .optimizer()
                .state_tensors()
                .iter()
                .any(|(n, _)| n.ends_with("/master")),
            "{kind:?}: f32 factors need no master copy"
        );
        for ((name, before), (_, now)) in start.iter().zip(learner.policy().named_parameters()) {
            assert!(
                bit_equal(before, &now),
                "{kind:?}: base weight {name} changed"
            );
            assert!(
                !now.requires_grad(),
                "{kind:?}: base weight {name} is not frozen"
            );
            assert!(
                !now.grad().defined(),
                "{kind:?}: base weight {name} has a gradient"
            );
        }
        let b_norm: f64 = learner
            .adapter()
            .unwrap()
            .factors()
            .iter()
            .map(|f| f.b.square().sum(Kind::Double).double_value(&[]))
            .sum();
        assert!(
            b_norm > 0.0,
            "{kind:?}: the adapter was not trained (B still zero)"
        );
    }
}

/// The adapter's factors and `log_sigma`, copied.
fn trained_state(learner: &PgLearner<CausalLM>) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = learner
        .adapter()
        .unwrap()
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    out.push((
        "log_sigma".into(),
        learner.alp().unwrap().log_sigma().detach().copy(),
    ));
    out
}

#[test]
fn resume_from_saved_state_equals_the_uninterrupted_run() {
    common::init();
    let tiny = TinyModel::new("qwen2");
    let fresh = |adapter_seed: u64, r: i64| {
        let model = tiny.random(21);
        let adapter = LoraAdapter::init(lora_config(r), &model, adapter_seed).unwrap();
        (model, adapter)
    };
    let (model, adapter) = fresh(1, 2);
    let batches: Vec<Vec<Group>> = (0..3).map(|i| batch(&model, &adapter, 30 + i)).collect();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let mut whole = PgLearner::with_adapter(settings(true), model, None, adapter).unwrap();
    whole.train_step(&batches[0]).unwrap();
    whole.save_state(&state).unwrap();
    let saved = trained_state(&whole);
    for b in &batches[1..] {
        whole.train_step(b).unwrap();
    }
    assert!(state.join("adapter/adapter_config.json").is_file());
    assert!(state.join("adapter/adapter_model.safetensors").is_file());

    // A fresh learner whose adapter starts elsewhere: loading must install the saved one.
    let (model, adapter) = fresh(77, 2);
    let mut resumed = PgLearner::with_adapter(settings(true), model, None, adapter).unwrap();
    resumed.load_state(&state).unwrap();
    assert_eq!(resumed.step(), 1);
    for ((name, a), (_, b)) in saved.iter().zip(trained_state(&resumed)) {
        assert!(
            bit_equal(a, &b),
            "{name} after load_state differs from the saved value"
        );
    }
    for b in &batches[1..] {
        resumed.train_step(b).unwrap();
    }
    for ((name, a), (_, b)) in trained_state(&whole).iter().zip(trained_state(&resumed)) {
        assert!(
            bit_equal(a, &b),
            "{name} after resuming differs from the uninterrupted run"
        );
    }

    // Another rank, or no adapter at all, cannot take this state.
    let (model, adapter) = fresh(1, 3);
    let mut other = PgLearner::with_adapter(settings(true), model, None, adapter).unwrap();
    let err = other.load_state(&state).unwrap_err().to_string();
    assert!(
        err.contains("`r`") && err.contains("adapter_config.json"),
        "{err}"
    );
    let mut full = PgLearner::new(settings(true), tiny.random(21), None).unwrap();
    let err = full.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("holds a trained adapter"), "{err}");
}

/// The no-grad forwards score with the adapter too: with `mu` the adapted model's own log-probs (far
/// from the base model's), `lp_old` gives PPO ratios of exactly 1 (correction `none`) and no mismatch
/// (ALP, whose mismatch statistics come from `lp_old`), and `PgLearner::log_probs` returns `mu`.
#[test]
fn every_scoring_forward_includes_the_adapter() {
    common::init();
    let model = TinyModel::new("qwen2").random(41);
    let adapter = adapter_with_random_b(&model, 2, 42);
    let groups = batch_with_jitter(&model, &adapter, 43, 0.0);
    let samples: Vec<&Sample> = groups.iter().flat_map(|g| &g.samples).collect();
    let base_gap = samples
        .iter()
        .flat_map(|x| {
            let base = completion_lp(
                &model,
                &alp_policy::NoHooks,
                &x.prompt_ids,
                &x.completion_ids,
            );
            base.into_iter().zip(&x.mu).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0f32, f32::max);
    assert!(
        base_gap > 1e-2,
        "the adapter must move the log-probs ({base_gap})"
    );

    let learner = PgLearner::with_adapter(settings(true), model, None, adapter).unwrap();
    let lp = learner.log_probs(&samples, &alp_policy::NoHooks).unwrap();
    for (i, x) in samples.iter().enumerate() {
        let n = x.mu.len() as i64;
        let got = Vec::<f32>::try_from(lp.get(i as i64).narrow(0, 0, n)).unwrap();
        let diff = got
            .iter()
            .zip(&x.mu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff < 1e-5,
            "log_probs of sample {i} differ from the adapted model's by {diff}"
        );
    }
    let mut learner = learner;
    let m = learner.train_step(&groups).unwrap();
    let mismatch = m["mismatch/logp_abs_diff_max"];
    assert!(
        mismatch < 1e-5,
        "ALP's lp_old forward misses the adapter: {mismatch}"
    );

    let model = TinyModel::new("qwen2").random(41);
    let adapter = adapter_with_random_b(&model, 2, 42);
    let mut s = settings(false);
    s.correction.kind = CorrectionKind::None;
    let mut learner = PgLearner::with_adapter(s, model, None, adapter).unwrap();
    let m = learner.train_step(&groups).unwrap();
    for q in ["min", "max"] {
        let r = m[&format!("ratio_loss/{q}")];
        assert!(
            (r - 1.0).abs() < 1e-5,
            "ratio_loss/{q} {r}: lp_old misses the adapter"
        );
    }
}
