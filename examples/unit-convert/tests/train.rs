//! The example's binary is the whole alp-rl CLI with one more environment: `env list` shows it with
//! its settings, and a short `train` (warm start, then RL) runs episodes that call its tool.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use alp_test_support::run_outputs::{list_row, read, text};
use arrow_array::types::{Int32Type, UInt8Type};
use arrow_array::{Array, Int32Array};

fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_units-trainer"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1");
    c
}

/// Units in base units, written out here independently of the crate's table.
fn base_units(symbol: &str) -> Option<u64> {
    Some(match symbol {
        "mm" => 1,
        "cm" => 10,
        "m" => 1000,
        "km" => 1_000_000,
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "g" => 1,
        "kg" => 1000,
        _ => return None,
    })
}

#[test]
fn env_list_shows_the_example_environment_and_its_settings() {
    let out = trainer().args(["env", "list"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("unit_convert: convert a quantity"), "{text}");
    for setting in [
        "families (Vec<String>, default [\"length\",\"mass\",\"time\"])",
        "max_value (u64, default 9)",
        "test_every (u64, default 5)",
        "max_turns (u32, default 2)",
    ] {
        assert!(text.contains(setting), "{setting} missing from:\n{text}");
    }
    // The built-in environments are all still there.
    for name in ["math:", "arithmetic:", "countdown:", "tool_math:"] {
        assert!(text.contains(name), "{text}");
    }
    // A bad setting of the plugged-in environment is refused like a built-in one's.
    let bad = trainer()
        .args([
            "env",
            "sample",
            "unit_convert",
            "--set",
            "families=[\"volume\"]",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("families") && err.contains("unknown family \"volume\""),
        "{err}"
    );
}

#[test]
fn nothing_in_the_builtin_environments_knows_the_example() {
    let envs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../envs/src");
    let mut stack = vec![envs];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !text.contains("unit_convert"),
                    "{} names it",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn trains_its_own_environment_with_a_warm_start_and_tool_calls() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = trainer()
        .args(["train", "configs/units.toml", "--out"])
        .arg(&run)
        // The config's own warm start (300 steps): fewer leave most calls malformed.
        .args([
            "--set",
            "run.steps=2",
            "--set",
            "eval.every=2",
            "--set",
            "eval.problems=8",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("training finished"), "{log}");

    // The warm start ran on the environment's worked conversations and learned them.
    let sft = read(&run.join("sft/metrics.parquet"));
    assert!(!sft.is_empty());

    let tokenizer = alp_tokenizer::Tokenizer::from_dir(run.join("initial-model")).unwrap();
    let (mut calls, mut replies_checked) = (0, 0);
    for step in 1..=2 {
        for b in read(&run.join(format!("rollouts/step-{step:06}.parquet"))) {
            let turns: &Int32Array = b
                .column_by_name("num_turns")
                .unwrap()
                .as_any()
                .downcast_ref()
                .unwrap();
            for row in 0..b.num_rows() {
                assert_eq!(text(&b, "env", row), "unit_convert");
                let completion = text(&b, "completion_text", row);
                // A second turn means the tool answered the first one (a call on the last turn,
                // or one that left no token budget, ends the episode unanswered).
                if turns.value(row) < 2 {
                    continue;
                }
                calls += 1;
                let ids = list_row::<Int32Type>(&b, "completion_ids", row);
                let mask = list_row::<UInt8Type>(&b, "loss_mask", row);
                let masked: Vec<u32> = ids
                    .iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m == 0)
                    .map(|(&t, _)| t as u32)
                    .collect();
                let masked_text = tokenizer.decode(&masked, false).unwrap();
                // The model's own call is trained on; what the tool said is not.
                assert!(
                    masked_text.contains("<|im_start|>tool\n"),
                    "{masked_text:?}"
                );
                assert!(
                    !masked_text.contains("\"name\": \"convert\""),
                    "{masked_text:?}"
                );
                if let Some(expected) = expected_reply(&completion) {
                    assert!(
                        masked_text.contains(&expected),
                        "tool reply {expected:?} not masked: {masked_text:?} in {completion:?}"
                    );
                    replies_checked += 1;
                }
            }
        }
    }
    assert!(calls > 0, "no rollout called the tool and read its reply");
    assert!(
        replies_checked > 0,
        "no well-formed call to check the reply of"
    );

    let metrics = read(&run.join("metrics.parquet"));
    let columns: BTreeSet<String> = metrics[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert!(
        columns.contains("eval/accuracy") && columns.contains("reward/mean"),
        "{columns:?}"
    );
}

/// The reply a correct tool gives to the first well-formed call in `completion`, computed from the
/// table above: `"<value> <to>"`, or `None` when the call is malformed.
fn expected_reply(completion: &str) -> Option<String> {
    let start = completion.find("<tool_call>")? + "<tool_call>".len();
    let end = completion.find("</tool_call>")?;
    let call: serde_json::Value = serde_json::from_str(completion.get(start..end)?.trim()).ok()?;
    // A call of another name (a sampled typo) gets the environment's unknown-tool error instead.
    if call["name"] != "convert" {
        return None;
    }
    let args = &call["arguments"];
    let (value, from, to) = (
        args["value"].as_u64()?,
        args["from"].as_str()?,
        args["to"].as_str()?,
    );
    let (f, t) = (base_units(from)?, base_units(to)?);
    let same_family = |u: &str| match u {
        "mm" | "cm" | "m" | "km" => 0,
        "s" | "min" | "h" => 1,
        _ => 2,
    };
    if same_family(from) != same_family(to) || (value * f) % t != 0 {
        return None;
    }
    Some(format!("{} {to}", value * f / t))
}
