//! `alp-rl sft CONFIG.toml [--set a.b=c ...] [--out DIR]`: supervised fine-tuning alone, from the same run
//! config as `alp-rl train` (its `[model]`, `[env]`, `[sft]` and `[run]` sections), into a run directory
//! with the same layout (`metrics.parquet`, `checkpoints/step-N/model`).
use std::path::PathBuf;

use alp_envs::Registry;
use anyhow::{bail, Result};
use clap::Args;

use crate::config::{self, SftSection};
use crate::run_dir::RunDir;
use crate::train;

#[derive(Args, Debug)]
pub struct SftArgs {
    /// The run config (TOML); `[sft]` may be absent (its defaults apply).
    pub config: PathBuf,
    /// Override a config value: `--set sft.steps=50` (repeatable; values are TOML, or text).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: `run.out`, else `runs/<config stem>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: SftArgs, registry: &Registry) -> Result<()> {
    let loaded = config::load(&args.config, &args.overrides, registry)?;
    let mut config = loaded.config;
    config.apply_threads();
    // An absent `[sft]` takes its defaults, with `run.seed` as its seed like a present one.
    let run_seed = config.run.seed;
    let sft = config
        .sft
        .get_or_insert_with(|| SftSection {
            seed: run_seed,
            ..SftSection::default()
        })
        .clone();
    // The model and the data are read before anything is written, so a bad file leaves no run
    // directory that would refuse the corrected rerun; the lock is held for the whole phase.
    train::preflight::check_device(&config, &loaded.path)?;
    train::preflight::check_sft(&config, &sft)?;
    let run = RunDir::new(config.run_dir(&args.config, args.out.as_deref()));
    let _lock = train::preflight::lock_run_dir(&run.root, true)?;
    if run.metrics().exists() || run.checkpoints_dir().exists() {
        bail!(
            "run directory {} already holds a run: pass --out DIR",
            run.root.display()
        );
    }
    let config_toml = config.to_toml();
    train::write_run_files(&config, &loaded.path, &run, &config_toml)?;
    let model_src = train::initial_model(&config, &run)?;
    let summary = crate::sft::run(
        &config,
        &sft,
        loaded.env.clone(),
        &run,
        &model_src,
        &config_toml,
    )?;
    tracing::info!(
        model = %summary.model.display(),
        first_loss = summary.first_loss,
        last_loss = summary.last_loss,
        "sft finished"
    );
    Ok(())
}
