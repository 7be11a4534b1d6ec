//! The run config of `alp-rl train`: one TOML file (plus `--set a.b=c` overrides), refused before any
//! work starts when a key is unknown, a value has the wrong type or is out of range. Every refusal names
//! where the value came from (`FILE:LINE:COL`, or the `--set` argument), the key, and what is allowed;
//! a misspelt key gets the closest valid one suggested. Every key is documented in `docs/config.md`.
//!
//! ```text
//! schema.rs    the sections as serde structs, their defaults and the views the runtime takes
//! lora.rs      `[model.lora]`: the adapter settings and their checks
//! load.rs      reading, `--set` overrides, key spans and error positions -> LoadedConfig
//! validate.rs  range and consistency checks, the environment built once
//! ```
mod load;
mod lora;
mod schema;
mod validate;

pub use load::{closest, key_location, load, parse_override, ConfigError, LoadedConfig};
pub use lora::{LoraSection, TargetModulesSetting};
pub use schema::{
    BackendKind, Device, EnvSection, EvalSection, ModelSection, Preset, RolloutSection, RunSection,
    SftSection, SplitName, TrainConfig,
};
pub use validate::{
    MAX_BATCH, MAX_EVAL_PROBLEMS, MAX_EVAL_SAMPLES, MAX_GROUP_SIZE, MAX_PROMPTS, MAX_STALENESS,
    MAX_STEP_SAMPLES, MAX_THREADS, MAX_TOKENS,
};
