//! Errors of the rollout crate.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("sampling setting `{field}` {problem}")]
    InvalidSetting {
        field: &'static str,
        problem: String,
    },

    #[error("request {index}: {problem}")]
    InvalidRequest { index: usize, problem: String },

    #[error("generation backend: {0}")]
    Backend(String),

    /// A backend of another crate (vLLM servers) failed; downcast the source for its own error type.
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync + 'static>),

    /// A weight update that does not fit the model it is applied to, or cannot be (de)serialised.
    #[error("weight update to version {version}: {problem}")]
    WeightUpdate { version: u64, problem: String },

    #[error("cannot tokenise the conversation: {0}")]
    Conversation(String),
}
