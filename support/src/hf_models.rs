//! `scripts/oracles/hf_models.py`: tiny random checkpoints written by transformers' `save_pretrained`,
//! transformers' logits and greedy generations on them, and its logits warpers.
use std::path::Path;

use serde::Deserialize;

use crate::oracle;

/// Runs `hf_models.py ARGS` offline on one thread, panicking with its stderr on failure.
pub fn run(args: &[&str]) {
    oracle::run(
        oracle::python_command()
            .arg(oracle::script("hf_models.py"))
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("OMP_NUM_THREADS", "1"),
        &format!("oracle {args:?}"),
    );
}

/// A tiny random HF checkpoint of `arch` (`qwen2`, `qwen3`, `llama`) with 4 attention heads and
/// `kv_heads` KV heads, written by `transformers.save_pretrained` into `dir`.
pub fn make_model(arch: &str, dir: &Path, tied: bool, kv_heads: i64) {
    run(&make_args(arch, dir, tied, &kv_heads.to_string()));
}

fn make_args<'a>(arch: &'a str, dir: &'a Path, tied: bool, kv: &'a str) -> Vec<&'a str> {
    let mut args = vec!["make", arch, dir.to_str().unwrap(), "--kv-heads", kv];
    if tied {
        args.push("--tied");
    }
    args
}

/// [`make_model`] then [`reference`] on it, in one Python process (one torch import instead of two).
pub fn make_model_with_reference(
    arch: &str,
    dir: &Path,
    tied: bool,
    kv_heads: i64,
    prompts: &[Vec<i64>],
    new_tokens: usize,
) -> Vec<OracleResult> {
    let kv = kv_heads.to_string();
    with_cases(prompts, new_tokens, |cases, out| {
        let mut args = make_args(arch, dir, tied, &kv);
        args.extend(["--run", cases, out]);
        run(&args);
    })
}

/// Writes the cases file, lets `call` run the oracle with (cases path, result path), reads the result.
fn with_cases(
    prompts: &[Vec<i64>],
    new_tokens: usize,
    call: impl FnOnce(&str, &str),
) -> Vec<OracleResult> {
    let tmp = tempfile::tempdir().unwrap();
    let cases = tmp.path().join("cases.json");
    let out = tmp.path().join("out.json");
    let body = serde_json::json!({"prompts": prompts, "new_tokens": new_tokens});
    std::fs::write(&cases, body.to_string()).unwrap();
    call(cases.to_str().unwrap(), out.to_str().unwrap());
    #[derive(Deserialize)]
    struct Out {
        results: Vec<OracleResult>,
    }
    let parsed: Out = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    parsed.results
}

/// What transformers computes for one prompt.
#[derive(Deserialize)]
pub struct OracleResult {
    /// Logits of the unpadded prompt, `[len][vocab]`.
    pub logits: Vec<Vec<f32>>,
    #[serde(default)]
    pub greedy_ids: Vec<i64>,
    #[serde(default)]
    pub greedy_logprobs: Vec<f64>,
}

/// HF logits of each prompt run alone (no padding), and `new_tokens` greedy tokens with log-probs.
pub fn reference(model_dir: &Path, prompts: &[Vec<i64>], new_tokens: usize) -> Vec<OracleResult> {
    with_cases(prompts, new_tokens, |cases, out| {
        run(&["run", model_dir.to_str().unwrap(), cases, out])
    })
}

/// The model configurations the parity suites cover: (arch, tied embeddings, kv heads of 4 heads).
pub const CASES: &[(&str, bool, i64)] = &[
    ("qwen2", false, 2),
    ("qwen2", true, 4),
    ("qwen3", false, 2),
    ("qwen3", true, 1),
    ("llama", false, 2),
    ("llama", true, 1),
];

/// Ragged prompts over a 256-token vocabulary.
pub fn ragged_prompts() -> Vec<Vec<i64>> {
    vec![
        vec![1, 17, 42, 99, 3, 250, 7, 8, 120, 64, 33],
        vec![1, 5, 200],
        vec![1, 77, 78, 79, 80, 81, 82],
        vec![9],
    ]
}
