//! The learner on several processes through PyTorch's own collective engine, c10d: a TCPStore
//! rendezvous (torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), a Gloo
//! process group on CPUs and an NCCL one on GPUs, reached through a small C++ binding compiled
//! against the headers of the libtorch that `tch` links (`csrc/binding.cpp`), so the collectives are
//! the very ones `torch.distributed` runs.
//!
//! [`DistSync`] plugs a [`ProcessGroup`] into the learner's gradient-sync seam
//! ([`alp_learner::GradientSync`]): each rank trains on its shard of the batch and the update equals
//! one process's update on the whole batch. [`ProcessGroup::gather_indexed`] is EGGROLL's exchange
//! (fitness only), [`ProcessGroup::agree`] refuses ranks that differ, and [`LocalLaunch`] starts N
//! ranks on this machine and ends them together. See docs/scale-out.md.
#![warn(missing_docs)]

mod agree;
mod error;
mod ffi;
mod gather;
mod group;
mod launch;
mod rendezvous;
mod sync;

pub use error::{DistError, Result};
pub use group::{Backend, ProcessGroup, DEFAULT_BUCKET_BYTES};
pub use launch::{describe, LocalLaunch, RankExit, LAUNCHED_VAR};
pub use rendezvous::{Rendezvous, DEFAULT_TIMEOUT};
pub use sync::DistSync;
