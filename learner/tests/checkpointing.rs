//! Memory-saving paths of the learner's training step (issue 27) give the gradients of the plain one:
//! - activation checkpointing per decoder layer (`gradient_checkpointing`) together with the LM head run
//!   over one-row chunks, against the whole forward with one head chunk, for the plain model, ALP on
//!   (its noise regenerated in the recompute), a LoRA adapter (`with_adapter`), the sequence-level
//!   ratio, and a KL penalty to a reference with an entropy bonus: the gradients of every optimizer
//!   parameter (recorded before any clip) agree to 1e-6 relative in f32;
//! - the chunked log-probs and entropy equal those of the whole `[b, s, vocab]` logits;
//! - a micro-batch token budget (`micro_batch_tokens`) changes the cut, not the update.
//!
//! The whole forward with a single head chunk is itself checked against PyTorch by `lora_train.rs`.
#![allow(clippy::field_reassign_with_default)]
mod common;

use std::sync::{Arc, Mutex};

use alp_learner::{
    token_log_probs, Aggregation, CorrectionKind, Entropy, GradientSync, Group, LearnerSettings,
    PackedBatch, PgLearner, RatioLevel, Result, Sample, TrainablePolicy,
};
use alp_policy::lora::TargetModules;
use alp_policy::{CausalLM, LoraAdapter, LoraConfig, NoHooks};
use alp_test_support::tiny_model::TinyModel;
use common::{random_prompts, sample_groups, Rng};
use tch::{Kind, Tensor};

/// f32 gradients summed in another order (per head chunk, per recomputed layer).
const GRAD_TOL: f64 = 1e-6;

/// Keeps a copy of the gradients of every optimizer step, before any clip.
struct Recorder(Arc<Mutex<Vec<Vec<Tensor>>>>);

impl GradientSync for Recorder {
    fn sum_gradients(&mut self, params: &[Tensor]) -> Result<()> {
        // An undefined gradient is recorded as zeros: the parameter learnt nothing.
        let grads = params
            .iter()
            .map(|p| match p.grad() {
                g if g.defined() => g.detach().copy(),
                _ => p.zeros_like(),
            })
            .collect();
        self.0.lock().unwrap().push(grads);
        Ok(())
    }

    fn sum_counts(&mut self, _counts: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// A 3-layer Llama-shaped random model, the same for the same seed.
fn model(seed: u64) -> CausalLM {
    TinyModel::new("llama")
        .with("num_hidden_layers", 3)
        .random(seed)
}

/// Three groups of four samples: completions of uneven lengths (so rows are padded), some untrained
/// tokens, `mu` off the model's own log-probs (some ratios clipped), rewards that differ in a group.
fn groups(model: &CausalLM, seed: u64) -> Vec<Group> {
    let mut rng = Rng::new(seed);
    let prompts = random_prompts(3, 5, 64, &mut rng);
    let mut groups = sample_groups(model, &prompts, 4, 7, 0.5, &mut rng, |c| {
        (c.iter().sum::<i64>() % 5) as f64
    });
    for (i, s) in groups.iter_mut().flat_map(|g| &mut g.samples).enumerate() {
        let keep = 3 + i % 5;
        truncate(s, keep);
        if i % 3 == 1 {
            s.loss_mask[0] = false;
        }
    }
    groups
}

fn truncate(s: &mut Sample, n: usize) {
    s.completion_ids.truncate(n);
    s.loss_mask.truncate(n);
    s.mu.truncate(n);
}

/// What a configuration changes in the default settings.
struct Case {
    name: &'static str,
    edit: fn(&mut LearnerSettings),
    lora: bool,
    reference: bool,
}

fn base_settings() -> LearnerSettings {
    let mut s = LearnerSettings::default();
    s.micro_batch_size = 5;
    s.max_grad_norm = 0.0;
    s.optimizer.lr = 1e-3;
    s
}

/// The gradients of one step's single optimizer step, the optimizer's parameter names and the step's
/// total loss, with checkpointing and head chunks of `head_chunk_bytes` (or not).
fn one_step(case: &Case, checkpointing: bool, head_chunk_bytes: usize) -> (Vec<Tensor>, f64) {
    let mut s = base_settings();
    (case.edit)(&mut s);
    s.gradient_checkpointing = checkpointing;
    s.head_chunk_bytes = head_chunk_bytes;
    let policy = model(7);
    let data = groups(&policy, 21);
    let reference = case
        .reference
        .then(|| Box::new(model(8)) as Box<dyn TrainablePolicy>);
    let record = Arc::new(Mutex::new(Vec::new()));
    let learner = if case.lora {
        let cfg = LoraConfig::new(4, 8.0, TargetModules::AllLinear);
        let adapter = LoraAdapter::init(cfg, &policy, 3).unwrap();
        // PEFT initialises B to 0; random B so that A gets a gradient too.
        let mut rng = Rng::new(4);
        let b: Vec<(String, Tensor)> = adapter
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| n.ends_with("lora_B.weight"))
            .map(|(n, t)| (n, rng.normal_tensor(&t.size(), 0.05).to_kind(Kind::Float)))
            .collect();
        adapter.set_named_tensors(&b).unwrap();
        PgLearner::with_adapter(s, policy, reference, adapter)
    } else {
        PgLearner::new(s, policy, reference)
    };
    let mut learner = learner
        .unwrap()
        .with_gradient_sync(Box::new(Recorder(record.clone())));
    let metrics = learner.train_step(&data).unwrap();
    let grads = record.lock().unwrap().pop().expect("one optimizer step");
    (grads, metrics["loss/total"])
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn checkpointed_and_chunked_gradients_equal_the_whole_forwards() {
    common::init();
    let cases = [
        Case {
            name: "plain",
            edit: |_| {},
            lora: false,
            reference: false,
        },
        Case {
            name: "alp",
            edit: |s| {
                s.correction.kind = CorrectionKind::Alp;
                s.alp.sigma0 = 0.05;
            },
            lora: false,
            reference: false,
        },
        Case {
            name: "lora+alp",
            edit: |s| {
                s.correction.kind = CorrectionKind::Alp;
                s.alp.sigma0 = 0.05;
            },
            lora: true,
            reference: false,
        },
        Case {
            name: "sequence ratio (gspo)",
            edit: |s| {
                s.correction.kind = CorrectionKind::None;
                s.correction.level = RatioLevel::Sequence;
                s.loss.aggregation = Aggregation::SeqMeanTokenMean;
            },
            lora: false,
            reference: false,
        },
        Case {
            name: "kl + entropy",
            edit: |s| {
                s.loss.kl_coef = 0.1;
                s.loss.entropy_coef = 0.01;
                s.loss.aggregation = Aggregation::SeqMeanTokenSum;
            },
            lora: false,
            reference: true,
        },
    ];
    for case in &cases {
        let (whole, loss_whole) = one_step(case, false, usize::MAX);
        // One row per head chunk: 64 tokens x 4 bytes, times at most 7 completion tokens.
        let (ckpt, loss_ckpt) = one_step(case, true, 1);
        let name = case.name;
        assert_eq!(whole.len(), ckpt.len(), "{name}");
        assert!(
            (loss_whole - loss_ckpt).abs() <= 1e-6 * loss_whole.abs().max(1e-3),
            "{name}: loss {loss_whole} vs {loss_ckpt} checkpointed"
        );
        let mut with_grad = 0;
        for (i, (a, b)) in whole.iter().zip(&ckpt).enumerate() {
            let scale = max_abs(a);
            let diff = max_abs(&(a - b));
            assert!(
                diff <= GRAD_TOL * scale.max(1e-12),
                "{name}: parameter {i} gradient differs by {diff:e} (scale {scale:e})"
            );
            with_grad += usize::from(scale > 0.0);
        }
        // Every parameter learns something: 3 layers of 9 tensors + embedding, norm and head; the
        // adapter's 3 x 7 x 2 factors; plus ALP's log_sigma.
        let alp = usize::from(name.contains("alp"));
        let want = if case.lora { 42 } else { 30 } + alp;
        assert_eq!(with_grad, want, "{name}: parameters with a gradient");
    }
}

#[test]
fn chunked_log_probs_equal_the_whole_logits() {
    common::init();
    let model = model(5);
    let data = groups(&model, 9);
    let samples: Vec<&Sample> = data.iter().flat_map(|g| &g.samples).collect();
    let packed = PackedBatch::pack(&samples, &vec![0.0; samples.len()], model.device())
        .unwrap()
        .at_temperature(0.7);
    let whole = tch::no_grad(|| {
        let logits = model.forward(&packed.input_ids, Some(&packed.attention_mask), &NoHooks);
        token_log_probs(&logits, &packed, Entropy::Detached)
    });
    let chunked = packed.with_head_chunk_bytes(2 * 7 * 64 * 4);
    assert_eq!(chunked.head_chunks(64).len(), 6, "two rows per chunk");
    let (lp, ent) = tch::no_grad(|| chunked.log_probs(&model, &NoHooks, Entropy::Detached));
    let mask = chunked.mask.gt(0.0);
    let pick = |t: &Tensor| t.masked_select(&mask);
    let (lp0, ent0) = (pick(&whole.0), pick(&whole.1.unwrap()));
    assert!(max_abs(&(pick(&lp) - &lp0)) <= 1e-6 * max_abs(&lp0));
    assert!(max_abs(&(pick(&ent.unwrap()) - &ent0)) <= 1e-6 * max_abs(&ent0));
}

#[test]
fn a_token_budget_cuts_micro_batches_without_changing_the_update() {
    common::init();
    let case = Case {
        name: "budget",
        edit: |s| s.micro_batch_size = 12,
        lora: false,
        reference: false,
    };
    let (whole, _) = one_step(&case, false, usize::MAX);
    let budgeted = Case {
        edit: |s| {
            s.micro_batch_size = 12;
            s.micro_batch_tokens = 30;
        },
        ..case
    };
    // The cut: no micro-batch holds more than 30 padded tokens (rows x longest sequence, 8..12).
    let policy = model(7);
    let data = groups(&policy, 21);
    let mut s = base_settings();
    (budgeted.edit)(&mut s);
    let learner = PgLearner::new(s, policy, None).unwrap();
    let plan = learner.plan(&data).unwrap();
    let layout = plan.layout().unwrap();
    assert!(
        layout.micro_batches.len() >= 4,
        "{:?}",
        layout.micro_batches
    );
    for r in &layout.micro_batches {
        let rows = &plan.samples()[r.clone()];
        let longest = rows
            .iter()
            .map(|x| x.prompt_ids.len() + x.completion_ids.len())
            .max()
            .unwrap();
        assert!(
            rows.len() * longest <= 30,
            "{r:?}: {} x {longest}",
            rows.len()
        );
    }
    let (cut, _) = one_step(&budgeted, false, usize::MAX);
    for (i, (a, b)) in whole.iter().zip(&cut).enumerate() {
        let scale = max_abs(a);
        assert!(scale > 0.0, "parameter {i} has no gradient");
        assert!(
            max_abs(&(a - b)) <= GRAD_TOL * scale,
            "parameter {i}: the budget changed the gradient"
        );
    }
}
