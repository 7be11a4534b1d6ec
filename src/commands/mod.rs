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

use anyhow::{bail, ensure, Context, Result};

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

/// Refuses an `--out` that exists and is not an empty directory: `command` (`new-model`, `export`) never
/// overwrites a checkpoint, or anything else, that is already there.
pub fn refuse_existing_out(out: &std::path::Path, command: &str) -> Result<()> {
    if out.exists() {
        let empty_dir = out.is_dir()
            && std::fs::read_dir(out)
                .with_context(|| format!("cannot read {}", out.display()))?
                .next()
                .is_none();
        ensure!(
            empty_dir,
            "--out {}: already exists and is not an empty directory; {command} never overwrites, \
             pass a new path",
            out.display()
        );
    }
    Ok(())
}
