//! The errors of the distributed binding.
use thiserror::Error;

/// What can go wrong when ranks meet or exchange data.
#[derive(Debug, Error)]
pub enum DistError {
    /// A variable of torchrun's conventions (`RANK`, `WORLD_SIZE`, ...) is not set.
    #[error("environment variable {var} is not set (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")]
    MissingEnv {
        /// The variable's name.
        var: &'static str,
    },
    /// A variable is set but does not parse, or disagrees with another one.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A rendezvous description that cannot work (rank outside the world, zero timeout, ...).
    #[error("invalid rendezvous: {0}")]
    Rendezvous(String),
    /// The TCPStore or the process group could not be set up (peer not reachable within the timeout,
    /// port taken, backend not compiled in).
    #[error("rank {rank} of {world_size} could not join the process group at {addr}: {message}")]
    Init {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// c10d's message.
        message: String,
    },
    /// A collective failed: a peer died or closed its connection, or did not call it within the
    /// timeout.
    #[error("{op} failed on rank {rank} of {world_size} (a peer died, hung past the timeout, or disagreed): {message}")]
    Collective {
        /// The collective (`all_reduce_sum`, `broadcast`, ...).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// c10d's message.
        message: String,
    },
    /// Arguments a collective refuses before any communication.
    #[error("{op}: {message}")]
    Argument {
        /// The collective.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A [`crate::LocalLaunch`] could not start its ranks.
    #[error("launch: {0}")]
    Launch(String),
    /// A rank of a [`crate::LocalLaunch`] failed; the others were ended.
    #[error("rank {rank} of {world_size} {how}; {others}")]
    RankFailed {
        /// The first rank that failed.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// How it ended ("exited with status 1", "killed by signal 9 (SIGKILL)").
        how: String,
        /// How each other rank ended.
        others: String,
    },
    /// Ranks that do not agree on something they must share (config, binary version, model, world
    /// size): see [`crate::ProcessGroup::agree`].
    #[error("ranks disagree: {0}")]
    Disagreement(String),
    /// A tensor operation around a collective failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// `Result` with [`DistError`].
pub type Result<T, E = DistError> = std::result::Result<T, E>;
