//! SIGKILL the trainer at precise points (mid-rollout, right after an in-memory update, mid-checkpoint
//! write, between a checkpoint and `latest`, between the rollout and metrics files), resume, and check:
//! no lost or duplicated steps, every checkpoint directory loads, and the metrics equal an
//! uninterrupted run's.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use alp_policy::{CausalLM, LoadOptions};
use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::run_outputs::{self, without_timing};

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-tiny.toml");
const EGGROLL_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-eggroll.toml");
const SETTINGS: [&str; 6] = [
    "--set",
    "run.steps=6",
    "--set",
    "run.checkpoint_every=2",
    "--set",
    "run.keep=10",
];

/// A run with everything that adds rows or state around the RL steps: a warm start, held-out
/// evaluation at step 0 and every 2 steps (the step-0 row comes before the first checkpoint), and
/// rollouts one version ahead of the learner.
const FULL: [&str; 14] = [
    "--set",
    "sft.steps=4",
    "--set",
    "sft.batch_size=4",
    "--set",
    "sft.log_every=2",
    "--set",
    "eval.every=2",
    "--set",
    "eval.problems=4",
    "--set",
    "rollout.max_staleness=1",
    "--set",
    "run.log_logprobs=true",
];

/// The EGGROLL learner on the built-in task, shrunk: a tiny warm start and held-out evaluation, 2
/// prompts x 4 members per step, Adam (so the checkpoint has optimizer state to restore), noise
/// refreshed every 2 steps (so a resume lands inside a noise epoch).
const EGGROLL: [&str; 20] = [
    "--config",
    EGGROLL_CONFIG,
    "--set",
    "sft.steps=4",
    "--set",
    "sft.batch_size=4",
    "--set",
    "eval.every=2",
    "--set",
    "eval.problems=4",
    "--set",
    "rollout.prompts_per_step=2",
    "--set",
    "rollout.group_size=4",
    "--set",
    "rollout.max_new_tokens=12",
    "--set",
    "learner.eggroll.optimizer=\"adam\"",
    "--set",
    "learner.eggroll.noise_reuse=2",
];

/// `alp-rl train` on math-tiny.toml, or on the config of a leading `--config FILE` in `extra`.
fn command(out: &Path, extra: &[&str]) -> Command {
    let (config, extra) = match extra {
        ["--config", file, rest @ ..] => (*file, rest),
        _ => (CONFIG, extra),
    };
    let mut c = ALP_RL.train_command(config, out);
    c.args(SETTINGS).args(extra);
    c
}

fn run_ok(out: &Path, extra: &[&str]) {
    ok(command(out, extra).output().unwrap());
}

/// Starts a run that pauses at `point`, waits until it is there, and SIGKILLs it.
fn kill_at(out: &Path, point: &str, extra: &[&str]) {
    let mut child = command(out, extra)
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
    without_timing(run_outputs::metrics(run))
}

/// The policy-gradient learner's files in a checkpoint (AdamW moments, ALP's sigmas and step).
const PG_FILES: &[&str] = &[
    "learner/optimizer.safetensors",
    "learner/learner.safetensors",
];
/// EGGROLL's: the ES step and Adam's moments.
const ES_FILES: &[&str] = &["learner/eggroll.safetensors"];

fn assert_checkpoints_load(run: &Path, learner_files: &[&str]) {
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
        for f in std::iter::once(&"state.json").chain(learner_files) {
            assert!(e.path().join(f).exists(), "{name} lacks {f}");
        }
    }
}

/// Kills a run with `extra` settings at each point, resumes it, and compares with a straight run:
/// the same steps once each (`expected_steps`, step 0 being the first evaluation), the same metric
/// names at every step, and equal values up to step `exact_through`.
fn kill_resume_compare(
    tmp: &Path,
    extra: &[&str],
    learner_files: &[&str],
    points: &[&str],
    expected_steps: &[i64],
    exact_through: i64,
) {
    let straight = tmp.join("straight");
    run_ok(&straight, extra);
    let expected = metrics(&straight);
    assert_eq!(expected.keys().copied().collect::<Vec<_>>(), expected_steps);

    for point in points {
        let run = tmp.join(point.replace(':', "-"));
        kill_at(&run, point, extra);
        let mut resume = extra.to_vec();
        resume.push("--resume");
        run_ok(&run, &resume);
        assert_checkpoints_load(&run, learner_files);
        let got = metrics(&run);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            expected_steps,
            "{point}"
        );
        for (step, row) in &expected {
            assert_eq!(
                row.keys().collect::<Vec<_>>(),
                got[step].keys().collect::<Vec<_>>(),
                "{point}: step {step} has other metrics"
            );
            for (k, v) in row {
                let w = got[step][k];
                let same = (v - w).abs() <= 1e-6 * v.abs().max(1.0) || (v.is_nan() && w.is_nan());
                assert!(
                    same || *step > exact_through,
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

#[test]
fn sigkill_at_any_point_then_resume_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    kill_resume_compare(
        tmp.path(),
        &[],
        PG_FILES,
        &[
            "rollout:3",
            "update:3",
            "metrics:3",
            "checkpoint:4",
            "latest:4",
            "rollout:1",
        ],
        &[1, 2, 3, 4, 5, 6],
        6,
    );
}

#[test]
fn sigkill_with_eval_staleness_and_warm_start_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    // `update:1` dies after the step-0 evaluation row was written and before any checkpoint: the
    // resumed run evaluates step 0 again and must not log it twice. With max_staleness = 1 the first
    // batch after a resume from checkpoint N is generated with version N (the straight run used
    // N - 1, whose weights no checkpoint keeps), so values are compared exactly up to the last
    // checkpoint every kill point has passed (step 2), and as names after it.
    kill_resume_compare(
        tmp.path(),
        &FULL,
        PG_FILES,
        &["update:1", "metrics:3", "checkpoint:4", "rollout:5"],
        &[0, 1, 2, 3, 4, 5, 6],
        2,
    );
}

#[test]
fn sigkill_an_eggroll_run_then_resume_gives_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    // Synchronous rollouts (EGGROLL members are the learner's own noise at the learner's version),
    // so every value is compared exactly, also after the kill point; the noise and Adam's moments
    // after a resume must equal the uninterrupted run's.
    kill_resume_compare(
        tmp.path(),
        &EGGROLL,
        ES_FILES,
        &["rollout:3", "update:3", "checkpoint:4", "latest:4"],
        &[0, 1, 2, 3, 4, 5, 6],
        6,
    );
}

/// A LoRA run (`[model.lora]`, the warm start training an adapter too): the adapter and its Adam
/// moments are the learner's state.
const LORA: [&str; 12] = [
    "--set",
    "model.lora.rank=4",
    "--set",
    "model.lora.alpha=8",
    "--set",
    "sft.steps=4",
    "--set",
    "sft.batch_size=4",
    "--set",
    "eval.every=2",
    "--set",
    "eval.problems=4",
];
const LORA_FILES: &[&str] = &[
    "learner/optimizer.safetensors",
    "learner/learner.safetensors",
    "learner/adapter/adapter_config.json",
    "learner/adapter/adapter_model.safetensors",
];

/// The tensors of a safetensors file, by name.
fn tensors(file: &Path) -> BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .into_iter()
        .collect()
}

#[test]
fn sigkill_a_lora_run_then_resume_and_the_base_weights_never_change() {
    let tmp = tempfile::tempdir().unwrap();
    // Synchronous rollouts (math-tiny.toml), so every value is compared exactly after the resume.
    kill_resume_compare(
        tmp.path(),
        &LORA,
        LORA_FILES,
        &["update:3", "checkpoint:4", "latest:4"],
        &[0, 1, 2, 3, 4, 5, 6],
        6,
    );
    let run = tmp.path().join("straight");
    // The model RL starts from is the warm start's: its adapter merged into the initial model.
    let start = tensors(&run.join("sft/checkpoints/step-000004/model/model.safetensors"));
    let initial = tensors(&run.join("initial-model/model.safetensors"));
    let merged: Vec<&String> = start
        .iter()
        .filter(|(k, v)| !v.equal(&initial[*k]))
        .map(|(k, _)| k)
        .collect();
    assert!(
        !merged.is_empty() && merged.iter().all(|k| k.ends_with("_proj.weight")),
        "the warm start changes exactly the adapted projections: {merged:?}"
    );
    for step in [2, 4, 6] {
        let ckpt = run.join(format!("checkpoints/step-{step:06}"));
        // The base weights of every RL checkpoint are the starting model's, bit for bit.
        let base = tensors(&ckpt.join("model/model.safetensors"));
        assert_eq!(
            base.keys().collect::<Vec<_>>(),
            start.keys().collect::<Vec<_>>()
        );
        for (k, v) in &base {
            assert!(v.equal(&start[k]), "step {step}: base weight {k} changed");
        }
        // The optimizer holds the adapter's factors and ALP's scales, nothing else.
        let optimizer = tensors(&ckpt.join("learner/optimizer.safetensors"));
        for k in optimizer.keys().filter(|k| k.as_str() != "__step__") {
            let adapter = k.starts_with("model/base_model.model.")
                && (k.contains(".lora_A.weight/") || k.contains(".lora_B.weight/"));
            assert!(
                adapter || k.starts_with("alp/"),
                "step {step}: optimizer holds {k}"
            );
        }
        // The adapter moved: B is no longer zero.
        let adapter = tensors(&ckpt.join("learner/adapter/adapter_model.safetensors"));
        assert!(adapter
            .iter()
            .any(|(k, v)| k.ends_with("lora_B.weight") && v.abs().max().double_value(&[]) > 0.0));
    }
}
