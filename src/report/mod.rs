//! `alp-rl report`: offline analysis of run directories (docs/analysis.md). Reading runs
//! ([`runs`], [`rollouts`], [`context`]), the summary quantities ([`summary`]), the charts
//! ([`charts`], drawn by [`plot`]), the three renderings ([`html`], [`markdown`], [`json`]) and the
//! charts as SVG files ([`figures`]).
//! A file that cannot be read is a [`Problem`] in the report, not the end of it.
pub mod charts;
pub mod context;
pub mod figures;
pub mod html;
pub mod json;
pub mod markdown;
pub mod plot;
pub mod rollouts;
pub mod runs;
pub mod summary;

use std::path::PathBuf;

pub use rollouts::Mismatch;
pub use runs::{Problem, Run};
pub use summary::Summary;

use crate::run_dir::RunDir;

/// Everything the report shows of one run.
pub struct RunReport {
    pub run: Run,
    pub summary: Summary,
    pub mismatch: Mismatch,
}

pub struct Report {
    pub runs: Vec<RunReport>,
    /// What could not be read, each naming its file.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Reads the runs at `roots` (in that order); what cannot be read goes to `problems`.
    pub fn build(roots: &[PathBuf]) -> Report {
        let mut problems = Vec::new();
        let mut runs: Vec<Run> = roots
            .iter()
            .filter_map(|r| runs::read_run(r, &mut problems))
            .collect();
        runs::disambiguate(&mut runs);
        let runs = runs
            .into_iter()
            .map(|run| {
                let mut mismatch = rollouts::read_mismatch(&RunDir::new(&run.root), &mut problems);
                context::decode_context(&run, &mut mismatch.top, &mut problems);
                RunReport {
                    summary: summary::summarise(&run),
                    run,
                    mismatch,
                }
            })
            .collect();
        Report { runs, problems }
    }
}

/// Position buckets of the mismatch-by-position tables: 0, 1, 2-3, 4-7, ... (the plot has every
/// position).
pub fn position_buckets(by_position: &[rollouts::PositionGap]) -> Vec<(String, usize, f64, f64)> {
    let mut out: Vec<(String, usize, f64, f64)> = Vec::new();
    let mut lo = 0usize;
    let last = by_position.last().map_or(0, |p| p.position);
    while lo <= last && !by_position.is_empty() {
        let hi = if lo == 0 { 0 } else { lo * 2 - 1 };
        let inside: Vec<_> = by_position
            .iter()
            .filter(|p| (lo..=hi).contains(&p.position))
            .collect();
        let tokens: usize = inside.iter().map(|p| p.tokens).sum();
        if tokens > 0 {
            let weighted = |f: fn(&rollouts::PositionGap) -> f64| {
                inside.iter().map(|p| f(p) * p.tokens as f64).sum::<f64>() / tokens as f64
            };
            let name = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            out.push((
                name,
                tokens,
                weighted(|p| p.mean_gap),
                weighted(|p| p.mean_abs_gap),
            ));
        }
        lo = hi + 1;
    }
    out
}
