//! Continuous batching against the chunked schedule on variable completion lengths: 256 requests,
//! batch 64, each request stops after a random length between 8 and 128 tokens (its own limit, as a
//! stop token at that step would), in one run, on two models: the built-in default's (`tiny`: 2
//! layers, hidden 64, the char tokenizer's 101 tokens), where a decode step costs about the same
//! whatever the number of rows, and the generation benchmark's 8x512 model (vocab 32000), where a CPU
//! step is compute-bound. Prints tokens/s for both schedules (fastest of BENCH_REPEATS rounds after a
//! warm-up, the two schedules alternating) and the ratio; both produce the same completions (counted
//! here too).
//!
//!     cargo bench -p alp-rollout --bench continuous
//!
//! On a GPU a decode step costs about the same whatever the number of rows, which is where
//! continuous batching pays most; `scripts/gpu-check.sh` runs it there on a Qwen2.5-0.5B shape.
//!
//! Environment: BENCH_THREADS (default 2), BENCH_REQUESTS (256), BENCH_BATCH (64), BENCH_DTYPE (f32),
//! BENCH_MODELS (tiny,8x512; also qwen2.5-0.5b: 24 layers, hidden 896, GQA 14/2, Qwen's vocabulary),
//! BENCH_REPEATS (3), BENCH_DEVICE (cpu, or cuda: the first GPU). Not a test: it asserts nothing
//! about speed.
use std::time::Instant;

use alp_policy::parse_kind;
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams, Scheduling};
use alp_test_support::bench::{cpu_flags, device, device_name, env_or, libtorch_isa_caps};
use alp_test_support::tiny_model::TinyModel;

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let n: usize = env_or("BENCH_REQUESTS", 256);
    let batch: usize = env_or("BENCH_BATCH", 64);
    let dtype: String = env_or("BENCH_DTYPE", "f32".to_string());
    let models: String = env_or("BENCH_MODELS", "tiny,8x512".to_string());
    let repeats: usize = env_or("BENCH_REPEATS", 3);
    let device = device();
    tch::set_num_threads(threads);
    let kind = parse_kind(&dtype).expect("BENCH_DTYPE: f32, bf16 or f16");
    println!(
        "continuous batching benchmark: {n} requests, batch {batch}, lengths 8..=128, {dtype}, \
         {threads} threads, best of {repeats}, on {}; cpu flags: {}{}",
        device_name(device),
        cpu_flags(),
        libtorch_isa_caps()
    );
    for name in models.split(',') {
        let shape = match name {
            "tiny" => TinyModel::math_default(),
            "8x512" => TinyModel::qwen2_bench(32000, 512, 1536, 8, 8, 4),
            "qwen2.5-0.5b" => TinyModel::qwen2_5_0_5b(),
            other => panic!("BENCH_MODELS: unknown model {other:?} (tiny, 8x512, qwen2.5-0.5b)"),
        };
        let cfg = shape.config();
        let (vocab, hidden, layers) = (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers);
        let requests = variable_length_requests(n, vocab as u64);
        let lengths: Vec<usize> = requests.iter().map(|r| r.max_new_tokens.unwrap()).collect();
        let tokens: usize = lengths.iter().sum();
        let params = SamplingParams {
            max_new_tokens: 128,
            seed: 1,
            ..SamplingParams::default()
        };
        let mut engines: Vec<(Scheduling, LocalEngine)> =
            [Scheduling::Chunked, Scheduling::Continuous]
                .into_iter()
                .map(|s| {
                    (
                        s,
                        LocalEngine::new(shape.random_on(kind, device, 0), batch)
                            .with_scheduling(s),
                    )
                })
                .collect();
        // Warm-up of both (allocations, kernel selection) on the first requests.
        for (_, engine) in engines.iter_mut() {
            engine.generate(&requests[..batch.min(n)], &params).unwrap();
        }
        let mut best = [f64::INFINITY; 2];
        let mut stats = [alp_rollout::DecodeStats::default(); 2];
        let mut outs = Vec::new();
        for _ in 0..repeats {
            outs.clear();
            for (k, (_, engine)) in engines.iter_mut().enumerate() {
                let start = Instant::now();
                let out = engine.generate(&requests, &params).unwrap();
                best[k] = best[k].min(start.elapsed().as_secs_f64());
                stats[k] = engine.last_decode_stats();
                let made: usize = out.iter().map(|c| c.completion_ids.len()).sum();
                assert_eq!(made, tokens, "every request ran to its length");
                outs.push(out);
            }
        }
        let same = outs[0]
            .iter()
            .zip(&outs[1])
            .filter(|(a, b)| a.completion_ids == b.completion_ids)
            .count();
        let rate = |k: usize| tokens as f64 / best[k];
        println!(
            "{name:>6} (qwen2 {layers}x{hidden}, vocab {vocab}, {tokens} tokens): chunked {:.1} tok/s \
             ({:.2}s) | continuous {:.1} tok/s ({:.2}s) | continuous / chunked {:.2}x \
             ({same}/{n} completions identical)",
            rate(0),
            best[0],
            rate(1),
            best[1],
            rate(1) / rate(0)
        );
        let rows_per_step =
            |s: &alp_rollout::DecodeStats| s.row_steps as f64 / s.decode_steps as f64;
        println!(
            "        decode steps: chunked {} ({:.1} rows each, {} prefills) | continuous {} ({:.1} rows \
             each, {} prefills) | chunked / continuous {:.2}x: the ratio if a step cost the same \
             whatever its rows",
            stats[0].decode_steps,
            rows_per_step(&stats[0]),
            stats[0].prefills,
            stats[1].decode_steps,
            rows_per_step(&stats[1]),
            stats[1].prefills,
            stats[0].decode_steps as f64 / stats[1].decode_steps as f64
        );
        let ideal = ideal_continuous_steps(&lengths, batch);
        println!(
            "        an ideal continuous schedule (every freed slot refilled before the next step, prefills \
             free) takes {ideal} steps: chunked / ideal {:.2}x, the most any continuous batching \
             gives on these lengths",
            stats[0].decode_steps as f64 / ideal as f64
        );
    }
}

/// Decode steps of continuous batching at its best, counted the engine's way (a request of length
/// `n` is sampled `n` times, its first token from the prefill, and a step feeds every active row its
/// last token; a row whose last token has been sampled leaves): the slot of a finished request goes to
/// the next waiting one before the next step, and a prefill costs nothing. A count independent of
/// the engine, the ceiling of its schedule whatever a step costs.
fn ideal_continuous_steps(lengths: &[usize], batch: usize) -> u64 {
    let mut waiting = lengths.iter().copied().filter(|&n| n > 0);
    // Tokens each active row has left to sample.
    let mut left: Vec<usize> = waiting.by_ref().take(batch).collect();
    let mut steps = 0;
    loop {
        // Sample: every active row draws a token; rows that drew their last give their slot away.
        for l in left.iter_mut() {
            *l -= 1;
        }
        left.retain(|&l| l > 0);
        while left.len() < batch {
            match waiting.next() {
                // A newcomer's first token comes from its prefill, sampled before the next step.
                Some(n) if n > 1 => left.push(n - 1),
                Some(_) => {}
                None => break,
            }
        }
        if left.is_empty() {
            return steps;
        }
        steps += 1;
    }
}

/// A fixed pseudo-random spread of lengths in [8, 128] and prompts of 16 to 48 tokens.
fn variable_length_requests(n: usize, vocab: u64) -> Vec<GenerationRequest> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let prompt = 16 + (next() % 33) as usize;
            GenerationRequest {
                prompt_ids: (0..prompt).map(|_| (next() % vocab) as i64).collect(),
                max_new_tokens: Some(8 + (next() % 121) as usize),
                ..Default::default()
            }
        })
        .collect()
}
