//! Test support: HF transformers (in the venv that `scripts/setup.sh` makes) as the reference oracle.
//! Shared by the policy and rollout test suites through `#[path]`.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

pub fn workspace_root() -> PathBuf {
    // Every crate sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent folder")
        .to_path_buf()
}

/// The venv's Python; a missing venv is an error with the fix, never a silent skip.
pub fn python() -> PathBuf {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to create the venv with torch and transformers",
        python.display()
    );
    python
}

/// Runs `scripts/oracles/hf_models.py ARGS`, panicking with its stderr on failure.
pub fn hf(args: &[&str]) {
    let script = workspace_root().join("scripts/oracles/hf_models.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run the python oracle");
    assert!(
        out.status.success(),
        "oracle {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny random HF checkpoint written by `transformers.save_pretrained`.
pub fn make_model(arch: &str, dir: &Path, tied: bool, kv_heads: i64) {
    hf(&make_args(arch, dir, tied, &kv_heads.to_string()));
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
        hf(&args);
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
        hf(&["run", model_dir.to_str().unwrap(), cases, out])
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
