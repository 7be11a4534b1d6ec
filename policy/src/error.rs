//! Errors of the policy crate. Each one names the file, the field or tensor, and what is wrong, so the
//! message alone tells a user what to fix.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid model config: {message}")]
    ConfigParse { path: String, message: String },

    #[error("{path}: field `{field}` {problem}")]
    ConfigField {
        path: String,
        field: &'static str,
        problem: String,
    },

    #[error("{path}: unknown architecture (model_type {model_type:?}); supported: {supported}")]
    UnsupportedArchitecture {
        path: String,
        model_type: String,
        /// The supported families, from the family table.
        supported: String,
    },

    #[error(
        "{dir}: no weights found (expected model.safetensors or model.safetensors.index.json)"
    )]
    NoWeights { dir: String },

    #[error("cannot install published weights: {problem}")]
    WeightsMismatch { problem: String },

    #[error("{path} is truncated or corrupt: {message}")]
    CorruptWeights { path: String, message: String },

    #[error(
        "tensor `{name}` is missing from the checkpoint in {dir} (expected shape {expected:?})"
    )]
    MissingTensor {
        dir: String,
        name: String,
        expected: Vec<i64>,
    },

    #[error("tensor `{name}` in {path} has shape {found:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        path: String,
        name: String,
        expected: Vec<i64>,
        found: Vec<usize>,
    },

    #[error("tensor `{name}` in {path} has dtype {dtype}; supported on disk: F32, BF16, F16")]
    UnsupportedDtype {
        path: String,
        name: String,
        dtype: String,
    },

    #[error("tensor `{name}` in {path} is not a parameter of this {architecture} model")]
    UnexpectedTensor {
        path: String,
        name: String,
        architecture: &'static str,
    },

    #[error("unsupported compute dtype {0:?}; use f32, bf16 or f16")]
    UnsupportedComputeDtype(String),

    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
