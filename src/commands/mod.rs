//! One module per `alp-rl` subcommand.
pub mod adapter;
pub mod env;
pub mod eval;
pub mod export;
pub mod generate;
pub mod new_model;
pub mod report;
pub mod sft;
pub mod train;

use anyhow::{bail, ensure, Result};

/// Refuses sampling flags the way the config refuses the same `rollout.*` keys, naming the flag.
pub fn check_sampling_flags(params: &alp_rollout::SamplingParams) -> Result<()> {
    if let Err(alp_rollout::RolloutError::InvalidSetting { field, problem }) = params.validate() {
        bail!("--{}: {problem}", field.replace('_', "-"));
    }
    check_count(
        "--max-new-tokens",
        params.max_new_tokens,
        crate::config::MAX_TOKENS,
    )
}

/// A count flag must be 1 to `most` (the bound of the config key it mirrors).
pub fn check_count(flag: &str, value: usize, most: usize) -> Result<()> {
    ensure!(
        (1..=most).contains(&value),
        "{flag}: must be 1 to {most}, got {value}"
    );
    Ok(())
}
