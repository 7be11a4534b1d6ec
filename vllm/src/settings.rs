//! `[rollout.vllm]`: where the servers are (or how to start them), how long to wait for them, and how
//! weight syncs are written and verified. The app config embeds [`VllmSettings`]; every field has a
//! default, so `[rollout.vllm]` with `launch = true` (or a `servers` list) is a complete section.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::VllmError;

/// Flags of the server command line that alp-rl sets itself when it launches servers.
pub const OWNED_FLAGS: &[&str] = &["--model", "--host", "--port", "--logprobs-mode"];

/// The vLLM rollout backend's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VllmSettings {
    /// Base URLs of running servers (`http://127.0.0.1:8000`), started by you with
    /// `VLLM_SERVER_DEV_MODE=1` (the pause/reload endpoints) and `--logprobs-mode` as docs/vllm.md says.
    /// Leave empty with `launch = true`.
    pub servers: Vec<String>,
    /// Start `count` servers on the model being trained, and stop them when the backend is dropped.
    pub launch: bool,
    /// With `launch`: the Python that has vLLM (`scripts/setup-vllm.sh` prints the CPU build's).
    pub python: PathBuf,
    /// With `launch`: extra server arguments (`--dtype`, `--max-model-len`, `--enforce-eager`,
    /// `--tensor-parallel-size`, ...). alp-rl sets `--model`, `--host`, `--port` and `--logprobs-mode`.
    pub args: Vec<String>,
    /// With `launch`: extra environment of the server processes (e.g. `CUDA_VISIBLE_DEVICES`,
    /// `VLLM_CPU_KVCACHE_SPACE`), on top of the offline and dev-mode variables alp-rl always sets.
    pub env: BTreeMap<String, String>,
    /// With `launch`: the first server's port on 127.0.0.1; server `i` listens on `port + i`.
    pub port: u16,
    /// With `launch`: how many servers.
    pub count: usize,
    /// With `launch`: seconds a server may take to answer `/health` after it starts (vLLM loads the
    /// model and warms up first: about a minute for a tiny model on two CPU cores).
    pub ready_timeout_s: f64,
    /// With `launch`: the folder for the servers' logs (`server-<i>.log`); the app puts it in the run
    /// directory.
    pub log_dir: Option<PathBuf>,
    /// Seconds one completion request may take before its server counts as failed.
    pub request_timeout_s: f64,
    /// Consecutive failures of one server (connection refused, timeout, 5xx) before it is taken out of
    /// dispatch; before that each failure only pauses it for a backoff.
    pub retries: u32,
    /// The first backoff after a failure, in seconds; it doubles per consecutive failure.
    pub backoff_initial_s: f64,
    /// The longest backoff, in seconds.
    pub backoff_max_s: f64,
    /// How often, in seconds, a server taken out is asked `/health`; when it answers it is re-synced
    /// to the current weights (and probed) before it gets work.
    pub health_interval_s: f64,
    /// Seconds generation (or a sync) waits with no server answering before it fails with an error
    /// naming every server and why it is out.
    pub unavailable_timeout_s: f64,
    /// Requests in flight per server at most (vLLM batches them itself).
    pub max_inflight_per_server: usize,
    /// Where synced weights are written (`<sync_dir>/v<version>/`). It must be readable by the servers
    /// at the same absolute path; the app puts it in the run directory.
    pub sync_dir: Option<PathBuf>,
    /// dtype of the synced weight files: `f32`, `bf16` or `f16` (the server casts to its `--dtype`);
    /// unset: the learner's dtype.
    pub sync_dtype: Option<String>,
    /// Seconds one server may take for the pause, reload, version and resume calls of a sync.
    pub sync_timeout_s: f64,
    /// Fixed probe prompts completed greedily by every server after each sync.
    pub probe_prompts: usize,
    /// Tokens generated per probe prompt.
    pub probe_tokens: usize,
    /// Largest |server log-prob - ours| allowed on a probe token. Unset: 1e-3 for an f32 server, 0.5
    /// for bf16/f16 (their kernels differ from ours by up to a few tenths on single tokens).
    pub probe_max_abs_diff: Option<f64>,
    /// Largest mean |server log-prob - ours| over all probe tokens. Unset: 1e-4 for an f32 server,
    /// 0.05 for bf16/f16. A stale LM head or a layer left unloaded shifts every token and exceeds it.
    pub probe_mean_abs_diff: Option<f64>,
}

impl Default for VllmSettings {
    fn default() -> Self {
        VllmSettings {
            servers: Vec::new(),
            launch: false,
            python: PathBuf::from("python3"),
            args: Vec::new(),
            env: BTreeMap::new(),
            port: 8000,
            count: 1,
            ready_timeout_s: 600.0,
            log_dir: None,
            request_timeout_s: 600.0,
            retries: 3,
            backoff_initial_s: 0.5,
            backoff_max_s: 10.0,
            health_interval_s: 2.0,
            unavailable_timeout_s: 300.0,
            max_inflight_per_server: 256,
            sync_dir: None,
            sync_dtype: None,
            sync_timeout_s: 600.0,
            probe_prompts: 2,
            probe_tokens: 16,
            probe_max_abs_diff: None,
            probe_mean_abs_diff: None,
        }
    }
}

/// A refused setting.
fn bad(field: &'static str, problem: String) -> VllmError {
    VllmError::Setting { field, problem }
}

/// Probe tolerances for a server's dtype, as [`VllmSettings::probe_max_abs_diff`] documents.
pub fn probe_tolerances(settings: &VllmSettings, server_dtype: &str) -> (f64, f64) {
    let full = matches!(server_dtype, "float32" | "float" | "torch.float32" | "fp32");
    let (max, mean) = if full { (1e-3, 1e-4) } else { (0.5, 0.05) };
    (
        settings.probe_max_abs_diff.unwrap_or(max),
        settings.probe_mean_abs_diff.unwrap_or(mean),
    )
}

impl VllmSettings {
    /// Refuses settings that cannot work, naming the field and the fix.
    pub fn validate(&self) -> Result<(), VllmError> {
        self.validate_servers()?;
        if self.launch {
            self.validate_launch()?;
        }
        self.validate_limits()?;
        self.validate_sync()
    }

    /// Running servers or launched ones, not both; base URLs.
    fn validate_servers(&self) -> Result<(), VllmError> {
        match (self.launch, self.servers.is_empty()) {
            (true, false) => {
                return Err(bad(
                    "servers",
                    "is set together with launch = true; either list running servers or let \
                     alp-rl launch them, not both"
                        .into(),
                ))
            }
            (false, true) => {
                return Err(bad(
                    "servers",
                    "is empty and launch = false; list the base URLs of running servers \
                     (servers = [\"http://127.0.0.1:8000\"]) or set launch = true"
                        .into(),
                ))
            }
            _ => {}
        }
        for url in &self.servers {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(
                    "servers",
                    format!("has {url:?}; write base URLs such as \"http://127.0.0.1:8000\""),
                ));
            }
        }
        Ok(())
    }

    /// What `launch = true` needs: servers to start, a log folder, ports, no flags of ours in `args`.
    fn validate_launch(&self) -> Result<(), VllmError> {
        if self.count == 0 {
            return Err(bad("count", "is 0; launch at least one server".into()));
        }
        if self.log_dir.is_none() {
            return Err(bad(
                "log_dir",
                "is not set; with launch = true the servers' logs need a folder".into(),
            ));
        }
        if usize::from(self.port) + self.count > usize::from(u16::MAX) + 1 {
            return Err(bad(
                "port",
                format!("{} + count {} runs past port 65535", self.port, self.count),
            ));
        }
        if let Some(flag) = self.args.iter().find(|a| {
            let name = a.split('=').next().unwrap_or(a);
            OWNED_FLAGS.contains(&name)
        }) {
            return Err(bad(
                "args",
                format!(
                    "has {flag:?}, which alp-rl sets itself ({}); remove it (the port comes \
                     from `port`, the model from the run, the log-prob mode from the \
                     rollout's logprob_mode)",
                    OWNED_FLAGS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Positive, finite timeouts and at least one request per server.
    fn validate_limits(&self) -> Result<(), VllmError> {
        for (field, value) in [
            ("ready_timeout_s", self.ready_timeout_s),
            ("request_timeout_s", self.request_timeout_s),
            ("backoff_initial_s", self.backoff_initial_s),
            ("backoff_max_s", self.backoff_max_s),
            ("health_interval_s", self.health_interval_s),
            ("unavailable_timeout_s", self.unavailable_timeout_s),
            ("sync_timeout_s", self.sync_timeout_s),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(bad(
                    field,
                    format!("is {value}; use a positive number of seconds"),
                ));
            }
        }
        if self.max_inflight_per_server == 0 {
            return Err(bad(
                "max_inflight_per_server",
                "is 0; allow at least one request per server".into(),
            ));
        }
        Ok(())
    }

    /// A verified sync: a probe of at least one token, tolerances, the written dtype and folder.
    fn validate_sync(&self) -> Result<(), VllmError> {
        if self.probe_prompts == 0 || self.probe_tokens == 0 {
            return Err(bad(
                "probe_prompts",
                "and probe_tokens must both be at least 1: every sync is verified".into(),
            ));
        }
        for (field, value) in [
            ("probe_max_abs_diff", self.probe_max_abs_diff),
            ("probe_mean_abs_diff", self.probe_mean_abs_diff),
        ] {
            if let Some(v) = value.filter(|v| !(*v >= 0.0 && v.is_finite())) {
                return Err(bad(field, format!("is {v}; use a non-negative tolerance")));
            }
        }
        if let Some(dtype) = &self.sync_dtype {
            alp_policy::parse_kind(dtype).map_err(|_| {
                bad(
                    "sync_dtype",
                    format!("is {dtype:?}; use \"f32\", \"bf16\" or \"f16\""),
                )
            })?;
        }
        if self.sync_dir.is_none() {
            return Err(bad(
                "sync_dir",
                "is not set; give the folder where synced weights are written (the servers must \
                 read it at the same path)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn secs(value: f64) -> Duration {
        Duration::from_secs_f64(value)
    }

    /// The backoff after `failures` consecutive failures (1-based): initial, doubling, capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2f64.powi(failures.saturating_sub(1).min(30) as i32);
        Self::secs((self.backoff_initial_s * factor).min(self.backoff_max_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launched() -> VllmSettings {
        VllmSettings {
            launch: true,
            sync_dir: Some("/tmp/x".into()),
            log_dir: Some("/tmp/logs".into()),
            ..Default::default()
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = launched();
        let got: Vec<f64> = (1..=7).map(|k| s.backoff(k).as_secs_f64()).collect();
        assert_eq!(got, [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
    }

    #[test]
    fn refusals_name_the_field() {
        assert!(launched().validate().is_ok());
        let field = |s: VllmSettings| match s.validate() {
            Err(VllmError::Setting { field, .. }) => field,
            other => panic!("expected a setting error, got {other:?}"),
        };
        let mut s = launched();
        s.servers = vec!["http://a:1".into()];
        assert_eq!(field(s), "servers");
        assert_eq!(
            field(VllmSettings {
                sync_dir: Some("/x".into()),
                ..Default::default()
            }),
            "servers"
        );
        let mut s = launched();
        s.args = vec!["--port=9".into()];
        assert_eq!(field(s), "args");
        let mut s = launched();
        s.sync_dir = None;
        assert_eq!(field(s), "sync_dir");
        let mut s = launched();
        s.log_dir = None;
        assert_eq!(field(s), "log_dir");
        let mut s = launched();
        s.sync_dtype = Some("int8".into());
        assert_eq!(field(s), "sync_dtype");
        let mut s = launched();
        s.request_timeout_s = 0.0;
        assert_eq!(field(s), "request_timeout_s");
    }

    #[test]
    fn the_section_parses_from_toml_with_defaults() {
        let s: VllmSettings = serde_json::from_value(serde_json::json!({
            "launch": true, "count": 2, "args": ["--dtype", "float32"], "sync_dir": "/w"
        }))
        .unwrap();
        assert_eq!(s.count, 2);
        assert_eq!(s.retries, VllmSettings::default().retries);
        let unknown = serde_json::from_value::<VllmSettings>(serde_json::json!({"lanch": true}));
        assert!(unknown.unwrap_err().to_string().contains("lanch"));
    }
}
