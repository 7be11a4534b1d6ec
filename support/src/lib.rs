//! Test support for the alp-rl workspace (not published): what the tests and benchmarks of several
//! crates need alike, so that each is written once. A `[dev-dependencies]` entry only; the features
//! name the groups of helpers a crate's tests use (see `Cargo.toml`).
//!
//! - [`oracle`]: the venv's Python, the independent reference, and running scripts with it (the
//!   `alp-oracle` crate, which the tokenizer's tests use without this crate's libtorch features).
//! - [`hf_models`]: `scripts/oracles/hf_models.py`, transformers' tiny checkpoints and their outputs.
//! - [`peft`]: `scripts/oracles/peft_lora.py`, Python peft as the LoRA oracle.
//! - [`bench`]: benchmark settings from the environment.
//! - [`vllm`]: the vLLM Python and CPU server settings of the tests that start real servers.
//! - `tiny_model` (feature `model`): tiny random decoders of the shapes the tests use;
//!   `safetensors_edit` (same feature): damaging their files for the bad-input tests.
//! - `backend` (feature `backend`): a `GenerationBackend` that replies with scripted text.
//! - `cli` and `run_outputs` (feature `cli`): running `alp-rl` and reading what its runs write.

pub mod bench;
pub mod hf_models;
pub mod peft;
pub mod vllm;
/// Re-exported from `alp-oracle`, which crates without libtorch depend on directly.
pub use alp_oracle as oracle;

#[cfg(feature = "backend")]
pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod run_outputs;
#[cfg(feature = "model")]
pub mod safetensors_edit;
#[cfg(feature = "model")]
pub mod tiny_model;
