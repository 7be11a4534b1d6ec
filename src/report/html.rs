//! `--format html`: one self-contained page (inline CSS and SVG, no scripts, nothing fetched).
use std::fmt::Write;

use super::charts;
use super::markdown::{number, summary_cells, visible, SUMMARY_HEADER};
use super::plot::{self, LineChart};
use super::{position_buckets, Report, Run, RunReport};

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1600px;color:#222}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right;font-size:13px}th{background:#f3f3f3}td.text{text-align:left;font-family:monospace;\
white-space:pre-wrap}.plots{display:flex;flex-wrap:wrap;gap:12px}figure.plot{margin:0;\
border:1px solid #ddd;padding:4px}figcaption{font-size:12px;max-width:700px;color:#555}\
.problems li{color:#a00}mark{background:#fd6}";

fn figure(out: &mut String, kind: &str, id: &str, svg: Result<String, String>, caption: &str) {
    let _ = write!(
        out,
        "<figure class=\"plot\" data-kind=\"{kind}\" id=\"{}\">",
        escape(id)
    );
    match svg {
        Ok(svg) => out.push_str(&svg),
        Err(e) => {
            let _ = write!(out, "<p class=\"problems\">{}</p>", escape(&e));
        }
    }
    let _ = writeln!(out, "<figcaption>{}</figcaption></figure>", escape(caption));
}

fn line_figure(out: &mut String, chart: &LineChart, caption: &str) {
    figure(out, "line", &chart.id, plot::line_chart_svg(chart), caption);
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>], text_columns: &[usize]) {
    out.push_str("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            let class = if text_columns.contains(&i) {
                " class=\"text\""
            } else {
                ""
            };
            // Cells are escaped by the caller (the context cell carries a <mark>).
            let _ = write!(out, "<td{class}>{c}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn mismatch_section(out: &mut String, r: &RunReport) {
    let m = &r.mismatch;
    let _ = writeln!(out, "<h3>{}</h3>", escape(&r.run.label()));
    if m.tokens_with_lp == 0 {
        let _ = writeln!(
            out,
            "<p>No trained token with a logged <code>lp_old</code> in {} rollout files ({} \
             samples): the run needs <code>run.log_logprobs = true</code> and the \
             policy-gradient learner.</p>",
            m.files, m.samples
        );
        return;
    }
    let _ = writeln!(
        out,
        "<p>{} trained tokens with <code>lp_old</code> in {} rollout files ({} samples). The \
         largest |lp_old - mu|:</p>",
        m.tokens_with_lp, m.files, m.samples
    );
    let rows: Vec<Vec<String>> = m
        .top
        .iter()
        .map(|t| {
            vec![
                t.step.to_string(),
                escape(&t.example_id),
                escape(&t.finish_reason),
                t.position.to_string(),
                // Quoted with escapes, so a space or a newline token is visible.
                escape(&format!("{:?}", t.token)),
                format!(
                    "{}<mark>{}</mark>{}",
                    escape(&visible(&t.before)),
                    escape(&visible(&t.token)),
                    escape(&visible(&t.after))
                ),
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
            "example",
            "finish",
            "position",
            "token",
            "context",
            "lp_old",
            "mu",
            "lp_old - mu",
        ],
        &rows,
        &[1, 4, 5],
    );
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
        &[],
    );
}

pub fn render(report: &Report) -> String {
    let runs: Vec<&Run> = report.runs.iter().map(|r| &r.run).collect();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>alp-rl report</title>\
         <style>{STYLE}</style></head><body>\n<h1>alp-rl report</h1>\n"
    );
    out.push_str("<ul class=\"runs\">");
    for r in &runs {
        let _ = write!(
            out,
            "<li>{}: <code>{}</code></li>",
            escape(&r.label()),
            escape(&r.root.display().to_string())
        );
    }
    out.push_str("</ul>\n");
    if !report.problems.is_empty() {
        out.push_str("<h2>Problems</h2><ul class=\"problems\">");
        for p in &report.problems {
            let _ = write!(out, "<li>{}</li>", escape(&p.to_string()));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Summary</h2>\n");
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| {
            summary_cells(&r.summary)
                .iter()
                .map(|c| escape(c))
                .collect()
        })
        .collect();
    table(&mut out, &SUMMARY_HEADER, &rows, &[0, 1, 11]);
    out.push_str(
        "<p>Held-out accuracy is <code>eval/accuracy</code>; a KL spike is a step whose \
         <code>mismatch/k3</code> is above 10x the median of the finite values of the previous \
         steps (at least 3 of them); wall time is the sum of <code>time/step_s</code> and \
         <code>time/eval_s</code> (docs/analysis.md).</p>\n<h2>Per step</h2>\n<div class=\"plots\">\n",
    );
    let mut missing = Vec::new();
    for spec in charts::specs() {
        match charts::build(&spec, &runs) {
            Some(chart) => line_figure(&mut out, &chart, spec.caption),
            None => missing.push(spec.title),
        }
    }
    let mut heat_maps = 0;
    for run in &runs {
        if let Some(map) = charts::sigma_heat_map(run) {
            heat_maps += 1;
            figure(
                &mut out,
                "heatmap",
                &map.id,
                plot::heat_map_svg(&map),
                "ALP's learnt noise scale sigma per decoder layer (alp/sigma_l{i}) and step.",
            );
        }
    }
    if heat_maps == 0 {
        missing.push("ALP sigma per layer");
    }
    out.push_str("</div>\n");
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "<p>Not in these runs: {}.</p>",
            escape(&missing.join(", "))
        );
    }
    out.push_str("<h2>Where the mismatch lives</h2>\n<div class=\"plots\">\n");
    let pairs: Vec<_> = report.runs.iter().map(|r| (&r.run, &r.mismatch)).collect();
    if let Some(chart) = charts::position_chart(&pairs) {
        line_figure(
            &mut out,
            &chart,
            "Mean |lp_old - mu| of the trained tokens at each completion position, over every \
             logged rollout.",
        );
    }
    out.push_str("</div>\n");
    for r in &report.runs {
        mismatch_section(&mut out, r);
    }
    out.push_str("</body></html>\n");
    out
}
