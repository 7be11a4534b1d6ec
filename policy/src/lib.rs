//! The policy model shared by rollout and learner: HF-compatible decoder-only transformers on libtorch
//! (Qwen2/2.5, Qwen3, Llama 3, SmolLM2), checkpoint IO in the HF layout, and the forward hooks.
pub mod hooks;

pub use hooks::{ForwardHooks, LinearKind, LinearSite, NoHooks};
