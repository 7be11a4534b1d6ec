//! `alp-rl train --nproc 2` (two ranks over c10d's Gloo on this CPU) against one process on the same
//! global batch: the same metrics, rollouts and final weights, for policy gradient (ALP) and for
//! EGGROLL; a rank SIGKILLed mid-step ends the run naming it and `--resume` finishes it with every
//! step logged once; torchrun starts the same binary; ranks that disagree are refused.
//!
//! "The same global batch": the rollout copy computes in f32 here (bf16 kernels round differently at
//! different batch sizes, and each rank's engine batch is half of one process's, so bf16 sampling
//! log-probs would differ by up to ~4e-3 between the runs while the sampled tokens agree), and the one
//! process cuts its micro-batches as the ranks do (4 samples: ALP draws one noise tensor per
//! micro-batch, keyed by its index among every rank's micro-batches of the step).
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::run_outputs::{self, without_timing};

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-tiny.toml");
const TORCHRUN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/torchrun");

/// Both runs: five steps, checkpoints every second step, the rollout copy in f32.
const COMMON: [&str; 8] = [
    "--set",
    "run.steps=5",
    "--set",
    "model.inference_dtype=\"f32\"",
    "--set",
    "run.checkpoint_every=2",
    "--set",
    "run.keep=10",
];

fn train(config: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = ALP_RL.train_command(config, out);
    c.args(COMMON).args(extra);
    c
}

/// Non-timing metrics, `step -> name -> value` (fails on a step logged twice).
fn metrics(run: &Path) -> BTreeMap<i64, BTreeMap<String, f64>> {
    without_timing(run_outputs::metrics(run))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-9
}

/// The same steps, the same metric names, every value within `rel`.
fn assert_same_metrics(one: &Path, two: &Path, rel: f64) {
    let (a, b) = (metrics(one), metrics(two));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (step, row) in &a {
        assert_eq!(
            row.keys().collect::<Vec<_>>(),
            b[step].keys().collect::<Vec<_>>(),
            "step {step}"
        );
        for (k, v) in row {
            let w = b[step][k];
            assert!(
                close(*v, w, rel),
                "step {step} {k}: one process {v}, two ranks {w}"
            );
        }
    }
}

/// Every rollout file holds the same completions, in the same order.
fn assert_same_rollouts(one: &Path, two: &Path, steps: u64) {
    for step in 1..=steps {
        let file = format!("rollouts/step-{step:06}.parquet");
        let texts = |run: &Path| -> Vec<String> {
            run_outputs::read(&run.join(&file))
                .iter()
                .flat_map(|b| {
                    (0..b.num_rows()).map(move |i| run_outputs::text(b, "completion_text", i))
                })
                .collect()
        };
        let (a, b) = (texts(one), texts(two));
        assert!(!a.is_empty(), "{file} is empty");
        assert_eq!(a, b, "{file}");
    }
}

/// The final checkpoint's weights of both runs, tensor by tensor, within `rel` of the largest entry.
fn assert_same_weights(one: &Path, two: &Path, step: u64, rel: f64) {
    let load = |run: &Path| -> BTreeMap<String, tch::Tensor> {
        let dir = run.join(format!("checkpoints/step-{step:06}/model"));
        tch::Tensor::read_safetensors(dir.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (a, b) = (load(one), load(two));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, x) in &a {
        let x = x.to_kind(tch::Kind::Double);
        let y = b[name].to_kind(tch::Kind::Double);
        let diff = (&x - &y).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1e-12);
        assert!(diff <= rel * scale, "{name}: max |diff| {diff} of {scale}");
    }
}

#[test]
fn two_ranks_train_like_one_process_on_the_same_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(
        train(CONFIG, &one, &["--set", "learner.micro_batch_size=4"])
            .output()
            .unwrap(),
    );
    ok(train(CONFIG, &two, &["--nproc", "2"]).output().unwrap());
    assert_same_metrics(&one, &two, 1e-5);
    assert_same_rollouts(&one, &two, 5);
    assert_same_weights(&one, &two, 5, 1e-5);
    // Rank 0 alone wrote the run directory: one metrics row per step.
    assert_eq!(metrics(&two).len(), 5);
}

/// math-tiny.toml with the EGGROLL learner (its policy-gradient sections removed).
fn eggroll_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(CONFIG).unwrap();
    let (head, rest) = text.split_once("[learner]").unwrap();
    let env = &rest[rest.find("[env]").unwrap()..];
    let path = dir.join("eggroll-tiny.toml");
    std::fs::write(
        &path,
        format!(
            "{head}[learner]\nkind = \"eggroll\"\n\n[learner.eggroll]\nrank = 1\nsigma = 0.01\n\
             lr = 1e-3\n\n{env}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn two_ranks_make_the_eggroll_update_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let config = eggroll_config(tmp.path());
    let config = config.to_str().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(train(config, &one, &[]).output().unwrap());
    ok(train(config, &two, &["--nproc", "2"]).output().unwrap());
    assert_same_metrics(&one, &two, 1e-5);
    assert_same_rollouts(&one, &two, 5);
    assert_same_weights(&one, &two, 5, 1e-5);
}

/// Rank 1 stops after its update of step 3 and is SIGKILLed there; rank 0 waits for it in the next
/// step's gather. The launch must end within 60 s naming rank 1, and `--resume` must finish the run
/// with every step once and the metrics of an uninterrupted two-rank run.
#[test]
fn a_killed_rank_ends_the_run_naming_it_and_resume_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    ok(train(CONFIG, &straight, &["--nproc", "2"])
        .output()
        .unwrap());

    let mut child = train(CONFIG, &killed, &["--nproc", "2"])
        .env("RUST_LOG", "warn")
        .env("ALP_RL_PAUSE_AT", "update:3")
        .env("ALP_RL_PAUSE_RANK", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let pid = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("ALP_RL_PAUSE_AT reached"))
        .and_then(|l| {
            let at = l.find("pid=")? + 4;
            l[at..].split_whitespace().next()?.parse::<u32>().ok()
        })
        .expect("rank 1 reached the pause and logged its pid");
    let killed_at = Instant::now();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    let took = killed_at.elapsed();
    let stderr = rest.join("\n");
    assert!(
        !exit.success(),
        "the launch succeeded with a killed rank:\n{stderr}"
    );
    assert!(
        took < Duration::from_secs(60),
        "the run took {took:?} to end"
    );
    assert!(
        stderr.contains("rank 1 of 2 killed by signal 9"),
        "the error does not name the killed rank:\n{stderr}"
    );

    ok(train(CONFIG, &killed, &["--nproc", "2", "--resume"])
        .output()
        .unwrap());
    assert_eq!(
        metrics(&killed).keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_same_metrics(&straight, &killed, 1e-6);
    assert_same_weights(&straight, &killed, 5, 1e-6);
}

/// torchrun (`--no-python`, from the project's venv) starts the same binary as two ranks; the run
/// equals the one `--nproc 2` makes.
#[test]
fn torchrun_starts_the_same_binary_as_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let (launched, torchrun) = (tmp.path().join("launched"), tmp.path().join("torchrun"));
    ok(train(CONFIG, &launched, &["--nproc", "2"])
        .output()
        .unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(TORCHRUN)
        .args(["--no-python", "--nnodes", "1", "--nproc-per-node", "2"])
        .args([
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &port.to_string(),
        ])
        .arg(env!("CARGO_BIN_EXE_alp-rl"))
        .args(["train", CONFIG, "--out"])
        .arg(&torchrun)
        .args(COMMON)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    ok(out);
    assert_same_metrics(&launched, &torchrun, 1e-6);
}

/// Two ranks started by hand with different seeds: both refuse at rendezvous, naming the config.
#[test]
fn ranks_with_different_configs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out_dir = tmp.path().join("run");
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            train(CONFIG, &out_dir, &["--set", &format!("run.seed={rank}")])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .args(["--dist-timeout", "60"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {rank} trained");
        assert!(
            stderr.contains("different configs")
                && stderr.contains("run.seed: rank 1 has 1, rank 0 has 0"),
            "rank {rank}: {stderr}"
        );
    }
    // Refused before rank 0 wrote anything.
    assert!(!out_dir.exists());
}

/// Multi-turn episodes (configs/tool-math.toml, after its warm start some episodes call the tool and
/// take a second turn): every turn of an episode draws from the episode's own random stream, so two
/// ranks sample exactly the completions of one process, later turns included.
#[test]
fn multi_turn_episodes_sample_the_same_on_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tool-math.toml");
    let small = [
        "--set",
        "run.steps=2",
        "--set",
        "eval.problems=8",
        "--set",
        "rollout.prompts_per_step=4",
        "--set",
        "learner.micro_batch_size=8",
    ];
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(train(config, &one, &small).output().unwrap());
    ok(train(config, &two, &small)
        .arg("--nproc")
        .arg("2")
        .output()
        .unwrap());
    assert_same_rollouts(&one, &two, 2);
    let turns: Vec<i32> = (1..=2)
        .flat_map(|step| {
            run_outputs::read(&one.join(format!("rollouts/step-{step:06}.parquet")))
                .iter()
                .flat_map(|b| {
                    let column = b.column_by_name("num_turns").unwrap();
                    let turns = column
                        .as_any()
                        .downcast_ref::<arrow_array::Int32Array>()
                        .unwrap();
                    turns.values().to_vec()
                })
                .collect::<Vec<i32>>()
        })
        .collect();
    assert!(
        turns.contains(&2),
        "no episode took a second turn: {turns:?}"
    );
}
