//! Environments for RL post-training, as Rust traits: pure Rust (no tch), so they build and test in seconds.
//! The guide, with a complete example environment, is `docs/environments.md`, compiled and run below as a doc
//! test.
//!
//! The rollout uses [`Environment`] and [`Episode`]; the CLI uses [`cli`]; the answer checkers, the calculator
//! and the tool-call parser are usable on their own.

pub mod answer;
pub mod calculator;
pub mod cli;
pub mod dataset;
pub mod env;
pub mod envs;
pub mod error;
pub mod message;
pub mod rational;
pub mod registry;
pub mod rng;
pub mod settings;
pub mod tool_call;

pub use env::{
    Environment, Episode, EpisodeLogic, Example, Info, Observation, ScoreResult, Split, Turn,
};
pub use error::EnvError;
pub use message::{Message, Role, ToolCall, ToolSpec};
pub use registry::{EnvDef, EnvSpec, Registry};
pub use settings::{parse_overrides, parse_settings, SettingDoc, Settings};

#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}

#[doc = include_str!("../../docs/environments.md")]
#[cfg(doctest)]
pub struct EnvironmentsGuide;
