//! Rollouts on vLLM servers behind the rollout crate's [`alp_rollout::GenerationBackend`].
//!
//! A crate of its own so that the HTTP/async stack (tokio, reqwest, hyper) stays out of the local
//! engine's build; the app depends on it for `[rollout] backend = "vllm"`.
//!
//! ```text
//! adapter_calls.rs  one server's adapter endpoints: load under a name (version checked), unload
//! adapter_sync.rs  LoRA adapters as the sync payload: written in PEFT's format, loaded by name
//! members.rs   the population being served (MemberAdapters)
//! member_adapters.rs  an EGGROLL population's members as adapters, loaded and probed when named
//! backend.rs   VllmBackend: GenerationBackend on servers; launch or connect; sync orchestration
//! dispatch.rs  rows over servers: least outstanding first, backoff, take-out, fail-over, re-sync
//! replica.rs   one server's state and counters; sync_server (pause/reload/version/resume + probe)
//! client.rs    one server over HTTP: /v1/completions, /pause, /collective_rpc, /weight_info, ...
//! protocol.rs  the JSON of those endpoints (vLLM 0.32)
//! probe.rs     the sync probe: greedy reference from our forward, comparison with a tolerance
//! logprobs.rs  vLLM's --logprobs-mode vs our LogprobMode: which combinations mean the same
//! weights.rs   the sync folder: versioned HF checkpoints (with lm_head for tied models)
//! launch.rs    server processes: command line, environment, logs, ready wait, stop/kill
//! settings.rs  VllmSettings, the [rollout.vllm] section
//! error.rs     VllmError
//! ```
pub mod adapter_calls;
pub mod adapter_sync;
pub mod backend;
pub mod client;
pub mod dispatch;
pub mod error;
pub mod launch;
pub mod logprobs;
pub mod member_adapters;
pub mod members;
pub mod probe;
pub mod protocol;
pub mod replica;
pub mod settings;
pub mod weights;

pub use adapter_calls::adapter_name;
pub use adapter_sync::{lora_server_args, write_adapter};
pub use backend::VllmBackend;
pub use client::{HttpClients, ServerClient};
pub use error::VllmError;
pub use launch::{
    launch_specs, wait_ready, wait_ready_blocking, LaunchSpec, ServerProcess, SERVER_ENV,
};
pub use logprobs::ServerLogprobsMode;
pub use probe::{probe_prompts, ProbeReference};
pub use replica::ReplicaStats;
pub use settings::VllmSettings;
pub use weights::SyncDir;
