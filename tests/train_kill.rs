//! SIGKILL the trainer at precise points (mid-rollout, right after an in-memory update, mid-checkpoint
//! write, between a checkpoint and `latest`, between the rollout and metrics files), resume, and check:
//! no lost or duplicated steps, every checkpoint directory loads, and the metrics equal an
//! uninterrupted run's.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use alp_policy::{CausalLM, LoadOptions};
use arrow_array::{Array, Float64Array, Int64Array};

mod support;
use support::read;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-tiny.toml");
const SETTINGS: [&str; 6] = [
    "--set",
    "run.steps=6",
    "--set",
    "run.checkpoint_every=2",
    "--set",
    "run.keep=10",
];

fn command(out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alp-rl"));
    c.args(["train", CONFIG, "--out", out.to_str().unwrap()])
        .args(SETTINGS)
        .args(extra)
        .env("RUST_LOG", "warn");
    c
}

fn run_ok(out: &Path, extra: &[&str]) {
    let o = command(out, extra).output().unwrap();
    assert!(
        o.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Starts a run that pauses at `point`, waits until it is there, and SIGKILLs it.
fn kill_at(out: &Path, point: &str) {
    let mut child = command(out, &[])
        .env("ALP_RL_PAUSE_AT", point)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reached = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("ALP_RL_PAUSE_AT reached"));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(reached, "the run ended before reaching {point}");
}

/// Non-timing metrics, `step -> name -> value`, failing on duplicated steps.
fn metrics(run: &Path) -> BTreeMap<i64, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for b in read(&run.join("metrics.parquet")) {
        let steps = b.column_by_name("step").unwrap();
        let steps = steps.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                let timing = f.name().starts_with("time/") || f.name().starts_with("throughput/");
                if let Some(c) = c.as_any().downcast_ref::<Float64Array>() {
                    if c.is_valid(i) && !timing {
                        row.insert(f.name().clone(), c.value(i));
                    }
                }
            }
            assert!(
                out.insert(steps.value(i), row).is_none(),
                "step {} twice",
                steps.value(i)
            );
        }
    }
    out
}

fn assert_checkpoints_load(run: &Path) {
    let dir = run.join("checkpoints");
    let latest = std::fs::read_to_string(dir.join("latest")).unwrap();
    assert!(dir.join(latest.trim()).join("state.json").exists());
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp-"),
            "temporary {name} left after resume"
        );
        if !name.starts_with("step-") {
            continue;
        }
        let model = CausalLM::load(&e.path().join("model"), &LoadOptions::default());
        assert!(model.is_ok(), "{name}: {:?}", model.err());
        for f in [
            "state.json",
            "learner/optimizer.safetensors",
            "learner/learner.safetensors",
        ] {
            assert!(e.path().join(f).exists(), "{name} lacks {f}");
        }
    }
}

#[test]
fn sigkill_at_any_point_then_resume_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    run_ok(&straight, &[]);
    let expected = metrics(&straight);
    assert_eq!(expected.len(), 6);

    for point in [
        "rollout:3",
        "update:3",
        "metrics:3",
        "checkpoint:4",
        "latest:4",
        "rollout:1",
    ] {
        let run = tmp.path().join(point.replace(':', "-"));
        kill_at(&run, point);
        run_ok(&run, &["--resume"]);
        assert_checkpoints_load(&run);
        let got = metrics(&run);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            (1..=6).collect::<Vec<_>>(),
            "{point}"
        );
        for (step, row) in &expected {
            for (k, v) in row {
                let w = got[step][k];
                assert!(
                    (v - w).abs() <= 1e-6 * v.abs().max(1.0) || (v.is_nan() && w.is_nan()),
                    "{point}: step {step} {k}: {v} vs {w}"
                );
            }
        }
        for step in 1..=6 {
            assert!(run
                .join(format!("rollouts/step-{step:06}.parquet"))
                .exists());
        }
    }
}
