//! `--figures DIR`: the report's charts as standalone SVG files (for documents that embed them, such
//! as docs/results.md): `DIR/<id>.svg` for every plot of the HTML page (the same ids: each chart
//! over steps that the runs have, one sigma heat map per ALP run, the mismatch by position).
use std::path::{Path, PathBuf};

use super::charts;
use super::plot;
use super::{Report, Run};
use crate::run_dir::write_bytes_atomic;

/// Writes every figure the runs have into `dir` (created if needed) and returns the files written.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let runs: Vec<&Run> = report.runs.iter().map(|r| &r.run).collect();
    let mut figures: Vec<(String, Result<String, String>)> = Vec::new();
    for spec in charts::specs() {
        if let Some(chart) = charts::build(&spec, &runs) {
            figures.push((chart.id.clone(), plot::line_chart_svg(&chart)));
        }
    }
    for run in &runs {
        if let Some(map) = charts::sigma_heat_map(run) {
            figures.push((map.id.clone(), plot::heat_map_svg(&map)));
        }
    }
    let pairs: Vec<_> = report.runs.iter().map(|r| (&r.run, &r.mismatch)).collect();
    if let Some(chart) = charts::position_chart(&pairs) {
        figures.push((chart.id.clone(), plot::line_chart_svg(&chart)));
    }
    let mut written = Vec::new();
    for (name, svg) in figures {
        let svg = svg.map_err(|e| format!("drawing {name}: {e}"))?;
        let path = dir.join(format!("{}.svg", file_stem(&name)));
        write_bytes_atomic(&path, svg.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A name safe as a file name: letters, digits, `-`, `_` and `.` kept, anything else `-`.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}
