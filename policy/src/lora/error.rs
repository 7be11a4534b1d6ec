//! Errors of LoRA adapters: each names the file (or settings) it is about, the key or tensor, what is
//! wrong and how to fix it, so the message alone tells a user what to do.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoraError {
    /// A setting or tensor that this adapter cannot accept. `file` is the file (an
    /// `adapter_config.json`, an `adapter_model.safetensors`) or the settings the value came from.
    #[error("{file}: `{key}` {problem}; fix: {fix}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
        fix: String,
    },

    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },

    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },

    /// The model refused what the adapter asked of it (a merge's weight copy).
    #[error(transparent)]
    Model(#[from] crate::error::PolicyError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl LoraError {
    /// An [`LoraError::Invalid`] about `key` of `file`.
    pub fn invalid(
        file: impl std::fmt::Display,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        LoraError::Invalid {
            file: file.to_string(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The key or tensor an [`LoraError::Invalid`] is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            LoraError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}
