//! Engine throughput against transformers `generate` on the same random Qwen2-architecture model
//! (8 layers, hidden 512, GQA 8/2 heads, vocab 32k), batch 16, prompt length 64, 128 new tokens,
//! the same thread count, f32 and bf16. Prints tokens/s for both and the ratio, in one run:
//!
//!     cargo bench -p alp-rollout --bench generate
//!
//! Environment: BENCH_THREADS (default 2), BENCH_NEW_TOKENS (128), BENCH_BATCH (16), BENCH_DTYPES
//! (f32,bf16), BENCH_REPEATS (3: each side reports its fastest timed run, since a shared machine only
//! ever adds time). Not a test: it asserts nothing about speed.
use std::time::Instant;

use alp_policy::{CausalLM, LoadOptions};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams};
use alp_test_support::bench::env_or;
use alp_test_support::oracle;
use alp_test_support::tiny_model::TinyModel;

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let new_tokens: usize = env_or("BENCH_NEW_TOKENS", 128);
    let batch: usize = env_or("BENCH_BATCH", 16);
    let prompt_len = 64usize;
    let dtypes: String = env_or("BENCH_DTYPES", "f32,bf16".to_string());
    let repeats: usize = env_or("BENCH_REPEATS", 3);
    tch::set_num_threads(threads);

    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_bench(32_000, 512, 1408, 8, 8, 2).save(dir.path(), 0);
    let prompts: Vec<Vec<i64>> = (0..batch)
        .map(|r| {
            (0..prompt_len)
                .map(|t| ((r * 7919 + t * 104_729) % 32_000) as i64)
                .collect()
        })
        .collect();
    let prompts_path = dir.path().join("prompts.json");
    std::fs::write(&prompts_path, serde_json::to_string(&prompts).unwrap()).unwrap();

    println!(
        "generate benchmark: qwen2 8x512 GQA 8/2, vocab 32000, batch {batch}, prompt {prompt_len}, \
         {new_tokens} new tokens, {threads} threads, best of {repeats}"
    );
    for dtype in dtypes.split(',') {
        let kind = alp_policy::parse_kind(dtype).unwrap();
        let model = CausalLM::load(
            dir.path(),
            &LoadOptions {
                kind,
                ..Default::default()
            },
        )
        .unwrap();
        let mut engine = LocalEngine::new(model, batch);
        let requests: Vec<_> = prompts
            .iter()
            .cloned()
            .map(GenerationRequest::new)
            .collect();
        let params = SamplingParams {
            max_new_tokens: new_tokens,
            seed: 0,
            ..Default::default()
        };
        // Warm-up, as on the Python side.
        let warm = SamplingParams {
            max_new_tokens: 4,
            ..params.clone()
        };
        engine.generate(&requests, &warm).unwrap();
        let mut secs = f64::INFINITY;
        let mut generated = 0;
        for _ in 0..repeats {
            let start = Instant::now();
            let out = engine.generate(&requests, &params).unwrap();
            secs = secs.min(start.elapsed().as_secs_f64());
            generated = out.iter().map(|c| c.completion_ids.len()).sum();
        }
        let ours = generated as f64 / secs;

        let output = oracle::run(
            oracle::python_command()
                .arg(oracle::script("bench_generate.py"))
                .args([
                    dir.path().to_str().unwrap(),
                    prompts_path.to_str().unwrap(),
                    dtype,
                ])
                .arg(threads.to_string())
                .arg(new_tokens.to_string())
                .arg(repeats.to_string())
                .env("OMP_NUM_THREADS", threads.to_string()),
            "the transformers benchmark",
        );
        let hf: serde_json::Value = serde_json::from_str(output.trim()).expect("benchmark JSON");
        let theirs = hf["tokens_per_s"].as_f64().unwrap();
        println!(
            "{dtype:>5}: alp-rl {ours:8.1} tok/s ({generated} tokens in {secs:.2}s) | transformers \
             {theirs:8.1} tok/s | ratio {:.2}x",
            ours / theirs
        );
    }
}
