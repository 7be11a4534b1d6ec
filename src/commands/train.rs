//! `alp-rl train CONFIG.toml [--set a.b=c ...] [--out DIR] [--resume] [--nproc N]`: RL post-training
//! from a run config (`docs/config.md`) into a run directory (`docs/run-directory.md`), in one process
//! or in N ranks (docs/scale-out.md).
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use alp_envs::Registry;
use anyhow::{Context, Result};
use clap::Args;

use crate::config;
use crate::train::ranks::{Ranks, WORLD_SIZE_VAR};
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
    /// Train with N processes on this machine (data parallelism over c10d: Gloo on CPUs, NCCL on
    /// GPUs); each rank generates and trains on its share of every batch. Under torchrun, leave it
    /// out: its variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) say the rank.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nproc: usize,
    /// Seconds a rank waits for the others, at the rendezvous and in every collective, before the
    /// run ends on every rank naming the one that died or hangs.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub dist_timeout: u64,
}

pub fn run(args: TrainArgs, registry: &Registry) -> Result<()> {
    // Every config problem is reported before any model is loaded or file written.
    let loaded = config::load(&args.config, &args.overrides, registry)?;
    if args.check {
        print!("{}", loaded.config.to_toml());
        tracing::info!(config = %args.config.display(), "config is valid");
        return Ok(());
    }
    if args.nproc > 1 && std::env::var_os(WORLD_SIZE_VAR).is_none() {
        return launch_ranks(&args);
    }
    let config = loaded.config;
    if std::env::var_os(WORLD_SIZE_VAR).is_some() {
        one_gpu_per_local_rank(&config);
    }
    let ranks = Ranks::from_env(
        config.model.device.to_tch(),
        Duration::from_secs(args.dist_timeout),
    )?;
    config.apply_threads();
    if ranks.is_distributed() && config.model.threads == 0 {
        // The ranks on this machine share its cores instead of each taking all of them. (Not
        // written into the config: the run's config.toml stays the one a single process resumes.)
        tch::set_num_threads(threads_per_local_rank() as i32);
    }
    let run_dir = config.run_dir(&args.config, args.out.as_deref());
    let summary = train::run(TrainRequest {
        config,
        env: loaded.env,
        config_path: loaded.path,
        run_dir,
        resume: args.resume,
        ranks: ranks.clone(),
    })?;
    if !ranks.is_leader() {
        return Ok(());
    }
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

/// `--nproc N`: this program N times with the same arguments as ranks of one run (torchrun's
/// variables, loopback rendezvous); returns when all ended, or fails naming the rank that failed.
fn launch_ranks(args: &TrainArgs) -> Result<()> {
    let program = std::env::current_exe().context("finding this program to start its ranks")?;
    let mut rank_args: Vec<OsString> = vec!["train".into(), args.config.clone().into()];
    for o in &args.overrides {
        rank_args.extend(["--set".into(), o.into()]);
    }
    if let Some(out) = &args.out {
        rank_args.extend(["--out".into(), out.clone().into()]);
    }
    if args.resume {
        rank_args.push("--resume".into());
    }
    rank_args.extend([
        "--dist-timeout".into(),
        args.dist_timeout.to_string().into(),
    ]);
    tracing::info!(nproc = args.nproc, "starting the ranks");
    let mut launch = alp_dist::LocalLaunch::new(args.nproc, program, rank_args);
    launch.grace = Duration::from_secs(args.dist_timeout + 30);
    launch
        .run()
        .with_context(|| format!("alp-rl train --nproc {}", args.nproc))?;
    Ok(())
}

/// This machine's cores divided among the ranks on it (torchrun's `LOCAL_WORLD_SIZE`, else
/// `WORLD_SIZE`), at least one each.
fn threads_per_local_rank() -> usize {
    let local = ["LOCAL_WORLD_SIZE", WORLD_SIZE_VAR]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local).max(1)
}

/// A rank of a run on GPUs takes the GPU of its `LOCAL_RANK` (as `torch.cuda.set_device(local_rank)`
/// does in PyTorch), by making it the only one it sees, unless `CUDA_VISIBLE_DEVICES` already says
/// which. Must run before anything touches CUDA.
fn one_gpu_per_local_rank(config: &crate::config::TrainConfig) {
    use crate::config::Device;
    if config.model.device == Device::Cpu || std::env::var_os("CUDA_VISIBLE_DEVICES").is_some() {
        return;
    }
    if let Ok(local_rank) = std::env::var("LOCAL_RANK") {
        std::env::set_var("CUDA_VISIBLE_DEVICES", &local_rank);
        tracing::debug!(local_rank, "CUDA_VISIBLE_DEVICES set to this rank's GPU");
    }
}
