//! The seam between the rollout worker (and evaluation) and whatever generates tokens: a backend,
//! either the local backend's libtorch engine ([`crate::LocalEngine`]) or vLLM servers (crate
//! `alp-vllm`). Both take token-id prompts and return token ids with per-token
//! log-probs, tagged with the policy version that produced them; both take new weights as a
//! [`WeightUpdate`] ([`GenerationBackend::apply_update`]) and report their health, so the train loop,
//! evaluation and the episode runner need not know which one they drive.
use alp_policy::CausalLM;

use crate::error::RolloutError;
use crate::sampling::SamplingParams;
use crate::weight_update::WeightUpdate;

/// One prompt to complete, with optional per-row limits that override the call's settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<i64>,
    pub max_new_tokens: Option<usize>,
    pub stop_token_ids: Option<Vec<i64>>,
    /// The population member whose weights serve this request (evolution strategies; the backend
    /// must have the population installed); `None`: the plain policy.
    pub member: Option<usize>,
    /// The random stream the request samples from ([`crate::SamplingParams::row_seed`]); `None`: its
    /// index in the call. Episodes name their own index, so every turn of an episode draws from the
    /// episode's stream whichever other episodes are still running (and a process generating a
    /// slice of a batch draws what one process generating all of it would).
    pub stream: Option<u64>,
}

impl GenerationRequest {
    pub fn new(prompt_ids: Vec<i64>) -> Self {
        GenerationRequest {
            prompt_ids,
            ..Default::default()
        }
    }

    /// The random stream this request samples from when it is request number `index` of its call.
    pub fn stream_or(&self, index: usize) -> usize {
        self.stream.map_or(index, |s| s as usize)
    }
}

/// The random streams of `requests[i]` for each `i` of `rows`, the call's requests `first + i`.
pub(crate) fn streams(requests: &[GenerationRequest], rows: &[usize], first: usize) -> Vec<usize> {
    rows.iter()
        .map(|&i| requests[i].stream_or(first + i))
        .collect()
}

alp_macros::string_enum! {
    /// Why a completion ended.
    pub enum FinishReason {
        /// A stop token was sampled (it is the last completion token).
        Stop => "stop",
        /// The row reached its `max_new_tokens`.
        Length => "length",
    }
}

/// A finished completion: token ids, the log-prob of each under the sampling distribution (see
/// [`crate::LogprobMode`]) and the policy version of the weights that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub prompt_ids: Vec<i64>,
    pub completion_ids: Vec<i64>,
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
    pub policy_version: u64,
}

/// What a weight sync did, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncReport {
    /// The version the backend now generates with.
    pub version: u64,
    /// One verification per replica that received the weights over a channel that can go wrong (a
    /// remote server's probe); empty for an in-process copy.
    pub probes: Vec<ProbeReport>,
    /// Wall time of the whole sync, writing the weights included.
    pub seconds: f64,
    /// Bytes of what the sync moved: the update's tensors for an in-process copy, the files written
    /// for remote servers.
    pub bytes: u64,
}

/// A replica's answer to the sync probe, compared with our forward on the same weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    pub replica: String,
    /// Completion tokens whose log-probs were compared.
    pub tokens_compared: usize,
    pub max_abs_logprob_diff: f64,
    pub mean_abs_logprob_diff: f64,
}

/// Whether a replica takes work.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaState {
    /// Up and holding the current weights.
    Serving,
    /// Up, but not (yet) verified to hold the current weights; it gets no work until a sync passes.
    Unsynced,
    /// Not answering; taken out of dispatch until it answers and is re-synced.
    Down { reason: String },
}

/// One replica of a backend: the in-process engine, or one server.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaHealth {
    pub name: String,
    pub state: ReplicaState,
    /// The weight version the replica holds, where known.
    pub version: Option<u64>,
}

/// A callback told each request's completion length as the request finishes: progress reporting
/// ([`crate::LocalEngine::set_on_finished`]).
pub type OnFinished = std::sync::Arc<dyn Fn(usize) + Send + Sync>;

/// Anything that completes token-id prompts.
pub trait GenerationBackend {
    /// Completes every request; the result has one completion per request, in order.
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>, RolloutError>;

    /// The version of the weights the next `generate` call will use.
    fn policy_version(&self) -> u64;

    /// Most tokens (prompt plus completion) one row may hold: the model's `max_position_embeddings`.
    /// `None`: no known bound (episodes are then bounded by `max_total_tokens` alone).
    fn max_context(&self) -> Option<usize> {
        None
    }

    /// Makes `update`'s weights the weights of every later `generate`, tagged `update.version`: the
    /// one way weights reach a backend ([`WeightUpdate`]). An error means no completion may be
    /// attributed to that version: the caller must not train on.
    fn apply_update(&mut self, update: &WeightUpdate) -> Result<SyncReport, RolloutError> {
        Err(RolloutError::Backend(format!(
            "this backend cannot take new weights (asked to apply a {} update to version {})",
            update.payload_kind(),
            update.version
        )))
    }

    /// [`Self::apply_update`] with every parameter of `weights` (the learner's model, on this thread).
    fn sync_weights(
        &mut self,
        weights: &CausalLM,
        version: u64,
    ) -> Result<SyncReport, RolloutError> {
        self.apply_update(&WeightUpdate::view_of(weights, version))
    }

    /// The state of each replica. Backends without replicas of their own report one, in process.
    fn health(&mut self) -> Vec<ReplicaHealth> {
        vec![ReplicaHealth {
            name: "in-process".into(),
            state: ReplicaState::Serving,
            version: Some(self.policy_version()),
        }]
    }
}
