//! `--format md`: the summary tables as Markdown, for a terminal or a CI log.
use std::fmt::Write;

use super::{position_buckets, Report, RunReport, Summary};

/// Rows of the top-gap table in Markdown (the HTML report shows all of them).
const TOP_ROWS: usize = 10;

/// A number with 4 significant digits (scientific notation outside 1e-3..1e5, whole numbers as
/// such); `-` for none.
pub fn number(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) if !v.is_finite() => v.to_string(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e5 => format!("{}", v as i64),
        Some(v) if v.abs() >= 1e5 || v.abs() < 1e-3 => format!("{v:.3e}"),
        Some(v) => {
            let decimals = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
            format!("{v:.decimals$}")
        }
    }
}

/// The summary table's header and one row per run, shared with the HTML rendering.
pub const SUMMARY_HEADER: [&str; 12] = [
    "run",
    "learner / correction",
    "steps",
    "final held-out acc",
    "best held-out acc",
    "max ratio/q99",
    "max ratio/q999",
    "max ratio_seq/max",
    "KL spikes",
    "max staleness",
    "wall time (s)",
    "status",
];

pub fn summary_cells(s: &Summary) -> Vec<String> {
    let kind = match (s.learner.as_deref(), s.correction.as_deref()) {
        (Some("eggroll"), _) => "eggroll".to_string(),
        (l, c) => format!("{} / {}", l.unwrap_or("?"), c.unwrap_or("?")),
    };
    // The backend is named where it is not the embedded engine (every config since vLLM came
    // writes `backend = "local"`; older ones have no key).
    let kind = match s.backend.as_deref() {
        Some(b) if b != "local" => format!("{kind} ({b})"),
        _ => kind,
    };
    let status = match (s.steps, s.planned_steps) {
        (None, _) => "no step yet".to_string(),
        (Some(l), Some(p)) if l < p => format!("at step {l} of {p} (in progress or stopped)"),
        (Some(_), _) => "finished".to_string(),
    };
    vec![
        s.run.clone(),
        kind,
        s.steps.map_or("-".into(), |n| n.to_string()),
        number(s.final_heldout_accuracy),
        number(s.best_heldout_accuracy),
        number(s.max_ratio_q99),
        number(s.max_ratio_q999),
        number(s.max_ratio_seq_max),
        s.kl_spikes.map_or("-".into(), |n| n.to_string()),
        number(s.max_staleness),
        number(s.wall_time_s),
        status,
    ]
}

/// Context text on one line: newlines and tabs shown as symbols.
pub fn visible(text: &str) -> String {
    text.replace('\n', "⏎").replace('\t', "⇥")
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let cell = |c: &str| c.replace('|', "\\|").replace('\n', "\\n");
    let header: Vec<String> = header.iter().map(|h| cell(h)).collect();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

fn mismatch_section(out: &mut String, r: &RunReport) {
    let m = &r.mismatch;
    let _ = writeln!(out, "\n### Where the mismatch lives: {}\n", r.run.label());
    if m.tokens_with_lp == 0 {
        let _ = writeln!(
            out,
            "No trained token with a logged `lp_old` in {} rollout files ({} samples): the run \
             needs `run.log_logprobs = true` and the policy-gradient learner.",
            m.files, m.samples
        );
        return;
    }
    let _ = writeln!(
        out,
        "{} trained tokens with `lp_old` in {} rollout files. Largest |lp_old - mu|:\n",
        m.tokens_with_lp, m.files
    );
    let rows: Vec<Vec<String>> = m
        .top
        .iter()
        .take(TOP_ROWS)
        .map(|t| {
            vec![
                t.step.to_string(),
                t.position.to_string(),
                format!("{:?}", t.token),
                visible(&format!("{}[{}]{}", t.before, t.token, t.after)),
                number(Some(t.lp_old as f64)),
                number(Some(t.mu as f64)),
                number(Some(t.gap)),
            ]
        })
        .collect();
    table(
        out,
        &[
            "step",
            "position",
            "token",
            "context",
            "lp_old",
            "mu",
            "lp_old - mu",
        ],
        &rows,
    );
    let _ = writeln!(out, "\nBy position in the completion:\n");
    let rows: Vec<Vec<String>> = position_buckets(&m.by_position)
        .into_iter()
        .map(|(p, n, gap, abs)| vec![p, n.to_string(), number(Some(gap)), number(Some(abs))])
        .collect();
    table(
        out,
        &[
            "positions",
            "tokens",
            "mean lp_old - mu",
            "mean |lp_old - mu|",
        ],
        &rows,
    );
}

pub fn render(report: &Report) -> String {
    let mut out = String::from("## alp-rl report\n\n");
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| summary_cells(&r.summary))
        .collect();
    table(&mut out, &SUMMARY_HEADER, &rows);
    for r in &report.runs {
        mismatch_section(&mut out, r);
    }
    if !report.problems.is_empty() {
        let _ = writeln!(out, "\n### Problems\n");
        for p in &report.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}
