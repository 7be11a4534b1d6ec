//! `alp-rl report`: plots and summary tables of run directories (docs/analysis.md).
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::report::{figures, html, json, markdown, Report};
use crate::run_dir::write_bytes_atomic;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One self-contained HTML page with the plots and tables.
    Html,
    /// The summary tables as Markdown.
    Md,
    /// The summary and mismatch tables as JSON.
    Json,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories (the `--out` of `alp-rl train`), finished or in progress.
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Output file; default `report.html` for html, stdout for md and json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Html)]
    pub format: Format,
    /// Also write every chart as a standalone SVG file into this folder (`<chart>.svg`).
    #[arg(long)]
    pub figures: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let report = Report::build(&args.runs);
    for p in &report.problems {
        tracing::warn!("{p}");
    }
    if report.runs.is_empty() {
        bail!(
            "none of {} is a run directory: nothing to report",
            args.runs
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(dir) = &args.figures {
        let written = figures::write(&report, dir).map_err(anyhow::Error::msg)?;
        tracing::info!("wrote {} figures to {}", written.len(), dir.display());
    }
    let text = match args.format {
        Format::Html => html::render(&report),
        Format::Md => markdown::render(&report),
        Format::Json => json::render(&report),
    };
    let out = match (args.out, args.format) {
        (Some(out), _) => Some(out),
        (None, Format::Html) => Some(PathBuf::from("report.html")),
        (None, _) => None,
    };
    match out {
        Some(path) => {
            write_bytes_atomic(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(
                "wrote {} ({} runs, {} problems)",
                path.display(),
                report.runs.len(),
                report.problems.len()
            );
        }
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write to stdout")?,
    }
    Ok(())
}
