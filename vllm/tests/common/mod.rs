//! What the real-server tests share: the vLLM Python, a vLLM-shaped model written by us, settings for
//! two-core CPU servers, and the local engine as the reference.
#![allow(dead_code)]

use std::path::Path;

use alp_policy::{CausalLM, LoadOptions, ModelConfig};
use alp_rollout::{
    Completion, GenerationBackend, GenerationRequest, LocalEngine, SamplingParams, WeightUpdate,
};
use alp_test_support::vllm::cpu_server_env;
pub use alp_test_support::vllm::{free_port, vllm_python};
use alp_tokenizer::{CharTokenizerSpec, Tokenizer};
use alp_vllm::VllmSettings;
use serde_json::json;

pub fn tokenizer() -> Tokenizer {
    CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
        .build()
        .unwrap()
}

/// The `vllm-tiny` preset's shape (head_dim 64, the least vLLM's CPU attention takes), tied
/// embeddings, with a wider initialisation than HF's 0.02 so that next-token distributions are far
/// from uniform and a wrong weight shows in the log-probs.
pub fn config(tok: &Tokenizer) -> ModelConfig {
    let cfg = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": tok.vocab_size(), "hidden_size": 128, "intermediate_size": 384,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "tie_word_embeddings": true, "hidden_act": "silu", "initializer_range": 0.1,
        "bos_token_id": null, "eos_token_id": tok.eos_token_id(), "torch_dtype": "float32"
    });
    ModelConfig::from_json_str(&cfg.to_string(), "vllm test model").unwrap()
}

/// A random model: "the learner's weights" after `seed` updates.
pub fn model(tok: &Tokenizer, seed: u64) -> CausalLM {
    CausalLM::random(config(tok), &LoadOptions::default(), seed).unwrap()
}

/// Writes `model` and the tokenizer as the checkpoint the servers start from.
pub fn write_checkpoint(model: &CausalLM, tok: &Tokenizer, dir: &Path) {
    model.save(dir).unwrap();
    tok.save(dir).unwrap();
}

/// Settings for servers on this two-core machine: f32, a small KV cache, no CPU binding.
pub fn settings(sync_dir: &Path, log_dir: &Path) -> VllmSettings {
    VllmSettings {
        python: vllm_python(),
        args: [
            "--dtype",
            "float32",
            "--max-model-len",
            "1024",
            "--gpu-memory-utilization",
            "0.1",
            "--enforce-eager",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: cpu_server_env().into_iter().collect(),
        // Two servers starting together on a busy two-core machine took 200-230 s.
        ready_timeout_s: 900.0,
        log_dir: Some(log_dir.to_path_buf()),
        sync_dir: Some(sync_dir.to_path_buf()),
        health_interval_s: 1.0,
        request_timeout_s: 120.0,
        ..Default::default()
    }
}

/// Prompts of different lengths over the vocabulary, with per-row limits on some.
pub fn requests(n: usize, vocab: i64, max_new: usize) -> Vec<GenerationRequest> {
    (0..n)
        .map(|i| {
            let len = 3 + (i * 5) % 17;
            let prompt = (0..len)
                .map(|j| ((i * 31 + j * 7 + 11) as i64) % vocab)
                .collect();
            GenerationRequest {
                prompt_ids: prompt,
                max_new_tokens: (i % 3 == 1).then_some(max_new / 2 + i % 5),
                stop_token_ids: None,
                member: None,
                stream: None,
            }
        })
        .collect()
}

/// The local engine's completions on `model`'s weights.
pub fn local(
    model: &CausalLM,
    requests: &[GenerationRequest],
    params: &SamplingParams,
) -> Vec<Completion> {
    let copy = CausalLM::random(model.config().clone(), &LoadOptions::default(), 0).unwrap();
    let mut engine = LocalEngine::new(copy, 16);
    engine.install(&WeightUpdate::view_of(model, 0)).unwrap();
    engine.generate(requests, params).unwrap()
}

/// Asserts the server's completions are the local engine's: same tokens and finish reasons,
/// log-probs within `tol`. Returns the largest log-prob difference.
pub fn assert_same(ours: &[Completion], theirs: &[Completion], tol: f32) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let mut worst = 0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a.prompt_ids, b.prompt_ids, "row {i}");
        assert_eq!(a.completion_ids, b.completion_ids, "row {i}: tokens");
        assert_eq!(a.finish_reason, b.finish_reason, "row {i}");
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst <= tol, "largest log-prob difference {worst} > {tol}");
    worst
}

/// `log_softmax(logits / t)` of each completion token, from one full forward of prompt + completion
/// on `model`: an independent reference for sampled rows.
pub fn teacher_forced(model: &CausalLM, c: &Completion, t: f64) -> Vec<f32> {
    let _guard = tch::no_grad_guard();
    let ids = [c.prompt_ids.as_slice(), &c.completion_ids].concat();
    let input = tch::Tensor::from_slice(&ids).view([1, -1]);
    let logits = model
        .forward(&input, None, &alp_policy::NoHooks)
        .squeeze_dim(0);
    let lp = (logits.to_kind(tch::Kind::Float) / t).log_softmax(-1, tch::Kind::Float);
    let p = c.prompt_ids.len() as i64;
    (0..c.completion_ids.len() as i64)
        .map(|k| lp.double_value(&[p - 1 + k, ids[(p + k) as usize]]) as f32)
        .collect()
}

/// Log lines for the test output (`RUST_LOG=info` to see the servers come and go).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "alp_vllm=info".into()),
        )
        .with_test_writer()
        .try_init();
}
