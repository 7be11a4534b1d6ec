//! Why SFT data cannot be used: every error names its file and line, or the environment's example.
use std::path::PathBuf;

use alp_envs::EnvError;
use alp_rollout::RolloutError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SftDataError {
    #[error("reading the SFT data {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: not JSON")]
    NotJson {
        at: String,
        #[source]
        source: serde_json::Error,
    },
    /// A row of the wrong shape; `at` is `file:line`, `problem` says what the row needs.
    #[error("{at}: {problem}")]
    Row { at: String, problem: String },
    #[error("{} holds no rows", path.display())]
    Empty { path: PathBuf },
    #[error("{origin}: no worked answer")]
    NoWorkedAnswer { origin: String },
    /// A conversation the chat template cannot tokenise as the episode runner would.
    #[error("SFT data {origin}")]
    Encode {
        origin: String,
        #[source]
        source: RolloutError,
    },
    #[error(
        "SFT data {origin}: the conversation is {tokens} tokens, more than the model's context of \
         {context} tokens (max_position_embeddings); shorten it"
    )]
    TooLong {
        origin: String,
        tokens: usize,
        context: usize,
    },
    #[error(transparent)]
    Env(#[from] EnvError),
    /// An environment's message that does not serialise to JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}
