//! Engine throughput against transformers `generate` on the same random Qwen2-architecture model
//! (8 layers, hidden 512, GQA 8/2 heads), batch 16, prompt length 64, 128 new tokens, the same thread
//! count, f32 and bf16, with a 32k vocabulary and with Qwen's real one (151,936). Prints, in one run,
//! tokens/s for both and the ratio, how our bf16 model computes (native bf16 kernels, or bf16-rounded
//! f32 on a CPU without bf16 arithmetic: `alp_policy::Bf16Compute`), and the fraction of the
//! memory-bandwidth limit each of our decode steps reaches: the bytes of weights a step reads (every
//! parameter but the embedding table, of which a step reads 16 rows) divided by this machine's read
//! bandwidth, which the benchmark measures first (a libtorch sum over 1 GiB, best of 5), over the
//! measured time per step.
//!
//!     cargo bench -p alp-rollout --bench generate
//!
//! Environment: BENCH_THREADS (default 2), BENCH_NEW_TOKENS (128), BENCH_BATCH (16), BENCH_DTYPES
//! (f32,bf16), BENCH_VOCABS (32000,151936), BENCH_BF16 (auto: `model.bf16_compute`'s choice; native or
//! rounded-f32 to force one), BENCH_REPEATS (3: each side reports its fastest timed run, since a shared
//! machine only ever adds time), BENCH_ROUNDS (2: rounds alternating the two sides, each side's best
//! over all rounds reported, and the ratio of each round printed beside), BENCH_DEVICE (cpu, or
//! cuda: both sides and the bandwidth measurement on the first GPU), BENCH_SHAPE (8x512, or qwen2.5-0.5b: 24 layers, hidden 896, GQA 14/2, MLP 4864,
//! tied embeddings, Qwen's vocabulary whatever BENCH_VOCABS says), BENCH_REFERENCE (1; 0 skips
//! transformers where it is not installed, and says so). Not a test: it asserts nothing about speed.
use std::time::Instant;

use alp_policy::{few_rows_gemm, Bf16Compute, CausalLM, LoadOptions};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams};
use alp_test_support::bench::{self, cpu_flags, env_or, libtorch_isa_caps};
use alp_test_support::oracle;
use alp_test_support::tiny_model::TinyModel;
use tch::{Device, Kind, Tensor};

/// Read bandwidth of `device` in bytes/s: the fastest of 5 sums over a 1 GiB f32 tensor (far beyond
/// any cache; the sum's value crossing to the host waits for the device).
fn read_bandwidth(device: Device) -> f64 {
    let t = Tensor::ones([1 << 28], (Kind::Float, device));
    let _ = t.sum(Kind::Float);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let s = f64::try_from(t.sum(Kind::Float)).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        assert!(s > 0.0);
    }
    (t.numel() * 4) as f64 / best
}

/// Bytes of weights one decode step reads: every parameter but the embedding table (which a tied
/// model reads whole, as its LM head).
fn weight_bytes_per_step(model: &CausalLM) -> f64 {
    let tied = model.config().tie_word_embeddings;
    model
        .named_parameters()
        .iter()
        .filter(|(name, _)| tied || name != "model.embed_tokens.weight")
        .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as f64)
        .sum()
}

/// The benchmark's model shape for a vocabulary: `BENCH_SHAPE` 8x512 (the default) or qwen2.5-0.5b.
fn shape(name: &str, vocab: i64) -> (String, TinyModel) {
    match name {
        "8x512" => (
            "qwen2 8x512 GQA 8/2".into(),
            TinyModel::qwen2_bench(vocab, 512, 1408, 8, 8, 2),
        ),
        "qwen2.5-0.5b" => (
            "qwen2 24x896 GQA 14/2 (Qwen2.5-0.5B's shape), tied".into(),
            TinyModel::qwen2_5_0_5b(),
        ),
        other => panic!("BENCH_SHAPE: 8x512 or qwen2.5-0.5b, not {other:?}"),
    }
}

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let new_tokens: usize = env_or("BENCH_NEW_TOKENS", 128);
    let batch: usize = env_or("BENCH_BATCH", 16);
    let prompt_len = 64usize;
    let dtypes: String = env_or("BENCH_DTYPES", "f32,bf16".to_string());
    let vocabs: String = env_or("BENCH_VOCABS", "32000,151936".to_string());
    let bf16: Bf16Compute = env_or("BENCH_BF16", Bf16Compute::Auto);
    let repeats: usize = env_or("BENCH_REPEATS", 3);
    let rounds: usize = env_or("BENCH_ROUNDS", 2).max(1);
    let device = bench::device();
    let shape_name: String = env_or("BENCH_SHAPE", "8x512".to_string());
    let reference = env_or("BENCH_REFERENCE", 1) != 0;
    tch::set_num_threads(threads);
    let bandwidth = read_bandwidth(device);
    println!(
        "generate benchmark: {}, batch {batch}, prompt {prompt_len}, {new_tokens} new tokens, \
         {threads} threads, best of {repeats} in each of {rounds} alternating rounds, on {device:?}; \
         few-rows kernel {:?}; cpu flags: {}{}; read bandwidth {:.1} GB/s",
        shape(&shape_name, 32_000).0,
        few_rows_gemm::isa(),
        cpu_flags(),
        libtorch_isa_caps(),
        bandwidth / 1e9
    );
    for vocab in vocabs.split(',') {
        let vocab: i64 = vocab
            .trim()
            .parse()
            .expect("BENCH_VOCABS: comma-separated integers");
        let dir = tempfile::tempdir().unwrap();
        let model = shape(&shape_name, vocab).1;
        let vocab = model.config().vocab_size;
        model.save(dir.path(), 0);
        let prompts: Vec<Vec<i64>> = (0..batch)
            .map(|r| {
                (0..prompt_len)
                    .map(|t| ((r * 7919 + t * 104_729) as i64) % vocab)
                    .collect()
            })
            .collect();
        let prompts_path = dir.path().join("prompts.json");
        std::fs::write(&prompts_path, serde_json::to_string(&prompts).unwrap()).unwrap();
        for dtype in dtypes.split(',') {
            run_case(
                dir.path(),
                &prompts,
                &prompts_path,
                Case {
                    vocab,
                    dtype,
                    bf16,
                    device,
                    reference,
                },
                threads,
                new_tokens,
                repeats,
                rounds,
                bandwidth,
            );
        }
    }
}

/// What one line of the benchmark runs.
struct Case<'a> {
    vocab: i64,
    dtype: &'a str,
    bf16: Bf16Compute,
    device: Device,
    /// Whether transformers runs too.
    reference: bool,
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    dir: &std::path::Path,
    prompts: &[Vec<i64>],
    prompts_path: &std::path::Path,
    case: Case,
    threads: i32,
    new_tokens: usize,
    repeats: usize,
    rounds: usize,
    bandwidth: f64,
) {
    let Case {
        vocab,
        dtype,
        bf16,
        device,
        reference,
    } = case;
    let kind = alp_policy::parse_kind(dtype).unwrap();
    let model = CausalLM::load(dir, &LoadOptions { kind, bf16, device }).unwrap();
    let compute = model.precision().describe();
    let step_bytes = weight_bytes_per_step(&model);
    let mut engine = LocalEngine::new(model, prompts.len());
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
    // Rounds alternate our side and transformers' (each its best of `repeats`), so that a shared
    // machine's slow spell falls on both; each side reports its best over all rounds.
    let mut secs = f64::INFINITY;
    let mut generated = 0;
    let mut theirs = 0.0f64;
    let mut round_ratios = Vec::new();
    for _ in 0..rounds {
        let mut round_secs = f64::INFINITY;
        for _ in 0..repeats {
            let start = Instant::now();
            let out = engine.generate(&requests, &params).unwrap();
            round_secs = round_secs.min(start.elapsed().as_secs_f64());
            generated = out.iter().map(|c| c.completion_ids.len()).sum();
        }
        secs = secs.min(round_secs);
        if reference {
            let output = oracle::run(
                oracle::python_command()
                    .arg(oracle::script("bench_generate.py"))
                    .args([dir.to_str().unwrap(), prompts_path.to_str().unwrap(), dtype])
                    .arg(threads.to_string())
                    .arg(new_tokens.to_string())
                    .arg(repeats.to_string())
                    .arg(bench::device_name(device))
                    .env("OMP_NUM_THREADS", threads.to_string()),
                "the transformers benchmark",
            );
            let hf: serde_json::Value =
                serde_json::from_str(output.trim()).expect("benchmark JSON");
            let round_theirs = hf["tokens_per_s"].as_f64().unwrap();
            theirs = theirs.max(round_theirs);
            round_ratios.push(format!(
                "{:.2}",
                generated as f64 / round_secs / round_theirs
            ));
        }
    }
    let ours = generated as f64 / secs;
    // The prefill is counted in the step time: the fraction is a lower bound.
    let step_s = secs / new_tokens as f64;
    let fraction = step_bytes / bandwidth / step_s;

    let versus = if reference {
        format!(
            "transformers {theirs:8.1} tok/s | ratio {:.2}x (per round: {})",
            ours / theirs,
            round_ratios.join(", ")
        )
    } else {
        "transformers not run (BENCH_REFERENCE=0)".to_string()
    };
    println!(
        "vocab {vocab:>6} {dtype:>5}: alp-rl {ours:8.1} tok/s ({generated} tokens in {secs:.2}s, \
         {:.1} ms/step, {:.0} MB of weights/step = {fraction:.2} of the bandwidth limit) | {versus} | \
         ours computes in {compute}",
        step_s * 1e3,
        step_bytes / 1e6,
    );
}
