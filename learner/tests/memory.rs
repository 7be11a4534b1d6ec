//! Memory of a learner step (issue 27): the `memory/peak_rss_gb` metric is the step's own peak (the
//! kernel's VmHWM, reset at the step's start), and the estimate counts the model's parameters and the
//! optimizer's state as the model's own tensors say.
#![allow(clippy::field_reassign_with_default)]
mod common;

use alp_learner::memory::{
    estimate, parameter_count, peak_rss_bytes, reset_peak_rss, rss_bytes, MemoryPlan, Trained,
};
use alp_learner::{LearnerSettings, PgLearner};
use alp_test_support::tiny_model::TinyModel;
use common::{random_prompts, sample_groups, Rng};

fn plan(weight_bytes: u64, trained: Trained, checkpointing: bool) -> MemoryPlan {
    MemoryPlan {
        weight_bytes,
        trained,
        micro_batch_rows: 4,
        seq_len: 32,
        completion_len: 16,
        checkpointing,
        head_chunk_bytes: 64 << 20,
        inference_bytes: 2,
        reference: true,
    }
}

#[test]
fn the_estimate_counts_the_models_own_tensors() {
    for tied in [false, true] {
        let shape = TinyModel::new("qwen2")
            .with("num_hidden_layers", 4)
            .with("tie_word_embeddings", tied);
        let model = shape.random(1);
        let numel: i64 = model
            .named_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let p = numel as u64;
        assert_eq!(parameter_count(model.config()), p, "tied {tied}");
        let f32_full = estimate(model.config(), &plan(4, Trained::Full, false));
        assert_eq!(
            (f32_full.weights, f32_full.grads, f32_full.optimizer),
            (4 * p, 4 * p, 8 * p)
        );
        assert_eq!(
            (f32_full.inference_copy, f32_full.reference),
            (2 * p, 4 * p)
        );
        // bf16 weights: bf16 gradients, two f32 moments and an f32 master copy.
        let bf16 = estimate(model.config(), &plan(2, Trained::Full, false));
        assert_eq!(
            (bf16.weights, bf16.grads, bf16.optimizer),
            (2 * p, 2 * p, 12 * p)
        );
        let lora = estimate(model.config(), &plan(4, Trained::Adapter(1000), true));
        assert_eq!((lora.grads, lora.optimizer), (4000, 8000));
        let ckpt = estimate(model.config(), &plan(4, Trained::Full, true));
        assert!(ckpt.activations < f32_full.activations);
        assert_eq!(
            f32_full.total(),
            f32_full.parts().iter().take(8).map(|(_, b)| b).sum::<u64>()
        );
    }
}

#[test]
fn a_step_reports_its_own_peak_resident_set() {
    common::init();
    let Some(_) = peak_rss_bytes() else {
        eprintln!("no /proc/self/status here: nothing to check");
        return;
    };
    let model = TinyModel::new("llama").random(3);
    let mut rng = Rng::new(5);
    let prompts = random_prompts(2, 4, 64, &mut rng);
    let groups = sample_groups(&model, &prompts, 4, 6, 0.3, &mut rng, |c| c[0] as f64);
    let mut learner = PgLearner::new(LearnerSettings::default(), model, None).unwrap();
    // A first step touches libtorch's code and thread pools, which count as resident.
    learner.train_step(&groups).unwrap();
    // 400 MB touched and freed before the step: the process's peak, not the step's.
    let big = std::hint::black_box(vec![1u8; 400_000_000]);
    assert_eq!(std::hint::black_box(&big)[123_456_789], 1);
    drop(big);
    let process_peak = peak_rss_bytes().unwrap() as f64 / 1e9;
    // VmHWM lags the page faults a little (the kernel batches its counters).
    assert!(process_peak >= 0.7, "peak {process_peak} GB");
    let metrics = learner.train_step(&groups).unwrap();
    let step_peak = metrics["memory/peak_rss_gb"];
    let now = rss_bytes().unwrap() as f64 / 1e9;
    assert!(
        step_peak.is_finite() && step_peak >= now * 0.999,
        "{step_peak} vs {now}"
    );
    if reset_peak_rss() {
        assert!(
            step_peak < process_peak - 0.2,
            "the step's peak {step_peak} GB includes the 400 MB freed before it ({process_peak} GB)"
        );
    } else {
        assert!(step_peak >= process_peak - 1e-3);
    }
}
