//! Rollout: generation backends behind one trait ([`GenerationBackend`]), the one message that gives
//! them new weights ([`WeightUpdate`]), token sampling with per-token log-probs, episodes and
//! evaluation on any backend.
//!
//! Names: a *backend* is anything implementing [`GenerationBackend`]; the local backend is the
//! *engine* ([`LocalEngine`], in process on libtorch), the other is vLLM servers (`alp_vllm`). The
//! application's *rollout worker* is the thread that drives one backend to generate batches.
//!
//! ```text
//! backend.rs   GenerationBackend, GenerationRequest, Completion,  the seam (local engine, vLLM in
//!              SyncReport, ReplicaHealth                          crate alp-vllm): generate, sync, health
//! engine.rs    LocalEngine: continuous batching of prefill + KV-cache decode on a libtorch CausalLM
//! episode.rs   run_episodes: environments + chat template + backend -> token trajectories;
//!              encode_conversation: the same layout for a worked conversation (SFT)
//! eval.rs      evaluate: accuracy (avg@k) and unbiased pass@k over k samples per problem
//! sampling.rs  SamplingParams, LogprobMode, greedy/temperature/top-k/top-p with seeded rows
//! weight_update.rs  WeightUpdate: the one message that moves weights from the learner to a backend
//! ```
pub mod backend;
mod cpu_draw;
mod decode_rows;
pub mod engine;
pub mod episode;
pub mod error;
pub mod eval;
pub mod sampling;
pub mod weight_update;

pub use backend::{
    Completion, FinishReason, GenerationBackend, GenerationRequest, OnFinished, ProbeReport,
    ReplicaHealth, ReplicaState, SyncReport,
};
pub use engine::{DecodeStats, LocalEngine, Scheduling};
pub use episode::{
    encode_conversation, panic_message, run_episodes, run_member_episodes, EpisodeSettings,
    TokenizedConversation, Trajectory,
};
pub use error::RolloutError;
pub use eval::{evaluate, pass_at_k, EvalReport};
pub use sampling::{
    default_stop_tokens, processed_logprobs, LogprobMode, RowSampler, SamplingParams,
};
pub use weight_update::{NamedTensors, WeightPayload, WeightUpdate};
