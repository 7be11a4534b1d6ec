//! An environment that lives outside alp-rl: the model converts a quantity between units by calling
//! a `convert` tool, reads the tool's reply, and answers `\boxed{N}`. The walkthrough is
//! docs/environments.md.
//!
//! - [`units`]: the unit table and the conversion itself (exact integer arithmetic);
//! - [`tool`]: the `convert` tool: its JSON spec for the chat template, and running one call;
//! - [`env`]: the environment (`EnvDef` + `Environment`), its settings and the episode logic.
pub mod env;
pub mod tool;
pub mod units;

pub use env::{UnitConvert, UnitConvertSettings};
