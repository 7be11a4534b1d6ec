//! The one error type of the crate: every failure a caller can see, worded for the person who wrote the config or
//! the dataset.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EnvError {
    #[error("unknown environment `{name}`; registered: {known}")]
    UnknownEnv { name: String, known: String },
    #[error("environment `{0}` is already registered")]
    DuplicateEnv(String),
    #[error("env `{env}`: settings must be a table, got {got}")]
    SettingsNotTable { env: String, got: String },
    #[error("env `{env}`: setting `{field}`: {message}")]
    Setting {
        env: String,
        field: String,
        message: String,
    },
    #[error("override `{0}`: expected KEY=VALUE (VALUE a number, true/false, JSON, or text)")]
    BadOverride(String),
    #[error("dataset {path}: {message}")]
    Dataset { path: String, message: String },
    #[error("env `{env}`: bad example: {message}")]
    BadExample { env: String, message: String },
    #[error("env `{env}`: {message}")]
    Generation { env: String, message: String },
    #[error("bad input line: {0}")]
    BadInput(String),
    #[error("the episode is already done; start a new one with reset")]
    EpisodeDone,
}

impl EnvError {
    pub(crate) fn bad_example(env: &str, message: impl Into<String>) -> Self {
        EnvError::BadExample {
            env: env.to_string(),
            message: message.into(),
        }
    }
}
