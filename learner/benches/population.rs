//! EGGROLL population generation against plain batched generation on the same model, batch and
//! length: every row is its own population member (rank-1 perturbations through the engine's
//! per-row hooks) versus the unperturbed model. Prints tokens/s of both, the measured ratio, and the
//! ratio the extra memory traffic predicts (weight bytes / (weight bytes + factor bytes read per
//! step)), plus the memory the perturbations take while the call runs:
//!
//!     cargo bench -p alp-learner --bench population
//!
//! Environment: BENCH_THREADS (default 2), BENCH_POPULATIONS (64,256), BENCH_DTYPES (f32,bf16),
//! BENCH_NEW_TOKENS (32), BENCH_PROMPT (16), BENCH_RANK (1), BENCH_REPEATS (3: each side reports its
//! fastest call, since a shared machine only ever adds time). Model: the 8x512 generation-benchmark
//! shape (vocab 32000). Not a test: it asserts nothing about speed.
use std::time::Instant;

use alp_learner::eggroll::{evolved_matrices, Population, PopulationFactors};
use alp_policy::parse_kind;
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams};
use alp_test_support::bench::env_or;
use alp_test_support::tiny_model::TinyModel;
use tch::Device;

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let populations: String = env_or("BENCH_POPULATIONS", "64,256".to_string());
    let dtypes: String = env_or("BENCH_DTYPES", "f32,bf16".to_string());
    let new_tokens: usize = env_or("BENCH_NEW_TOKENS", 32);
    let prompt_len: usize = env_or("BENCH_PROMPT", 16);
    let rank: i64 = env_or("BENCH_RANK", 1);
    let repeats: usize = env_or("BENCH_REPEATS", 3);
    tch::set_num_threads(threads);
    let shape = TinyModel::qwen2_bench(32_000, 512, 1408, 8, 8, 2);
    println!(
        "population benchmark: qwen2 8x512 vocab 32000, prompt {prompt_len}, {new_tokens} new tokens \
         (greedy), rank {rank}, {threads} threads, best of {repeats}"
    );
    for dtype in dtypes.split(',') {
        let kind = parse_kind(dtype).unwrap();
        let model = || shape.random_as(kind, 0);
        let probe = model();
        let matrices = evolved_matrices(&probe);
        let weight_bytes: usize = probe
            .named_parameters()
            .iter()
            .map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes())
            .sum();
        for pop in populations.split(',').map(|p| p.parse::<usize>().unwrap()) {
            let requests: Vec<GenerationRequest> = (0..pop)
                .map(|r| GenerationRequest {
                    prompt_ids: (0..prompt_len)
                        .map(|t| ((r * 7919 + t * 104_729) % 32_000) as i64)
                        .collect(),
                    max_new_tokens: Some(new_tokens),
                    stop_token_ids: Some(Vec::new()),
                    member: None,
                    stream: None,
                })
                .collect();
            let params = SamplingParams {
                greedy: true,
                max_new_tokens: new_tokens,
                ..SamplingParams::default()
            };
            let mut engine = LocalEngine::new(model(), pop);
            let population = Population {
                seed: 0,
                epoch: 0,
                sigma: 1e-3,
                rank,
                matrices: matrices.clone(),
            };
            let members: Vec<usize> = (0..pop).collect();
            // Warm-up, then the fastest of `repeats` calls each (factors built inside the timing).
            let _ = engine.generate(&requests[..pop.min(8)], &params).unwrap();
            let (mut plain_s, mut pop_s) = (f64::INFINITY, f64::INFINITY);
            let (mut plain, mut perturbed, mut factor_bytes) = (Vec::new(), Vec::new(), 0);
            for _ in 0..repeats {
                let start = Instant::now();
                plain = engine.generate(&requests, &params).unwrap();
                plain_s = plain_s.min(start.elapsed().as_secs_f64());
                let start = Instant::now();
                let factors = PopulationFactors::new(&population, &members, Device::Cpu);
                perturbed = engine
                    .generate_with_hooks(&requests, &params, &factors)
                    .unwrap();
                pop_s = pop_s.min(start.elapsed().as_secs_f64());
                factor_bytes = factors.bytes();
            }
            let tokens: usize = plain.iter().map(|c| c.completion_ids.len()).sum();
            assert_eq!(
                tokens,
                perturbed
                    .iter()
                    .map(|c| c.completion_ids.len())
                    .sum::<usize>()
            );
            let predicted = weight_bytes as f64 / (weight_bytes + factor_bytes) as f64;
            let measured = plain_s / pop_s;
            println!(
                "{dtype:>5} population {pop:>4}: plain {:8.1} tok/s | population {:8.1} tok/s | \
                 ratio {measured:.3} (predicted by traffic {predicted:.3}) | perturbations {:.1} MB \
                 while the call runs (weights {:.1} MB)",
                tokens as f64 / plain_s,
                tokens as f64 / pop_s,
                factor_bytes as f64 / 1e6,
                weight_bytes as f64 / 1e6,
            );
        }
    }
}
