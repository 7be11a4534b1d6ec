//! `--format json`: the summary, the mismatch tables and the problems, for scripts.
use serde_json::{json, Value};

use super::Report;

pub fn render(report: &Report) -> String {
    let runs: Vec<Value> = report
        .runs
        .iter()
        .map(|r| {
            json!({
                "name": r.run.name,
                "path": r.run.root.display().to_string(),
                "summary": r.summary,
                "mismatch": r.mismatch,
            })
        })
        .collect();
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    let doc = json!({ "runs": runs, "problems": problems });
    serde_json::to_string_pretty(&doc).expect("the report serialises") + "\n"
}
