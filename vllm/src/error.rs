//! Errors of the vLLM backend. Each names the server (base URL) it concerns and what to do.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VllmError {
    #[error("[rollout.vllm] `{field}` {problem}")]
    Setting {
        field: &'static str,
        problem: String,
    },

    /// The server could not be reached or did not answer in time: a transient fault, retried.
    #[error("vLLM server {server}: {call}: {message}")]
    Unreachable {
        server: String,
        call: &'static str,
        message: String,
        /// Nothing accepted the connection (no process listens): the server is down, not slow.
        refused: bool,
    },

    /// The server answered with an error status.
    #[error("vLLM server {server}: {call} answered HTTP {status}: {body}")]
    Status {
        server: String,
        call: &'static str,
        status: u16,
        body: String,
    },

    /// The server answered something this client cannot use.
    #[error("vLLM server {server}: {call}: unexpected answer: {problem}")]
    Protocol {
        server: String,
        call: &'static str,
        problem: String,
    },

    /// The server's configuration cannot give what the rollout needs.
    #[error("vLLM server {server}: {problem}")]
    Incompatible { server: String, problem: String },

    /// A sync was not verified: the server holds other weights than the learner's.
    #[error(
        "vLLM server {server}: weight sync to version {version} failed verification: {problem}. \
         No sample is generated or trained on with these weights"
    )]
    SyncMismatch {
        server: String,
        version: u64,
        problem: String,
    },

    /// No server answered for `unavailable_timeout_s`.
    #[error(
        "no vLLM server answered for {waited_s:.0} s ({during}); every server is out: {servers}. \
         Restart them (or raise [rollout.vllm] unavailable_timeout_s) and resume the run"
    )]
    NoServer {
        during: &'static str,
        waited_s: f64,
        servers: String,
    },

    /// No server answered, and some that this backend launched have exited (they will not come
    /// back by themselves): their exit and the end of their log.
    #[error("{error}\n{exits}")]
    LaunchedExited {
        error: Box<VllmError>,
        exits: String,
    },

    /// A launched server process exited or never became ready.
    #[error("vLLM server launch {server}: {problem}")]
    Launch { server: String, problem: String },

    #[error("cannot write the weights for sync to {path}: {message}")]
    WriteWeights { path: String, message: String },

    /// `generate` was called before any sync verified the servers' weights.
    #[error(
        "no weights synced yet: call sync_weights with the learner's model before generating, so \
         every sample's version is verified"
    )]
    NotSynced,

    /// A request the server refused (4xx): the request itself is wrong, retrying cannot help.
    #[error("vLLM server {server} refused request {index}: {message}")]
    Rejected {
        server: String,
        index: usize,
        message: String,
    },

    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
}

impl VllmError {
    /// Whether the fault is the server's availability (retry elsewhere, take it out), not the
    /// request's or the weights'.
    pub fn is_transient(&self) -> bool {
        match self {
            VllmError::Unreachable { .. } => true,
            VllmError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether the server refused the connection: nothing listens there, so retrying it after a
    /// backoff only delays taking it out.
    pub fn is_refused(&self) -> bool {
        matches!(self, VllmError::Unreachable { refused: true, .. })
    }
}

impl From<VllmError> for alp_rollout::RolloutError {
    fn from(e: VllmError) -> Self {
        alp_rollout::RolloutError::Remote(Box::new(e))
    }
}
