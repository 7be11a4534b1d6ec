//! The `alp-rl` application as a library: the whole command line (`train`, `sft`, `eval`, `env`,
//! `generate`, `new-model`, `report`) run against an environment [`Registry`] the caller chooses.
//!
//! The `alp-rl` binary is [`run_cli`] with [`Registry::builtin`]. A crate with environments of its own
//! depends on this one, registers them and runs the same CLI (see `examples/unit-convert` and
//! docs/environments.md):
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let registry = alp_rl::Registry::builtin();
//!     // registry.register(alp_rl::EnvSpec::of::<MyEnv>()) returns a Result to handle.
//!     alp_rl::exit_with(alp_rl::run_cli(registry))
//! }
//! ```
//!
//! [`exit_with`] prints an error's message and causes, without a stack trace (`src/exit.rs`).
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub mod checkpoint_writer;
pub mod commands;
pub mod config;
pub mod exit;
pub mod models;
pub mod parquet_log;
pub mod progress;
pub mod report;
pub mod run_dir;
pub mod schedule;
pub mod sft;
pub mod train;

pub use alp_envs::{EnvDef, EnvSpec, Environment, Registry};
pub use exit::exit_with;

#[derive(Parser)]
#[command(
    name = "alp-rl",
    version,
    about = "RL post-training for language models on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Complete prompts with the local libtorch engine (KV cache, per-token log-probs).
    Generate(commands::generate::GenerateArgs),
    /// Inspect environments: list them, sample episodes, score completions.
    Env(commands::env::EnvArgs),
    /// Accuracy and unbiased pass@k of a model on an environment (JSON).
    Eval(commands::eval::EvalArgs),
    /// Write a small random HF checkpoint with a character tokenizer (demos, smoke tests).
    NewModel(commands::new_model::NewModelArgs),
    /// Merge a LoRA adapter (PEFT's format) into its base model and write an HF checkpoint.
    Export(commands::export::ExportArgs),
    /// Supervised fine-tuning on an environment's worked answers or a JSONL file (docs/config.md).
    Sft(commands::sft::SftArgs),
    /// RL post-training from a TOML run config (docs/config.md) into a run directory.
    Train(commands::train::TrainArgs),
    /// Plots and summary tables of run directories: HTML, Markdown or JSON (docs/analysis.md).
    Report(commands::report::ReportArgs),
}

/// Whether log lines get ANSI colours: only when stderr is a terminal, and never when `NO_COLOR` is
/// set to a non-empty value (https://no-color.org). Piped or redirected stderr (log files, CI, the
/// tests) gets plain text.
fn log_colours(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Logs and progress go to stderr (`RUST_LOG` controls the level); results go to stdout or `--out`.
fn init_logging() {
    use std::io::IsTerminal;
    // A second call (a program that already set a subscriber) keeps the first one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(progress::log_writer)
        .with_ansi(log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .try_init();
}

/// Runs the command line given to this process with the environments of `registry`. Help and
/// usage are named after the running binary, so `my-trainer train my.toml` reads as such.
pub fn run_cli(registry: Registry) -> anyhow::Result<()> {
    let mut args = std::env::args_os();
    let bin = args
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "alp-rl".to_string());
    run_args(bin, args, registry)
}

/// Runs one command line (`args` without the program name) with the environments of `registry`.
pub fn run_args(
    bin: impl Into<String>,
    args: impl IntoIterator<Item = std::ffi::OsString>,
    registry: Registry,
) -> anyhow::Result<()> {
    init_logging();
    let matches = Cli::command()
        .bin_name(bin.into())
        .get_matches_from(std::iter::once("alp-rl".into()).chain(args));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Env(args) => commands::env::run(args, &registry),
        Command::Eval(args) => commands::eval::run(args, &registry),
        Command::NewModel(args) => commands::new_model::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Sft(args) => commands::sft::run(args, &registry),
        Command::Train(args) => commands::train::run(args, &registry),
        Command::Report(args) => commands::report::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::log_colours;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        // no-color.org: NO_COLOR present and non-empty disables colour, whatever its value.
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some("".into())));
        assert!(!log_colours(true, Some("1".into())));
        assert!(!log_colours(true, Some("0".into())));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some("".into())));
    }
}
