//! `alp-rl env`: inspect environments and score completions, for people who write reward code.
use std::io::{BufRead, Write};
use std::path::PathBuf;

use alp_envs::{cli, Registry};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::config::SplitName;

#[derive(Args, Debug)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub command: EnvCommand,
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Print the registered environments and their settings.
    List,
    /// Print episodes' initial messages as JSON lines.
    Sample {
        name: String,
        /// A setting override, `key=value` (JSON values, or plain text); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, default_value_t = 5)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// `train` or `heldout` (the environment's test split).
        #[arg(long, default_value_t = SplitName::Train)]
        split: SplitName,
    },
    /// Score `{"example": ..., "completion": "..."}` lines; prints `{"reward", "correct", "extracted"}` per line.
    Score {
        name: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

pub fn run(args: EnvArgs, registry: &Registry) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match args.command {
        EnvCommand::List => write!(out, "{}", cli::list_text(registry))?,
        EnvCommand::Sample {
            name,
            set,
            n,
            seed,
            split,
        } => {
            super::check_count("--n", n, crate::config::MAX_EVAL_PROBLEMS)?;
            let settings = cli::parse_overrides(&set)?;
            for episode in cli::sample_split(registry, &name, &settings, n, seed, split.split())? {
                writeln!(out, "{episode}")?;
            }
        }
        EnvCommand::Score { name, input, set } => {
            let env = cli::build(registry, &name, &cli::parse_overrides(&set)?)?;
            let file = std::fs::File::open(&input)
                .with_context(|| format!("cannot open {}", input.display()))?;
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", input.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let result = cli::score_line(env.as_ref(), &line)
                    .with_context(|| format!("{} line {}", input.display(), i + 1))?;
                writeln!(out, "{}", serde_json::to_string(&result)?)?;
            }
        }
    }
    Ok(())
}
