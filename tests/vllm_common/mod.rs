//! What the app's real-vLLM tests share: the vLLM Python, the run settings that keep a two-core
//! machine inside its means, servers started (and killed) by the test itself, and log reading.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use alp_rollout::LogprobMode;
use alp_vllm::{HttpClients, LaunchSpec, ServerLogprobsMode, ServerProcess};

pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-vllm.toml");

/// The Python with vLLM: `ALP_VLLM_PYTHON`, else where `scripts/setup-vllm.sh` installs it.
pub fn vllm_python() -> PathBuf {
    let path = std::env::var_os("ALP_VLLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/alp-rl/vllm-venv/bin/python")
        });
    assert!(
        path.exists(),
        "no vLLM Python at {}: run scripts/setup-vllm.sh (make test does) or set ALP_VLLM_PYTHON",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; nothing else here races for it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `--set` overrides that shrink configs/math-vllm.toml to a test: a warm start of `sft_steps`, 8
/// prompts a step, a small evaluation, and the test's vLLM Python.
pub fn short_run(sft_steps: u64, steps: u64) -> Vec<String> {
    [
        format!("sft.steps={sft_steps}"),
        "rollout.prompts_per_step=8".into(),
        "eval.problems=20".into(),
        "eval.every=10".into(),
        format!("run.steps={steps}"),
        "run.checkpoint_every=2".into(),
        format!("rollout.vllm.python=\"{}\"", vllm_python().display()),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

/// One server on `model` as configs/math-vllm.toml launches it, started by the test (so that the
/// test can SIGKILL and restart it), logging to `log`.
pub fn server_spec(model: &Path, port: u16, log: &Path) -> LaunchSpec {
    let args = [
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--max-num-seqs",
        "128",
        "--max-num-batched-tokens",
        "32768",
        "--gpu-memory-utilization",
        "0.1",
        "--enforce-eager",
    ];
    LaunchSpec {
        python: vllm_python(),
        model: model.canonicalize().unwrap(),
        port,
        logprobs_mode: ServerLogprobsMode::for_rollout(LogprobMode::Temperature),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![
            ("VLLM_CPU_OMP_THREADS_BIND".into(), "nobind".into()),
            ("VLLM_CPU_KVCACHE_SPACE".into(), "1".into()),
        ],
        log: log.to_path_buf(),
    }
}

/// Starts the servers and waits until every one answers `/health`.
pub fn start_servers(specs: &[LaunchSpec]) -> Vec<ServerProcess> {
    let mut servers: Vec<ServerProcess> = specs
        .iter()
        .map(|s| ServerProcess::start(s).unwrap())
        .collect();
    wait_ready(&mut servers);
    servers
}

pub fn wait_ready(servers: &mut [ServerProcess]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = HttpClients::new().unwrap();
    // Two servers starting together on a busy two-core machine have taken over 200 s.
    runtime
        .block_on(alp_vllm::wait_ready(
            servers,
            &http,
            Duration::from_secs(900),
        ))
        .unwrap();
}
