//! One error type for the crate. Every variant names the file or template involved, because a
//! tokenizer directory is usually assembled by hand and the first question is always "which file?".

use std::path::PathBuf;

/// Errors from loading tokenizers, rendering chat templates and encoding text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that must exist is missing.
    #[error("missing file {path}: {what}")]
    MissingFile { path: PathBuf, what: &'static str },

    /// A file exists but could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file does not parse.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A JSON file parses but a field has the wrong shape.
    #[error("bad field `{field}` in {path}: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// The `tokenizers` library rejected a tokenizer definition.
    #[error("cannot load tokenizer from {source_name}: {message}")]
    Load {
        source_name: String,
        message: String,
    },

    /// Encoding or decoding failed inside the `tokenizers` library.
    #[error("tokenizer failed to {op}: {message}")]
    Tokenize { op: &'static str, message: String },

    /// No chat template is available (or the requested named one does not exist).
    #[error("no chat template: {0}")]
    NoChatTemplate(String),

    /// The template source does not compile.
    #[error("chat template {name} does not compile: {message}")]
    TemplateSyntax { name: String, message: String },

    /// Rendering failed; for `raise_exception(...)` the message is the template's own text.
    #[error("chat template {name} failed to render: {message}")]
    Render { name: String, message: String },

    /// A caller-supplied argument is unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Crate result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
