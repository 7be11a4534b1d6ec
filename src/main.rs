//! `alp-rl`: the command-line application. Each subcommand lives in its own module under
//! `src/commands/`; this file only parses arguments and sets up logging.
use clap::{Parser, Subcommand};

mod commands;
mod config;
mod parquet_log;
mod run_dir;
mod sft;
mod train;

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
    /// Supervised fine-tuning on an environment's worked answers or a JSONL file (docs/config.md).
    Sft(commands::sft::SftArgs),
    /// RL post-training from a TOML run config (docs/config.md) into a run directory.
    Train(commands::train::TrainArgs),
}

/// Whether log lines get ANSI colours: only when stderr is a terminal, and never when `NO_COLOR` is
/// set to a non-empty value (https://no-color.org). Piped or redirected stderr (log files, CI, the
/// tests) gets plain text.
fn log_colours(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // Logs and progress go to stderr (RUST_LOG controls the level); results go to stdout or --out.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Env(args) => commands::env::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::NewModel(args) => commands::new_model::run(args),
        Command::Sft(args) => commands::sft::run(args),
        Command::Train(args) => commands::train::run(args),
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
