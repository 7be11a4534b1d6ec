//! What the app's real-vLLM tests share: the vLLM Python, the run settings that keep a two-core
//! machine inside its means, servers started (and killed) by the test itself, and log reading.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use alp_rollout::LogprobMode;
use alp_test_support::vllm::{cpu_server_env, math_vllm_server_args};
pub use alp_test_support::vllm::{free_port, vllm_python};
use alp_vllm::{wait_ready_blocking, LaunchSpec, ServerLogprobsMode, ServerProcess};

pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-vllm.toml");

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
    LaunchSpec {
        python: vllm_python(),
        model: model.canonicalize().unwrap(),
        port,
        logprobs_mode: ServerLogprobsMode::for_rollout(LogprobMode::Temperature),
        args: math_vllm_server_args(),
        env: cpu_server_env(),
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
    // Two servers starting together on a busy two-core machine have taken over 200 s.
    wait_ready_blocking(servers, Duration::from_secs(900)).unwrap();
}
