//! The oneDNN copy of a large LM head (`alp_policy::OnednnLmHead`): it multiplies like the head it
//! copies (against a product in f64), exists only where it pays, and the copy of an engine with more
//! rows than the few-rows kernel takes follows every weight install (checked against teacher-forced
//! log-probs of the installed model).
use alp_policy::{CausalLM, NoHooks, OnednnLmHead, ONEDNN_HEAD_MIN_BYTES};
use alp_rollout::{
    GenerationBackend, GenerationRequest, LocalEngine, SamplingParams, WeightUpdate,
};
use alp_test_support::tiny_model::TinyModel;
use tch::{Device, Kind, Tensor};

/// One layer, hidden 256 and 33,000 tokens: an LM head of 33.8 MB, just above the threshold.
fn large_head() -> TinyModel {
    let shape = TinyModel::qwen2_bench(33_000, 256, 512, 1, 4, 2).with("initializer_range", 0.2);
    const { assert!(33_000 * 256 * 4 >= ONEDNN_HEAD_MIN_BYTES) };
    shape
}

#[test]
fn onednn_head_multiplies_like_the_weight_it_copies() {
    tch::set_num_threads(2);
    assert!(
        tch::utils::has_mkldnn(),
        "libtorch without oneDNN: the copy would never be made"
    );
    let model = large_head().random(3);
    let copy = model
        .onednn_lm_head()
        .expect("a 33.8 MB f32 head on the CPU");
    let hidden = Tensor::randn([5, 3, 256], (Kind::Float, Device::Cpu));
    let ours = tch::no_grad(|| model.logits_with(&hidden, &NoHooks, Some(&copy)));
    let reference = hidden
        .to_kind(Kind::Double)
        .matmul(&model.lm_head_weight().to_kind(Kind::Double).tr());
    assert_eq!(ours.size(), vec![5, 3, 33_000]);
    let err = (ours.to_kind(Kind::Double) - &reference)
        .abs()
        .max()
        .double_value(&[]);
    let scale = reference.abs().max().double_value(&[]);
    assert!(
        err <= 1e-5 * scale.max(1.0),
        "oneDNN head off by {err} (logits up to {scale})"
    );
}

#[test]
fn onednn_copy_only_where_it_pays() {
    // The built-in default's 101 x 64 head, a bf16 head and a gradient-carrying f32 head of another
    // device kind never get one; the size threshold is on bytes of f32.
    assert!(TinyModel::math_default()
        .random(0)
        .onednn_lm_head()
        .is_none());
    assert!(large_head()
        .random_as(Kind::BFloat16, 0)
        .onednn_lm_head()
        .is_none());
    let just_below = Tensor::zeros(
        [ONEDNN_HEAD_MIN_BYTES / 4 / 256 - 1, 256],
        (Kind::Float, Device::Cpu),
    );
    assert!(OnednnLmHead::for_weight(&just_below).is_none());
    let at = Tensor::zeros(
        [ONEDNN_HEAD_MIN_BYTES / 4 / 256, 256],
        (Kind::Float, Device::Cpu),
    );
    assert!(OnednnLmHead::for_weight(&at).is_some());
}

/// Log-probs of `completion` after `prompt` under `model`, by one teacher-forced forward (the
/// head's own weight, no copy).
fn teacher_forced(model: &CausalLM, prompt: &[i64], completion: &[i64]) -> Vec<f64> {
    let ids: Vec<i64> = prompt.iter().chain(completion).copied().collect();
    let input = Tensor::from_slice(&ids).view([1, -1]);
    let logp = tch::no_grad(|| model.forward(&input, None, &NoHooks))
        .log_softmax(-1, Kind::Double)
        .squeeze_dim(0);
    completion
        .iter()
        .enumerate()
        .map(|(i, &t)| logp.double_value(&[(prompt.len() + i - 1) as i64, t]))
        .collect()
}

#[test]
fn engine_copy_follows_installed_weights() {
    tch::set_num_threads(2);
    let first = large_head().random(1);
    let installed = large_head().random(2);
    // More rows than the few-rows kernel takes, so that the head goes through the engine's copy.
    let rows = alp_policy::few_rows_gemm::MAX_ROWS as usize + 2;
    let mut engine = LocalEngine::new(large_head().random(1), rows);
    engine
        .install(&WeightUpdate::view_of(&installed, 1))
        .unwrap();
    let prompts: Vec<Vec<i64>> = (0..rows as i64)
        .map(|i| vec![5, 17, (i * 251) % 33_000, 4_000 + i])
        .collect();
    let requests: Vec<_> = prompts
        .iter()
        .map(|p| GenerationRequest::new(p.clone()))
        .collect();
    let params = SamplingParams {
        max_new_tokens: 3,
        seed: 11,
        ..SamplingParams::default()
    };
    let completions = engine.generate(&requests, &params).unwrap();
    let mut gap_to_old = 0.0f64;
    for (prompt, c) in prompts.iter().zip(&completions) {
        assert_eq!(c.completion_ids.len(), 3);
        let want = teacher_forced(&installed, prompt, &c.completion_ids);
        for (got, want) in c.logprobs.iter().zip(&want) {
            assert!(
                (*got as f64 - want).abs() < 1e-3,
                "log-prob {got} where the installed model gives {want}"
            );
        }
        let old = teacher_forced(&first, prompt, &c.completion_ids);
        gap_to_old += want
            .iter()
            .zip(&old)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>();
    }
    // The two models disagree, so a head copied from the first would have been caught above.
    assert!(
        gap_to_old > 1.0,
        "the two models barely differ ({gap_to_old})"
    );
}
