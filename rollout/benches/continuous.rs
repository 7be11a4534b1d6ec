//! Continuous batching against the chunked schedule on variable completion lengths: 256 requests,
//! batch 64, each request stops after a random length between 8 and 128 tokens (its own limit, as a
//! stop token at that step would), on one random Qwen2-architecture model, in one run. Prints
//! tokens/s for both schedules and the ratio; both produce the same completions (checked here too).
//!
//!     cargo bench -p alp-rollout --bench continuous
//!
//! Environment: BENCH_THREADS (default 2), BENCH_REQUESTS (256), BENCH_BATCH (64), BENCH_DTYPE (f32),
//! BENCH_LAYERS (8), BENCH_HIDDEN (512), BENCH_VOCAB (32000): by default the model of the generation
//! benchmark. Not a test: it asserts nothing about speed.
use std::time::Instant;

use alp_policy::parse_kind;
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams, Scheduling};
use alp_test_support::bench::env_or;
use alp_test_support::tiny_model::TinyModel;

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let n: usize = env_or("BENCH_REQUESTS", 256);
    let batch: usize = env_or("BENCH_BATCH", 64);
    let dtype: String = env_or("BENCH_DTYPE", "f32".to_string());
    let layers: i64 = env_or("BENCH_LAYERS", 8);
    let hidden: i64 = env_or("BENCH_HIDDEN", 512);
    let vocab: u64 = env_or("BENCH_VOCAB", 32000);
    tch::set_num_threads(threads);
    let kind = parse_kind(&dtype).expect("BENCH_DTYPE: f32, bf16 or f16");
    let shape = TinyModel::qwen2_bench(
        vocab as i64,
        hidden,
        hidden * 3,
        layers,
        hidden / 64,
        (hidden / 128).max(1),
    );
    let model = || shape.random_as(kind, 0);
    // A fixed pseudo-random spread of lengths in [8, 128] and prompts of 16 to 48 tokens.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let requests: Vec<GenerationRequest> = (0..n)
        .map(|_| {
            let prompt = 16 + (next() % 33) as usize;
            GenerationRequest {
                prompt_ids: (0..prompt).map(|_| (next() % vocab) as i64).collect(),
                max_new_tokens: Some(8 + (next() % 121) as usize),
                ..Default::default()
            }
        })
        .collect();
    let tokens: usize = requests.iter().map(|r| r.max_new_tokens.unwrap()).sum();
    let params = SamplingParams {
        max_new_tokens: 128,
        seed: 1,
        ..SamplingParams::default()
    };
    println!(
        "continuous batching benchmark: {n} requests, batch {batch}, lengths 8..=128 ({tokens} tokens), \
         qwen2 {layers}x{hidden} vocab {vocab}, {dtype}, {threads} threads"
    );
    let mut results = Vec::new();
    for scheduling in [Scheduling::Chunked, Scheduling::Continuous] {
        let mut engine = LocalEngine::new(model(), batch).with_scheduling(scheduling);
        let start = Instant::now();
        let out = engine.generate(&requests, &params).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let made: usize = out.iter().map(|c| c.completion_ids.len()).sum();
        assert_eq!(made, tokens, "every request ran to its length");
        println!(
            "{scheduling:?}: {:.1} tok/s ({secs:.2}s)",
            made as f64 / secs
        );
        results.push((out, made as f64 / secs));
    }
    let same = results[0]
        .0
        .iter()
        .zip(&results[1].0)
        .filter(|(a, b)| a.completion_ids == b.completion_ids)
        .count();
    println!(
        "continuous / chunked tokens/s: {:.2}x ({same}/{n} completions identical)",
        results[1].1 / results[0].1
    );
}
