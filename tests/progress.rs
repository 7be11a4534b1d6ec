//! Progress of `alp-rl eval`: plain log lines with the real request counts when stderr is not a
//! terminal (rate-limited by `ALP_PROGRESS_EVERY_S`), a bar on a terminal.
use std::path::Path;
use std::process::Command;

use alp_test_support::cli::{ok, AlpRl};
use serde_json::Value;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));
const PROBLEMS: usize = 4;
const SAMPLES: usize = 3;

fn eval_args(model: &Path) -> Vec<String> {
    [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--env",
        "arithmetic",
        "--n",
        &SAMPLES.to_string(),
        "--problems",
        &PROBLEMS.to_string(),
        "--max-new-tokens",
        "8",
        "--seed",
        "1",
        "--batch-size",
        "4",
    ]
    .map(String::from)
    .to_vec()
}

/// `done` and `total` of every "eval: done/total requests" line of `stderr`, in order.
fn progress_counts(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("eval: ")? + "eval: ".len()..];
            let (counts, _) = rest.split_once(" requests")?;
            let (done, total) = counts.split_once('/')?;
            Some((done.parse().ok()?, total.parse().ok()?))
        })
        .collect()
}

#[test]
fn eval_logs_progress_lines_with_the_request_counts_when_stderr_is_piped() {
    let tmp = tempfile::tempdir().unwrap();
    ALP_RL.new_model(tmp.path(), &["--seed", "3"]);
    // arithmetic is single-turn: one generation request per sample, PROBLEMS x SAMPLES in all.
    let total = PROBLEMS * SAMPLES;

    // Every update logged: one line per finished request, 1..=total, then nothing more.
    let out = ALP_RL
        .command()
        .args(eval_args(tmp.path()))
        .env("ALP_PROGRESS_EVERY_S", "0")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(ok(out).trim()).unwrap();
    assert_eq!(report["problems"], PROBLEMS);
    let counts = progress_counts(&stderr);
    let expected: Vec<(usize, usize)> = (1..=total).map(|d| (d, total)).collect();
    assert_eq!(counts, expected, "{stderr}");
    assert!(stderr.contains(&format!("eval: {total}/{total} requests (100%)")));
    assert!(
        !stderr.contains("\x1b["),
        "escapes in piped stderr: {stderr:?}"
    );

    // At the default period (10 s) a run of a second or two logs the finished total only.
    let out = ALP_RL
        .command()
        .args(eval_args(tmp.path()))
        .env_remove("ALP_PROGRESS_EVERY_S")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert_eq!(progress_counts(&stderr), [(total, total)], "{stderr}");
}

#[test]
fn eval_draws_a_bar_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    ALP_RL.new_model(tmp.path(), &["--seed", "3"]);
    // util-linux `script` gives alp-rl a pseudo-terminal and copies what it prints to stdout.
    let line = std::iter::once(env!("CARGO_BIN_EXE_alp-rl").to_string())
        .chain(eval_args(tmp.path()))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let done = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("RUST_LOG", "info")
        .env("TERM", "xterm")
        .env_remove("ALP_PROGRESS_EVERY_S")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run util-linux `script` (needed to give alp-rl a terminal)");
    assert!(done.status.success(), "{done:?}");
    let text = String::from_utf8_lossy(&done.stdout).into_owned();
    let total = PROBLEMS * SAMPLES;
    // The bar at its end ("eval [====...] 12/12 requests, ...") and the redraws that clear the line.
    let full = format!("eval [{}] {total}/{total} requests,", "=".repeat(20));
    assert!(text.contains(&full), "no full bar in {text:?}");
    assert!(text.contains("\r\x1b[2K"), "no redraw in {text:?}");
    // The report on stdout is intact, and the totals are logged once the bar is cleared.
    assert!(
        text.contains(&format!("\"problems\":{PROBLEMS}")),
        "{text:?}"
    );
    assert!(text.contains(&format!("eval: {total}/{total} requests (100%)")));
}
