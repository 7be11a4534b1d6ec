//! Environments for RL post-training, as Rust traits: pure Rust (no tch), so they build and test in seconds.

pub mod answer;
pub mod calculator;
pub mod error;
pub mod message;
pub mod rational;
pub mod rng;
pub mod tool_call;

pub use error::EnvError;
pub use message::{Message, Role, ToolCall, ToolSpec};
