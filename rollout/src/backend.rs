//! The seam between the actor loop and whatever generates tokens: the local libtorch engine today, a
//! remote vLLM server later. Both take token-id prompts and return token ids with per-token log-probs,
//! tagged with the policy version that produced them.

use crate::error::RolloutError;
use crate::sampling::SamplingParams;

/// One prompt to complete, with optional per-row limits that override the call's settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<i64>,
    pub max_new_tokens: Option<usize>,
    pub stop_token_ids: Option<Vec<i64>>,
    /// The population member whose weights serve this request (evolution strategies; the backend
    /// must have the population installed); `None`: the plain policy.
    pub member: Option<usize>,
}

impl GenerationRequest {
    pub fn new(prompt_ids: Vec<i64>) -> Self {
        GenerationRequest {
            prompt_ids,
            ..Default::default()
        }
    }
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
}
