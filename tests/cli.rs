//! The `alp-rl` binary as a user runs it: `new-model`, `generate` and `env`, and how it reports errors.
use std::path::Path;
use std::process::Command;

use alp_test_support::cli::{ok, AlpRl};
use alp_tokenizer::Tokenizer;
use serde_json::Value;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A tiny random model (seed 3) in `dir`.
fn new_model(dir: &Path) {
    ALP_RL.new_model(dir, &["--seed", "3"]);
}

#[test]
fn generate_prints_one_json_object_per_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    new_model(&model);
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"1+1=\"}\n{\"prompt_ids\": [5, 6, 7]}\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    let out = tmp.path().join("out.jsonl");
    ok(ALP_RL.output([
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "12",
        "--seed",
        "5",
        "--batch-size",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]));
    let results = lines(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(results.len(), 3);
    let tok = Tokenizer::from_dir(&model).unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
        let ids: Vec<u32> = serde_json::from_value(r["completion_ids"].clone()).unwrap();
        let lps: Vec<f64> = serde_json::from_value(r["logprobs"].clone()).unwrap();
        assert_eq!(ids.len(), lps.len(), "one log-prob per completion token");
        assert!(!ids.is_empty() && ids.len() <= 12);
        assert!(lps.iter().all(|&lp| lp <= 0.0 && lp.is_finite()));
        assert_eq!(r["text"], tok.decode(&ids, true).unwrap());
        let reason = r["finish_reason"].as_str().unwrap();
        assert!(
            reason == "length" || (reason == "stop" && ids.last() == tok.eos_token_id().as_ref())
        );
    }
    // Text is encoded as is; messages go through the chat template.
    let text_ids: Vec<u32> = serde_json::from_value(results[0]["prompt_ids"].clone()).unwrap();
    assert_eq!(text_ids, tok.encode("1+1=", true).unwrap());
    assert_eq!(results[1]["prompt_ids"], serde_json::json!([5, 6, 7]));
    let chat_ids: Vec<u32> = serde_json::from_value(results[2]["prompt_ids"].clone()).unwrap();
    let msgs = [serde_json::json!({"role": "user", "content": "hi"})];
    assert_eq!(
        chat_ids,
        tok.apply_chat_template(&msgs, None, true, &Default::default())
            .unwrap()
    );

    // The same seed reproduces the same completions on stdout.
    let again = lines(&ok(ALP_RL.output([
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "12",
        "--seed",
        "5",
        "--batch-size",
        "2",
    ])));
    for (a, b) in results.iter().zip(&again) {
        assert_eq!(a["completion_ids"], b["completion_ids"]);
    }
}

#[test]
fn generate_greedy_with_prompt_ids_records_raw_logprobs() {
    let tmp = tempfile::tempdir().unwrap();
    new_model(tmp.path());
    let out = lines(&ok(ALP_RL.output([
        "generate",
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--greedy",
        "--max-new-tokens",
        "4",
        "--dtype",
        "bf16",
    ])));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["logprob_mode"], "raw");
    assert_eq!(out[0]["prompt_ids"], serde_json::json!([1, 2, 3]));
}

#[test]
fn generate_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = ALP_RL.output([
        "generate",
        "--model",
        missing.to_str().unwrap(),
        "--prompt-ids",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("config.json"), "{err}");

    new_model(tmp.path());
    let out = ALP_RL.output([
        "generate",
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt-ids",
        "1",
        "--dtype",
        "f64",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("f64"));
    let out = ALP_RL.output([
        "generate",
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt-ids",
        "1",
        "--top-p",
        "0",
    ]);
    // Named as the flag the user typed, like a config key is named by its key.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--top-p") && err.contains("(0, 1]"), "{err}");
}

/// A user's mistake is a message, not a crash report: with `RUST_BACKTRACE=1` (set on many
/// developers' machines) a refusal still prints its message and causes only, and exits with 1.
#[test]
fn refusals_print_no_backtrace_whatever_rust_backtrace_says() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    for backtrace in ["1", "full"] {
        let out = ALP_RL
            .command()
            .env("RUST_BACKTRACE", backtrace)
            .env("RUST_LIB_BACKTRACE", backtrace)
            .args(["train", missing.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("Error: ") && err.contains("missing.toml"),
            "{err}"
        );
        for frame_marker in [
            "backtrace",
            "Backtrace",
            "at src/",
            "at /rustc/",
            "  0: std::",
        ] {
            assert!(!err.contains(frame_marker), "{frame_marker:?} in {err}");
        }
    }
}

#[test]
fn env_commands_list_sample_and_score() {
    let listed = ok(ALP_RL.output(["env", "list"]));
    for name in ["math", "arithmetic", "countdown", "tool_math"] {
        assert!(listed.contains(name), "env list lacks {name}:\n{listed}");
    }
    let episodes = lines(&ok(ALP_RL.output([
        "env",
        "sample",
        "arithmetic",
        "--n",
        "3",
        "--seed",
        "9",
        "--set",
        "digits=2",
    ])));
    assert_eq!(episodes.len(), 3);
    // Score each sampled example with its gold answer and with a wrong one.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("score.jsonl");
    let mut text = String::new();
    for ep in &episodes {
        let gold = ep["example"]["answer"].clone();
        assert!(
            !gold.is_null(),
            "arithmetic examples carry their answer: {ep}"
        );
        text +=
            &serde_json::json!({"example": ep["example"], "completion": format!("#### {gold}")})
                .to_string();
        text += "\n";
        text += &serde_json::json!({"example": ep["example"], "completion": "#### 123456789"})
            .to_string();
        text += "\n";
    }
    std::fs::write(&input, text).unwrap();
    let scores = lines(&ok(ALP_RL.output([
        "env",
        "score",
        "arithmetic",
        "--input",
        input.to_str().unwrap(),
        "--set",
        "digits=2",
    ])));
    assert_eq!(scores.len(), 6);
    for pair in scores.chunks(2) {
        assert_eq!(pair[0]["correct"], true);
        assert_eq!(pair[1]["correct"], false);
    }
    let out = ALP_RL.output(["env", "sample", "arithmetic", "--set", "digitz=2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("digitz"));
}

#[test]
fn eval_reports_accuracy_and_pass_at_k() {
    let tmp = tempfile::tempdir().unwrap();
    new_model(tmp.path());
    let out = ok(ALP_RL.output([
        "eval",
        "--model",
        tmp.path().to_str().unwrap(),
        "--env",
        "arithmetic",
        "--n",
        "3",
        "--problems",
        "4",
        "--max-new-tokens",
        "8",
        "--seed",
        "1",
    ]));
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["problems"], 4);
    assert_eq!(report["samples_per_problem"], 3);
    let table = report["pass_at_k"].as_object().unwrap();
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        ["pass@1", "pass@2", "pass@3"]
    );
    // The unbiased pass@1 is the mean correctness, and pass@k never decreases with k.
    let p = |k: &str| table[k].as_f64().unwrap();
    assert!((p("pass@1") - report["accuracy"].as_f64().unwrap()).abs() < 1e-12);
    assert!(p("pass@1") <= p("pass@2") && p("pass@2") <= p("pass@3"));
    assert_eq!(report["error_rate"], 0.0);
}

/// `alp-rl new-model` logging at INFO with `NO_COLOR` set to `no_color` (unset when `None`).
fn logging_new_model(out: &Path, no_color: Option<&str>) -> Command {
    let mut cmd = ALP_RL.command();
    cmd.args(["new-model", "--preset", "tiny", "--seed", "3", "--out"])
        .arg(out)
        .env("RUST_LOG", "info");
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    cmd
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    // `output()` pipes stderr: a log file or CI, not a terminal. NO_COLOR is unset.
    let out = logging_new_model(&tmp.path().join("m"), None)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrote a random model"), "no INFO log: {err}");
    assert!(
        !err.contains("\x1b["),
        "ANSI escapes in piped logs: {err:?}"
    );
}

#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    // util-linux `script` runs the command on a pseudo-terminal and copies what it prints to stdout.
    let run_on_tty = |out: &Path, no_color: Option<&str>| {
        let cmd = logging_new_model(out, no_color);
        let line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| format!("'{}'", a.to_str().unwrap()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("script");
        script
            .args(["-qec", &line, "/dev/null"])
            .env("RUST_LOG", "info");
        match no_color {
            Some(v) => script.env("NO_COLOR", v),
            None => script.env_remove("NO_COLOR"),
        };
        let done = script
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run util-linux `script` (needed to give alp-rl a terminal)");
        assert!(done.status.success(), "{done:?}");
        let text = String::from_utf8_lossy(&done.stdout).into_owned();
        assert!(text.contains("wrote a random model"), "no INFO log: {text}");
        text
    };
    let tmp = tempfile::tempdir().unwrap();
    // On a terminal logs are coloured (this is what makes the NO_COLOR cases below mean something).
    assert!(run_on_tty(&tmp.path().join("a"), None).contains("\x1b["));
    assert!(run_on_tty(&tmp.path().join("b"), Some("")).contains("\x1b["));
    for value in ["1", "0", "false"] {
        let text = run_on_tty(&tmp.path().join(format!("c{value}")), Some(value));
        assert!(!text.contains("\x1b["), "NO_COLOR={value}: {text:?}");
    }
}
