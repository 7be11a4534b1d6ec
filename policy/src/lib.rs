//! The policy model shared by rollout and learner: HF-compatible decoder-only transformers on libtorch
//! (Qwen2/2.5, Qwen3, Llama 3, SmolLM2), checkpoint IO in the HF layout, and the forward hooks.
//!
//! ```text
//! config.rs      config.json in every spelling        -> ModelConfig
//! family.rs      one row per architecture family (names, biases, q/k norm, keys) -> Family
//! unsupported.rs config.json keys this decoder refuses, by name
//! dtype.rs       compute dtypes by name (f32, bf16, f16) -> Dtype
//! precision.rs   a dtype request -> storage + rounding  -> Precision, Bf16Compute (bf16-rounded f32)
//! checkpoint.rs  safetensors load/save, shards, init  -> CausalLM::{load, save, save_with, random}
//! model.rs       the decoder's parameters and forward -> CausalLM::{forward, hidden_states, forward_cached}, layer by layer (embed, layer, final_norm)
//! blocks.rs      one struct per block (RMSNorm, attention, MLP, decoder layer), as HF computes them
//! rope.rs        rotary embeddings (default, linear, llama3)
//! kv_cache.rs    preallocated KV cache for generation
//! linear.rs      x W^T + b: the CPU GEMM dispatch of every projection (weight-first, few rows, oneDNN)
//! few_rows_gemm.rs x W^T for the few rows of a decode step (f32, AVX-512/AVX2), streaming the weight
//! lora/          LoRA adapters (A, B per projection) as hooks, merged, in PEFT's format -> LoraAdapter
//! names.rs       where each parameter sits and its HF / PEFT name -> ParamPath, LinearSite
//! hooks.rs       ForwardHooks: additive embedding / linear deltas and layer_input / logits seams for
//!                ALP, EGGROLL and adapters, composed by Stack; RowHooks: hooks per batch row
//! noise.rs       counter-based Gaussian noise keyed by (seed, step, forward, slot): ALP and EGGROLL
//! ```
mod blocks;
pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod error;
pub mod family;
pub mod few_rows_gemm;
pub mod hooks;
pub mod kv_cache;
pub mod linear;
pub mod lora;
pub mod model;
pub mod names;
pub mod noise;
pub mod onednn_head;
pub mod openmp;
pub mod params;
pub mod precision;
pub mod rope;
mod unsupported;

pub use checkpoint::{hf_dtype_name, SaveOptions, DEFAULT_MAX_SHARD_SIZE};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use dtype::{parse_kind, Dtype};
pub use error::PolicyError;
pub use hooks::{
    ForwardHooks, LinearKind, LinearSite, MemberHooks, NoHooks, RowHooks, Stack, Weight,
};
pub use kv_cache::KvCache;
pub use lora::{LoraAdapter, LoraConfig, LoraError, TargetModules};
pub use model::{attention_bias, positions_from_mask, CausalLM, LayerContext, LoadOptions};
pub use onednn_head::{OnednnLmHead, ONEDNN_HEAD_MIN_BYTES};
pub use precision::{cpu_has_bf16_arithmetic, Bf16Compute, Precision};
