//! `alp-rl train CONFIG.toml [--set a.b=c ...] [--out DIR] [--resume]`: RL post-training from a run
//! config (`docs/config.md`) into a run directory (`docs/run-directory.md`).
use std::path::PathBuf;

use alp_envs::Registry;
use anyhow::Result;
use clap::Args;

use crate::config;
use crate::train::{self, TrainRequest};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The run config (TOML).
    pub config: PathBuf,
    /// Override a config value: `--set rollout.group_size=8` (repeatable; values are TOML, or text).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: `run.out`, else `runs/<config stem>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in the run directory from its latest complete checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Only parse and validate the config (and print the resolved config on stdout); start nothing.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: TrainArgs, registry: &Registry) -> Result<()> {
    // Every config problem is reported before any model is loaded or file written.
    let loaded = config::load(&args.config, &args.overrides, registry)?;
    if args.check {
        print!("{}", loaded.config.to_toml());
        tracing::info!(config = %args.config.display(), "config is valid");
        return Ok(());
    }
    loaded.config.apply_threads();
    let run_dir = loaded.config.run_dir(&args.config, args.out.as_deref());
    let summary = train::run(TrainRequest {
        config: loaded.config,
        env: loaded.env,
        config_path: loaded.path,
        run_dir,
        resume: args.resume,
    })?;
    tracing::info!(
        run = %summary.run_dir.display(),
        steps = format!("{}..={}", summary.first_step, summary.last_step),
        "training finished"
    );
    if let (Some((s0, a0)), Some((s1, a1))) = (summary.first_eval, summary.last_eval) {
        tracing::info!(
            "held-out accuracy: {a0:.3} at step {s0} -> {a1:.3} at step {s1} ({:+.1} points)",
            100.0 * (a1 - a0)
        );
    }
    Ok(())
}
