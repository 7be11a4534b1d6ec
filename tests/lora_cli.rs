//! LoRA adapters on the command line (issue 26): `alp-rl export` merges a PEFT adapter into its base
//! and writes a checkpoint that transformers loads with the logits of PEFT's own `merge_and_unload()`;
//! `generate --adapter` and `eval --adapter` act as that merged checkpoint does; a malformed adapter
//! is refused with its file and key, exit status 1 and nothing written.
use std::path::{Path, PathBuf};
use std::process::Output;

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::peft;
use serde_json::{json, Value};

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

/// f32 logits of the exported checkpoint against PEFT's merged model (the acceptance bound).
const TOL: f64 = 1e-5;

/// Prompts as token ids of the tiny model's character vocabulary.
fn prompts() -> Vec<Vec<i64>> {
    vec![vec![1, 5, 9, 12, 3, 20], vec![7, 2, 30]]
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny random model (`alp-rl new-model`) and a PEFT adapter on it with random B (so it changes
/// the logits): rank 4, alpha 16, every attention and MLP projection.
fn base_and_adapter(dir: &Path) -> (PathBuf, PathBuf) {
    let (base, adapter) = (dir.join("base"), dir.join("adapter"));
    ALP_RL.new_model(&base, &["--seed", "3"]);
    peft::run_jobs(
        &prompts(),
        vec![json!({
            "op": "make_adapter", "model": s(&base), "out": s(&adapter), "r": 4, "lora_alpha": 16.0,
            "target_modules": "all-linear", "use_rslora": false, "seed": 11, "random_b": true,
        })],
    );
    (base, adapter)
}

fn export(base: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "export",
        "--model",
        s(base),
        "--adapter",
        s(adapter),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    ALP_RL.output(args)
}

/// `alp-rl generate --greedy` on the prompts: (completion ids, log-probs) per prompt.
fn generate(model: &Path, extra: &[&str]) -> Vec<(Vec<i64>, Vec<f64>)> {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts()
        .iter()
        .map(|p| json!({ "prompt_ids": p }).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut args = vec!["generate", "--model", s(model), "--prompts", s(&file)];
    args.extend_from_slice(&["--greedy", "--max-new-tokens", "12"]);
    args.extend_from_slice(extra);
    ok(ALP_RL.output(args))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let ids = serde_json::from_value(v["completion_ids"].clone()).unwrap();
            (ids, serde_json::from_value(v["logprobs"].clone()).unwrap())
        })
        .collect()
}

/// Logits per prompt: `[position][vocab]`.
type Logits = Vec<Vec<Vec<f64>>>;

fn max_abs_diff(a: &Value, b: &Value) -> f64 {
    let parse = |v: &Value| -> Logits { serde_json::from_value(v.clone()).unwrap() };
    let (a, b) = (parse(a), parse(b));
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (pa, pb) in a.iter().zip(&b) {
        assert_eq!(
            (pa.len(), pa[0].len()),
            (pb.len(), pb[0].len()),
            "logit shapes"
        );
        for (ra, rb) in pa.iter().zip(pb) {
            for (x, y) in ra.iter().zip(rb) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    worst
}

#[test]
fn export_writes_the_checkpoint_peft_merges_and_generate_adapter_matches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, adapter) = base_and_adapter(tmp.path());
    let out = tmp.path().join("merged");
    ok(export(&base, &adapter, &out, &[]));
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(file).is_file(), "export wrote no {file}");
    }
    assert!(!out.join("adapter_config.json").exists());

    // transformers loads the export as a plain model; its logits are PEFT's merge_and_unload().
    let results = peft::run_jobs(
        &prompts(),
        vec![
            json!({"op": "logits", "model": s(&base), "adapter": s(&adapter), "merged": true}),
            json!({"op": "logits", "model": s(&out), "adapter": null}),
            json!({"op": "logits", "model": s(&base), "adapter": null}),
        ],
    );
    let diff = max_abs_diff(&results[0]["logits"], &results[1]["logits"]);
    assert!(diff <= TOL, "export vs PEFT merged: max |diff| {diff}");
    let moved = max_abs_diff(&results[0]["logits"], &results[2]["logits"]);
    assert!(
        moved > 1e-2,
        "the adapter changes the logits (max |diff| {moved})"
    );

    // generate --adapter is the exported checkpoint; the base alone generates otherwise.
    let with_adapter = generate(&base, &["--adapter", s(&adapter)]);
    let merged = generate(&out, &[]);
    let plain = generate(&base, &[]);
    for (i, ((a, m), p)) in with_adapter.iter().zip(&merged).zip(&plain).enumerate() {
        assert_eq!(
            a.0, m.0,
            "prompt {i}: --adapter and the export give other tokens"
        );
        for (x, y) in a.1.iter().zip(&m.1) {
            assert!((x - y).abs() <= TOL, "prompt {i}: log-probs {x} vs {y}");
        }
        let same_as_base = a.0 == p.0 && a.1.iter().zip(&p.1).all(|(x, y)| (x - y).abs() < 1e-3);
        assert!(!same_as_base, "prompt {i}: the adapter does not act");
    }

    // bf16: --adapter merges into the bf16 copy's weights, as PEFT's merge_and_unload() on a bf16
    // base does (its checkpoint, read here, is the reference); the export merges in f32 and rounds
    // once, as the f32 export read as bf16 does.
    let bf16 = ["--dtype", "bf16"];
    let peft_bf16 = tmp.path().join("peft-merged-bf16");
    peft::run_jobs(
        &prompts(),
        vec![json!({
            "op": "merge_save", "model": s(&base), "adapter": s(&adapter), "out": s(&peft_bf16),
        })],
    );
    let with_adapter = generate(&base, &["--adapter", s(&adapter), "--dtype", "bf16"]);
    assert_eq!(
        with_adapter,
        generate(&peft_bf16, &bf16),
        "bf16 --adapter vs PEFT"
    );
    let out_bf16 = tmp.path().join("merged-bf16");
    ok(export(&base, &adapter, &out_bf16, &bf16));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out_bf16.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(
        generate(&out_bf16, &bf16),
        generate(&out, &bf16),
        "bf16 export"
    );

    // eval --adapter reports what eval of the export reports.
    let eval = |model: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            s(model),
            "--env",
            "arithmetic",
            "--greedy",
        ];
        args.extend_from_slice(&["--problems", "3", "--max-new-tokens", "8"]);
        args.extend_from_slice(extra);
        serde_json::from_str::<Value>(&ok(ALP_RL.output(args))).unwrap()
    };
    assert_eq!(eval(&base, &["--adapter", s(&adapter)]), eval(&out, &[]));

    // An existing non-empty OUT is never overwritten.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let refused = export(&base, &adapter, &out, &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}

/// Renames tensor `from` to `to` in a safetensors file (its JSON header rewritten, data unchanged).
fn rename_tensor(path: &Path, from: &str, to: &str) {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + len]).unwrap();
    let quoted = format!("\"{from}\"");
    assert!(header.contains(&quoted), "{from} is in the file");
    let header = header.replace(&quoted, &format!("\"{to}\""));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(path, out).unwrap();
}

/// Asserts a command failed as a refusal: exit status 1, no panic, stderr naming each of `expect`.
fn refused(out: &Output, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "stderr lacks {e:?}: {stderr}");
    }
}

#[test]
fn a_malformed_adapter_is_refused_with_its_file_and_key_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, adapter) = base_and_adapter(tmp.path());
    let key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
    let renamed = "base_model.model.model.layers.1.self_attn.q_prj.lora_A.weight";
    rename_tensor(&adapter.join("adapter_model.safetensors"), key, renamed);
    let expect = ["--adapter", "adapter_model.safetensors", renamed];

    let written = tmp.path().join("completions.jsonl");
    let args = ["generate", "--model", s(&base), "--prompt-ids", "1,2,3"];
    let out =
        ALP_RL.output(
            args.iter()
                .copied()
                .chain(["--adapter", s(&adapter), "--out", s(&written)]),
        );
    refused(&out, &expect);
    assert!(!written.exists(), "generate wrote {}", written.display());

    let args = [
        "eval",
        "--model",
        s(&base),
        "--env",
        "arithmetic",
        "--adapter",
        s(&adapter),
    ];
    refused(&ALP_RL.output(args), &expect);

    let out_dir = tmp.path().join("merged");
    refused(&export(&base, &adapter, &out_dir, &[]), &expect);
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("merged"))
        .collect();
    assert!(left.is_empty(), "export left {left:?} behind");
}
