//! One vLLM server over HTTP: the calls, their timeouts, and the mapping of failures to
//! [`VllmError`] (unreachable and 5xx are transient; 4xx and malformed answers are not).
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::VllmError;
use crate::logprobs::ServerLogprobsMode;
use crate::protocol::{
    CompletionChoice, CompletionRequest, CompletionResponse, ModelList, ServerInfo, WeightInfo,
};

/// How long a control call (health, info, pause, resume, version) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `/health` may take when a down server is polled.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a server told us about itself when we connected.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFacts {
    /// The served model name, sent as `model` in every request.
    pub model: String,
    pub max_model_len: Option<usize>,
    pub logprobs_mode: ServerLogprobsMode,
    /// `float32`, `bfloat16`, ...
    pub dtype: String,
}

/// The HTTP clients every server handle shares.
#[derive(Debug, Clone)]
pub struct HttpClients {
    /// Completions: kept-alive connections.
    pooled: reqwest::Client,
    /// Control calls (health, sync): a fresh connection each. vLLM closes a connection after some
    /// errors (a failed reload's HTTP 500), and a pooled connection's next request then dies with a
    /// reset that would count as the server failing.
    fresh: reqwest::Client,
}

impl HttpClients {
    pub fn new() -> Result<Self, VllmError> {
        // Servers are on the cluster's network: a proxy from the environment would only get between.
        let build = |pool: bool| {
            let builder = reqwest::Client::builder().no_proxy();
            let builder = if pool {
                // Below uvicorn's 5 s keep-alive: a connection the server is closing is never reused.
                builder.pool_idle_timeout(Duration::from_secs(3))
            } else {
                builder.pool_max_idle_per_host(0)
            };
            builder
                .build()
                .map_err(|e| VllmError::Runtime(format!("HTTP client: {e}")))
        };
        Ok(HttpClients {
            pooled: build(true)?,
            fresh: build(false)?,
        })
    }
}

/// A handle on one server; cheap to clone into request tasks.
#[derive(Debug, Clone)]
pub struct ServerClient {
    base: String,
    /// Completions.
    pooled: reqwest::Client,
    /// Everything else.
    http: reqwest::Client,
}

impl ServerClient {
    pub fn new(base: &str, clients: &HttpClients) -> Self {
        ServerClient {
            base: base.trim_end_matches('/').to_string(),
            pooled: clients.pooled.clone(),
            http: clients.fresh.clone(),
        }
    }

    /// The base URL, as logs and errors name the server.
    pub fn name(&self) -> &str {
        &self.base
    }

    /// `GET /health` answers 200.
    pub async fn health(&self) -> Result<(), VllmError> {
        let response = self
            .http
            .get(format!("{}/health", self.base))
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable("health", e))?;
        self.check_status("health", response).await.map(drop)
    }

    /// The served model, its context and how it computes log-probs (`/v1/models`, `/server_info`).
    /// `/server_info` collects the server's system environment on its first call (tens of seconds
    /// on a busy machine), hence its own `timeout`.
    pub async fn facts(&self, timeout: Duration) -> Result<ServerFacts, VllmError> {
        let models: ModelList = self
            .get_json("models", "/v1/models", CONTROL_TIMEOUT)
            .await?;
        let card = models
            .data
            .into_iter()
            .next()
            .ok_or_else(|| self.protocol("models", "the server serves no model".into()))?;
        let info: ServerInfo = self
            .get_json("server_info", "/server_info?config_format=json", timeout)
            .await
            .map_err(|e| match e {
                VllmError::Status { status: 404, .. } => VllmError::Incompatible {
                    server: self.base.clone(),
                    problem: "GET /server_info is not served: start the server with \
                              VLLM_SERVER_DEV_MODE=1 (weight sync needs its /pause, \
                              /collective_rpc and /resume endpoints)"
                        .into(),
                },
                e => e,
            })?;
        let model_config = info.vllm_config.model_config;
        let mode = model_config.logprobs_mode.as_str();
        let logprobs_mode =
            ServerLogprobsMode::parse(mode).ok_or_else(|| VllmError::Incompatible {
                server: self.base.clone(),
                problem: format!("unknown --logprobs-mode {mode:?}"),
            })?;
        let dtype = match &model_config.dtype {
            serde_json::Value::String(s) => s.trim_start_matches("torch.").to_string(),
            other => other.to_string(),
        };
        Ok(ServerFacts {
            model: card.id,
            max_model_len: card.max_model_len.or(model_config.max_model_len),
            logprobs_mode,
            dtype,
        })
    }

    /// `POST /v1/completions` for one row.
    pub async fn complete(
        &self,
        request: &CompletionRequest,
        timeout: Duration,
    ) -> Result<CompletionChoice, VllmError> {
        let response = self
            .pooled
            .post(format!("{}/v1/completions", self.base))
            .json(request)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable("completions", e))?;
        let response: CompletionResponse = self.parse("completions", response).await?;
        let n = response.choices.len();
        let mut choices = response.choices.into_iter();
        match (choices.next(), n) {
            (Some(choice), 1) => Ok(choice),
            _ => Err(self.protocol(
                "completions",
                format!("{n} choices for one prompt (expected 1)"),
            )),
        }
    }

    /// `POST /pause?mode=wait`: finish running requests, take no new ones; clears the prefix cache.
    pub async fn pause(&self, timeout: Duration) -> Result<(), VllmError> {
        self.post_empty("pause", "/pause?mode=wait", timeout).await
    }

    pub async fn resume(&self) -> Result<(), VllmError> {
        self.post_empty("resume", "/resume", CONTROL_TIMEOUT).await
    }

    /// `POST /collective_rpc` `reload_weights`: every worker reloads the HF safetensors in `dir`.
    pub async fn reload_weights(&self, dir: &Path, timeout: Duration) -> Result<(), VllmError> {
        let body = serde_json::json!({
            "method": "reload_weights",
            "kwargs": {"weights_path": dir.display().to_string()},
        });
        let response = self
            .http
            .post(format!("{}/collective_rpc", self.base))
            .json(&body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable("reload_weights", e))?;
        self.check_status("reload_weights", response)
            .await
            .map(drop)
    }

    /// `POST /v1/load_lora_adapter`: the PEFT adapter in `dir` served under `name` (requests name it
    /// as their `model`). Needs a server started with `--enable-lora` and
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
    pub async fn load_lora_adapter(
        &self,
        name: &str,
        dir: &Path,
        timeout: Duration,
    ) -> Result<(), VllmError> {
        let body = serde_json::json!({
            "lora_name": name,
            "lora_path": dir.display().to_string(),
        });
        let response = self
            .http
            .post(format!("{}/v1/load_lora_adapter", self.base))
            .json(&body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable("load_lora_adapter", e))?;
        self.check_status("load_lora_adapter", response)
            .await
            .map(drop)
    }

    /// `POST /v1/unload_lora_adapter`: stop serving the adapter `name`.
    pub async fn unload_lora_adapter(&self, name: &str) -> Result<(), VllmError> {
        let body = serde_json::json!({ "lora_name": name });
        let response = self
            .http
            .post(format!("{}/v1/unload_lora_adapter", self.base))
            .json(&body)
            .timeout(CONTROL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable("unload_lora_adapter", e))?;
        self.check_status("unload_lora_adapter", response)
            .await
            .map(drop)
    }

    /// The ids `GET /v1/models` lists: the base model, then every adapter loaded.
    pub async fn model_ids(&self) -> Result<Vec<String>, VllmError> {
        let models: ModelList = self
            .get_json("models", "/v1/models", CONTROL_TIMEOUT)
            .await?;
        Ok(models.data.into_iter().map(|c| c.id).collect())
    }

    /// `POST /update_weight_version`.
    pub async fn set_version(&self, version: &str) -> Result<(), VllmError> {
        let body = serde_json::json!({ "new_version": version });
        let response = self
            .http
            .post(format!("{}/update_weight_version", self.base))
            .json(&body)
            .timeout(CONTROL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable("update_weight_version", e))?;
        self.check_status("update_weight_version", response)
            .await
            .map(drop)
    }

    /// `GET /weight_info`: the version the server says it holds.
    pub async fn version(&self) -> Result<Option<String>, VllmError> {
        let info: WeightInfo = self
            .get_json("weight_info", "/weight_info", CONTROL_TIMEOUT)
            .await?;
        Ok(info.weight_version)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        call: &'static str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, VllmError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(call, e))?;
        self.parse(call, response).await
    }

    async fn post_empty(
        &self,
        call: &'static str,
        path: &str,
        timeout: Duration,
    ) -> Result<(), VllmError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(call, e))?;
        self.check_status(call, response).await.map(drop)
    }

    async fn parse<T: DeserializeOwned>(
        &self,
        call: &'static str,
        response: reqwest::Response,
    ) -> Result<T, VllmError> {
        let response = self.check_status(call, response).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(call, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            let text = String::from_utf8_lossy(&bytes);
            self.protocol(call, format!("{e} in {}", clip(&text)))
        })
    }

    async fn check_status(
        &self,
        call: &'static str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, VllmError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(VllmError::Status {
            server: self.base.clone(),
            call,
            status: status.as_u16(),
            body: clip(&body),
        })
    }

    fn unreachable(&self, call: &'static str, e: reqwest::Error) -> VllmError {
        let message = if e.is_timeout() {
            "no answer in time".to_string()
        } else if e.is_connect() {
            "connection refused or lost".to_string()
        } else {
            error_chain(&e)
        };
        VllmError::Unreachable {
            server: self.base.clone(),
            call,
            message,
            refused: e.is_connect(),
        }
    }

    fn protocol(&self, call: &'static str, problem: String) -> VllmError {
        VllmError::Protocol {
            server: self.base.clone(),
            call,
            problem,
        }
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Long server answers cut for error messages.
fn clip(text: &str) -> String {
    const MAX: usize = 600;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
