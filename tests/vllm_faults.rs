//! The vLLM backend's failure behaviour in a whole run, against real servers that this test starts,
//! SIGKILLs and restarts (issue 13, acceptance 3 and 4), and its asynchrony:
//! - a sync whose probe disagrees (weights written in bf16 for f32 servers) fails the run before
//!   anything is generated or trained with those weights;
//! - with `max_staleness = 1` every sample's version is exactly the one the pacing gives;
//! - two servers, one SIGKILLed mid-run and restarted: the run finishes with every step once, its log
//!   names the server when it was taken out and when it came back re-synced;
//! - the only server SIGKILLed: the run stops with a clear error within the configured time, and
//!   `--resume` after restarting it finishes the run with every step once.
mod vllm_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::run_outputs;
use alp_vllm::ServerProcess;

use vllm_common::{free_port, server_spec, short_run, start_servers, wait_ready, CONFIG};

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

/// `alp-rl train` on `servers` (not launched by the run), with the test's overrides.
fn args(servers: &[String], steps: u64, extra: &[&str]) -> Vec<String> {
    let list = servers
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut args = short_run(100, steps);
    for s in [
        "rollout.vllm.launch=false".to_string(),
        format!("rollout.vllm.servers=[{list}]"),
        "rollout.vllm.health_interval_s=1".into(),
        "rollout.vllm.retries=2".into(),
        "rollout.vllm.unavailable_timeout_s=20".into(),
        "rollout.vllm.request_timeout_s=120".into(),
    ]
    .into_iter()
    .chain(extra.iter().map(|s| s.to_string()))
    {
        args.extend(["--set".into(), s]);
    }
    args
}

/// A training run in the background whose stderr (info level) is collected line by line.
struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(run: &Path, args: &[String], resume: bool) -> Self {
        let mut command = ALP_RL.train_command(CONFIG, run);
        command
            .args(args)
            .env("RUST_LOG", "alp_rl=info,alp_vllm=info")
            .stderr(Stdio::piped());
        if resume {
            command.arg("--resume");
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                sink.lock().unwrap().push(line.unwrap_or_default());
            }
        });
        Background {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                start.elapsed() < timeout,
                "no log line with {needle:?} in {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for the run to end; returns whether it succeeded and its log.
    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        (status.success(), self.log())
    }
}

/// Steps 1..=steps each have exactly one metrics row and one rollouts file.
fn assert_every_step_once(run: &Path, steps: i64) {
    let metrics = run_outputs::metrics(run); // fails on a step written twice
    let rl: Vec<i64> = metrics.keys().copied().filter(|&s| s > 0).collect();
    assert_eq!(rl, (1..=steps).collect::<Vec<_>>());
    for step in 1..=steps {
        assert!(run
            .join(format!("rollouts/step-{step:06}.parquet"))
            .exists());
    }
}

#[test]
fn syncs_are_verified_and_runs_survive_servers_that_die() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    ok(ALP_RL
        .command()
        .args(["new-model", "--preset", "vllm-tiny", "--out"])
        .arg(&model)
        .output()
        .unwrap());
    // The servers start on any model of the run's shape: the run's first sync gives them its weights.
    let logs = dir.path().join("server-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let specs: Vec<_> = (0..2)
        .map(|i| server_spec(&model, free_port(), &logs.join(format!("server-{i}.log"))))
        .collect();
    let urls: Vec<String> = specs.iter().map(|s| s.url()).collect();
    let mut servers = start_servers(&specs);

    // 1. Weights written in bf16 for f32 servers: the probe's log-probs disagree, the run stops at
    //    its first sync, and nothing is generated, evaluated or trained.
    let bad = dir.path().join("bad-sync");
    let out = ALP_RL.train(
        CONFIG,
        &bad,
        &args(&urls[..1], 4, &["rollout.vllm.sync_dtype=\"bf16\""])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("failed verification") && stderr.contains(&urls[0]),
        "{stderr}"
    );
    assert!(!bad.join("metrics.parquet").exists(), "nothing was logged");
    assert!(
        !bad.join("rollouts").exists()
            || std::fs::read_dir(bad.join("rollouts")).unwrap().count() == 0
    );

    // 2. max_staleness = 1 on two servers: step t trains on version max(0, t - 2), exactly.
    let stale = dir.path().join("stale");
    let out = ALP_RL.train(
        CONFIG,
        &stale,
        &args(&urls, 4, &["rollout.max_staleness=1"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    ok(out);
    for step in 1..=4i64 {
        let file = stale.join(format!("rollouts/step-{step:06}.parquet"));
        for b in run_outputs::read(&file) {
            let want = (step - 2).max(0);
            assert!(run_outputs::int_column(&b, "policy_version")
                .iter()
                .all(|&v| v == want));
            assert!(run_outputs::int_column(&b, "staleness")
                .iter()
                .all(|&s| s == step - 1 - want));
        }
    }

    // 3. Two servers, the second SIGKILLed after step 2 and restarted: the run finishes on the
    //    first meanwhile, and takes the second back only after re-syncing and probing it.
    const STEPS: i64 = 40;
    let two = dir.path().join("two");
    let trainer = Background::start(&two, &args(&urls, STEPS as u64, &[]), false);
    trainer.wait_for_line(&format!("step 2/{STEPS}"), Duration::from_secs(600));
    servers[1].kill();
    servers[1] = ServerProcess::start(&specs[1]).unwrap();
    wait_ready(&mut servers[1..]);
    let (success, log) = trainer.finish();
    assert!(success, "{log}");
    assert_every_step_once(&two, STEPS);
    let named = |what: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains(&urls[1]))
    };
    assert!(named("taken out of dispatch"), "{log}");
    assert!(named("vLLM server back: re-synced"), "{log}");
    let metrics = run_outputs::metrics(&two);
    let last = &metrics[&STEPS];
    assert!(
        last["vllm/taken_out"] >= 1.0 && last["vllm/recovered"] >= 1.0,
        "{last:?}"
    );
    assert_eq!(last["vllm/servers_serving"], 2.0);

    // 4. The only server SIGKILLed after step 3: a clear error within unavailable_timeout_s (20 s)
    //    plus the time to notice; then `--resume` on the restarted server finishes the run.
    const SOLO_STEPS: i64 = 8;
    let solo = dir.path().join("solo");
    let solo_args = args(&urls[..1], SOLO_STEPS as u64, &[]);
    let trainer = Background::start(&solo, &solo_args, false);
    trainer.wait_for_line(&format!("step 3/{SOLO_STEPS}"), Duration::from_secs(600));
    let killed = Instant::now();
    servers[0].kill();
    let (success, log) = trainer.finish();
    let stopped_after = killed.elapsed();
    assert!(!success, "{log}");
    assert!(
        log.contains("no vLLM server answered") && log.contains(&urls[0]),
        "{log}"
    );
    assert!(
        stopped_after < Duration::from_secs(90),
        "stopped after {stopped_after:?}"
    );
    let done = run_outputs::metrics(&solo);
    let last_done = *done.keys().max().unwrap();
    assert!((3..SOLO_STEPS).contains(&last_done), "{:?}", done.keys());
    servers[0] = ServerProcess::start(&specs[0]).unwrap();
    wait_ready(&mut servers[..1]);
    let (success, log) = Background::start(&solo, &solo_args, true).finish();
    assert!(success, "{log}");
    assert_every_step_once(&solo, SOLO_STEPS);

    for server in servers.iter_mut() {
        server.stop(Duration::from_secs(10));
    }
}
