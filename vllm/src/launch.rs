//! Starting and stopping vLLM server processes (`launch = true`).
//!
//! Each server runs `python -m vllm.entrypoints.openai.api_server` in a process group of its own
//! (vLLM forks an engine-core process), so stopping it stops the whole group. Output goes to
//! `<log_dir>/server-<i>.log`, appended across restarts. Nothing may leave the machine: usage stats,
//! telemetry and hub downloads are switched off.
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alp_rollout::LogprobMode;

use crate::client::{HttpClients, ServerClient};
use crate::error::VllmError;
use crate::logprobs::ServerLogprobsMode;
use crate::settings::VllmSettings;

/// Environment every launched server gets: offline, no telemetry, the dev endpoints for weight sync.
pub const SERVER_ENV: &[(&str, &str)] = &[
    ("VLLM_NO_USAGE_STATS", "1"),
    ("DO_NOT_TRACK", "1"),
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("VLLM_SERVER_DEV_MODE", "1"),
];

/// How to start one server.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub python: PathBuf,
    pub model: PathBuf,
    pub port: u16,
    pub logprobs_mode: ServerLogprobsMode,
    /// Extra arguments after ours.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl LaunchSpec {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The full argument list after the Python executable.
    pub fn argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = [
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            &self.model.display().to_string(),
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--logprobs-mode",
            self.logprobs_mode.as_str(),
            // The model's generation_config.json must not add stop tokens or sampling defaults: every
            // request states its own.
            "--generation-config",
            "vllm",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// A running server process (its process group).
#[derive(Debug)]
pub struct ServerProcess {
    spec: LaunchSpec,
    child: Child,
}

impl ServerProcess {
    /// Spawns the server; it is not ready yet (see [`wait_ready`]).
    pub fn start(spec: &LaunchSpec) -> Result<Self, VllmError> {
        let fail = |problem: String| VllmError::Launch {
            server: spec.url(),
            problem,
        };
        if let Some(dir) = spec.log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| fail(format!("cannot open the log {}: {e}", spec.log.display())))?;
        let err_log = log
            .try_clone()
            .map_err(|e| fail(format!("cannot share the log file: {e}")))?;
        let mut command = Command::new(&spec.python);
        command
            .args(spec.argv())
            .envs(SERVER_ENV.iter().copied())
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0);
        let child = command.spawn().map_err(|e| {
            fail(format!(
                "cannot run {}: {e} (set [rollout.vllm] python to a Python with vLLM; \
                 scripts/setup-vllm.sh installs the CPU build and prints its path)",
                spec.python.display()
            ))
        })?;
        tracing::info!(
            server = %spec.url(),
            pid = child.id(),
            log = %spec.log.display(),
            "started a vLLM server"
        );
        Ok(ServerProcess {
            spec: spec.clone(),
            child,
        })
    }

    pub fn url(&self) -> String {
        self.spec.url()
    }

    pub fn spec(&self) -> &LaunchSpec {
        &self.spec
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL to the whole group, as a crash would; waits for the main process.
    pub fn kill(&mut self) {
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM to the group, up to `grace` for it to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            signal_group(self.child.id(), libc::SIGKILL);
            return;
        }
        signal_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The engine core may outlive the API process; the group goes either way.
        self.kill();
        tracing::info!(server = %self.url(), "stopped a vLLM server");
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.spec.log, lines)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory of ours.
    // The group id is the child's pid (`process_group(0)`), and the child is not reaped yet (we
    // wait for it only after signalling), so the id cannot have been reused.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16_384)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// [`wait_ready`] for synchronous callers (tests, benchmarks): on a runtime and HTTP clients of its
/// own.
pub fn wait_ready_blocking(
    servers: &mut [ServerProcess],
    timeout: Duration,
) -> Result<(), VllmError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VllmError::Runtime(e.to_string()))?;
    let http = HttpClients::new()?;
    runtime.block_on(wait_ready(servers, &http, timeout))
}

/// Waits until every server answers `/health`, failing early when one exits.
pub async fn wait_ready(
    servers: &mut [ServerProcess],
    http: &HttpClients,
    timeout: Duration,
) -> Result<(), VllmError> {
    let start = Instant::now();
    let mut ready = vec![false; servers.len()];
    while !ready.iter().all(|&r| r) {
        for (server, ready) in servers.iter_mut().zip(ready.iter_mut()) {
            if *ready {
                continue;
            }
            if let Some(status) = server.exited() {
                return Err(VllmError::Launch {
                    server: server.url(),
                    problem: format!(
                        "exited ({status}) before it was ready; the end of {}:\n{}",
                        server.spec.log.display(),
                        server.log_tail(25)
                    ),
                });
            }
            let client = ServerClient::new(&server.url(), http);
            if client.health().await.is_ok() {
                tracing::info!(
                    server = %server.url(),
                    after_s = start.elapsed().as_secs_f64(),
                    "vLLM server ready"
                );
                *ready = true;
            }
        }
        if start.elapsed() > timeout {
            let late: Vec<String> = servers
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(s, _)| s.url())
                .collect();
            return Err(VllmError::Launch {
                server: late.join(", "),
                problem: format!(
                    "not ready after {:.0} s (ready_timeout_s); see the server logs in {}",
                    timeout.as_secs_f64(),
                    servers[0]
                        .spec
                        .log
                        .parent()
                        .unwrap_or(Path::new("."))
                        .display()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The servers `launch = true` starts: ports `port..port + count`, logs `server-<i>.log`.
pub fn launch_specs(
    settings: &VllmSettings,
    model_dir: &Path,
    logprob_mode: LogprobMode,
) -> Result<Vec<LaunchSpec>, VllmError> {
    settings.validate()?;
    let log_dir = settings.log_dir.clone().expect("validated");
    let model = model_dir.canonicalize().map_err(|e| VllmError::Launch {
        server: "(all)".into(),
        problem: format!("the model folder {}: {e}", model_dir.display()),
    })?;
    Ok((0..settings.count)
        .map(|i| LaunchSpec {
            python: settings.python.clone(),
            model: model.clone(),
            port: settings.port + i as u16,
            logprobs_mode: ServerLogprobsMode::for_rollout(logprob_mode),
            args: settings.args.clone(),
            env: settings
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            log: log_dir.join(format!("server-{i}.log")),
        })
        .collect())
}
