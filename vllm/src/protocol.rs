//! The JSON of the vLLM endpoints this client uses, as vLLM 0.32 defines them
//! (`entrypoints/openai/completion/protocol.py`, `entrypoints/rl/online/api_router.py`,
//! `entrypoints/serve/dev/`). Only the fields we send or read.
use serde::{Deserialize, Serialize};

/// `POST /v1/completions` with one token-id prompt (one row per request, so rows can be dispatched,
/// retried and moved between servers one by one).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Vec<i64>,
    pub max_tokens: usize,
    /// 0 is greedy (vLLM treats temperatures below 1e-5 as argmax).
    pub temperature: f64,
    pub top_p: f64,
    /// 0 is off.
    pub top_k: i64,
    /// Neutral values sent explicitly: a model's generation_config.json would otherwise supply them.
    pub min_p: f64,
    pub repetition_penalty: f64,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    pub seed: i64,
    pub stop_token_ids: Vec<i64>,
    /// The model's EOS only stops a row through `stop_token_ids`, exactly as in the local engine.
    pub ignore_eos: bool,
    /// Log-probs of the sampled tokens only.
    pub logprobs: u32,
    pub return_token_ids: bool,
    pub skip_special_tokens: bool,
    /// The weight version: a prefix-cache entry of older weights can never be reused.
    pub cache_salt: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionResponse {
    pub choices: Vec<CompletionChoice>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionChoice {
    pub finish_reason: Option<String>,
    pub stop_reason: Option<serde_json::Value>,
    pub token_ids: Option<Vec<i64>>,
    pub prompt_token_ids: Option<Vec<i64>>,
    pub logprobs: Option<CompletionLogprobs>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionLogprobs {
    pub token_logprobs: Vec<Option<f64>>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelList {
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub max_model_len: Option<usize>,
}

/// `GET /weight_info`.
#[derive(Debug, Clone, Deserialize)]
pub struct WeightInfo {
    pub weight_version: Option<String>,
}

/// `GET /server_info?config_format=json` (dev mode): the parts of `vllm_config.model_config` that
/// decide what the returned log-probs mean.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerInfo {
    pub vllm_config: ServerConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    pub model_config: ServerModelConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerModelConfig {
    pub logprobs_mode: String,
    pub dtype: serde_json::Value,
    pub max_model_len: Option<usize>,
}
