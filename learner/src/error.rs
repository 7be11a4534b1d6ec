//! The learner's error type.
use thiserror::Error;

use crate::settings_error::SettingsError;

#[derive(Debug, Error)]
pub enum LearnerError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A batch the learner cannot train on (empty group, length mismatch, ...).
    #[error("invalid batch: {0}")]
    Batch(String),
    /// A saved optimizer or learner state that does not fit the current parameters.
    #[error("state mismatch: {0}")]
    State(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// Summing gradients or counts across processes failed (a peer died or hung: see alp-dist).
    #[error("gradient sync across processes: {0}")]
    Sync(String),
    /// A LoRA adapter that cannot be saved, or a saved one that does not fit the trained adapter.
    #[error(transparent)]
    Lora(#[from] alp_policy::LoraError),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = LearnerError> = std::result::Result<T, E>;
