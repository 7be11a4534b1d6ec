//! "Where the mismatch lives": the per-token gap `lp_old - mu` between the training policy (before
//! the step's update, unperturbed: what `mismatch/*` compare) and the inference policy that sampled
//! the token, read from `rollouts/step-*.parquet`. The largest gaps with their text around them, and
//! the gap by position in the completion. Only trained tokens (`loss_mask = 1`) of samples whose
//! `lp_old` was logged (`run.log_logprobs = true`, policy-gradient learner) count.
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{
    Array, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray, UInt8Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::Serialize;

use super::runs::Problem;
use crate::run_dir::RunDir;

/// How many of the largest gaps are kept.
pub const TOP_TOKENS: usize = 20;
/// Tokens of context shown on each side of a top token.
pub const CONTEXT_TOKENS: usize = 8;

/// The columns read (the rest of a rollout file is not needed).
const COLUMNS: [&str; 7] = [
    "step",
    "example_id",
    "completion_ids",
    "loss_mask",
    "mu",
    "lp_old",
    "finish_reason",
];

/// One trained token with a large `|lp_old - mu|`.
#[derive(Debug, Clone, Serialize)]
pub struct TopToken {
    pub step: i64,
    pub example_id: String,
    pub finish_reason: String,
    /// Index in the completion (0: the first generated token).
    pub position: usize,
    pub token_id: i32,
    pub lp_old: f32,
    pub mu: f32,
    /// `lp_old - mu` (nats).
    pub gap: f64,
    /// Completion token ids before and after it (up to [`CONTEXT_TOKENS`] each).
    #[serde(skip)]
    pub before_ids: Vec<i32>,
    #[serde(skip)]
    pub after_ids: Vec<i32>,
    /// The decoded text (filled in by [`super::context`]; token ids when no tokenizer was found).
    pub before: String,
    pub token: String,
    pub after: String,
}

/// The gap at one completion position, over every logged trained token there.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PositionGap {
    pub position: usize,
    pub tokens: usize,
    /// Mean of `lp_old - mu` (nats).
    pub mean_gap: f64,
    /// Mean of `|lp_old - mu|` (nats).
    pub mean_abs_gap: f64,
}

/// What the rollouts of one run say about the mismatch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Mismatch {
    /// Rollout files read whole, and rows in them.
    pub files: usize,
    pub samples: usize,
    /// Trained tokens with a logged `lp_old` (0: the run did not log it).
    pub tokens_with_lp: usize,
    /// Largest `|lp_old - mu|` first.
    pub top: Vec<TopToken>,
    pub by_position: Vec<PositionGap>,
}

#[derive(Default)]
struct Sums {
    tokens: usize,
    gap: f64,
    abs_gap: f64,
}

/// Reads every complete `rollouts/step-*.parquet` of the run (temporary files of a run in progress
/// are not listed), pushing a [`Problem`] for a file it cannot read or that lacks a column.
pub fn read_mismatch(run: &RunDir, problems: &mut Vec<Problem>) -> Mismatch {
    let mut out = Mismatch::default();
    let dir = run.rollouts_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("step-") && n.ends_with(".parquet")
            })
        })
        .collect();
    files.sort();
    let mut sums: Vec<Sums> = Vec::new();
    for path in files {
        match read_file(&path, &mut out, &mut sums) {
            Ok(()) => out.files += 1,
            Err(message) => problems.push(Problem { path, message }),
        }
    }
    out.by_position = sums
        .into_iter()
        .enumerate()
        .filter(|(_, s)| s.tokens > 0)
        .map(|(position, s)| PositionGap {
            position,
            tokens: s.tokens,
            mean_gap: s.gap / s.tokens as f64,
            mean_abs_gap: s.abs_gap / s.tokens as f64,
        })
        .collect();
    out
}

fn read_file(path: &Path, out: &mut Mismatch, sums: &mut Vec<Sums>) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        format!("cannot read it as parquet ({e}); it may be truncated: its samples are left out")
    })?;
    let schema = builder.schema().clone();
    let mut roots = Vec::new();
    for name in COLUMNS {
        let index = schema.index_of(name).map_err(|_| {
            format!(
                "no column `{name}` (docs/run-directory.md lists a rollout file's columns): its \
                 samples are left out"
            )
        })?;
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| format!("cannot read it: {e}"))?;
    // Read the whole file before counting any of it, so a file broken half-way counts not at all.
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| {
        format!("cannot read it ({e}); it may be truncated: its samples are left out")
    })?;
    for batch in &batches {
        add_batch(batch, out, sums)?;
    }
    Ok(())
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, ty: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| format!("column `{name}` is not {ty}: its samples are left out"))
}

fn list_values<'a, T: 'static>(list: &'a ListArray, name: &str, ty: &str) -> Result<&'a T, String> {
    list.values()
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column `{name}` is not list<{ty}>: its samples are left out"))
}

fn add_batch(batch: &RecordBatch, out: &mut Mismatch, sums: &mut Vec<Sums>) -> Result<(), String> {
    let steps = column::<Int64Array>(batch, "step", "int64")?;
    let examples = column::<StringArray>(batch, "example_id", "utf8")?;
    let finish = column::<StringArray>(batch, "finish_reason", "utf8")?;
    let ids = column::<ListArray>(batch, "completion_ids", "a list")?;
    let mask = column::<ListArray>(batch, "loss_mask", "a list")?;
    let mu = column::<ListArray>(batch, "mu", "a list")?;
    let lp_old = column::<ListArray>(batch, "lp_old", "a list")?;
    let id_values = list_values::<Int32Array>(ids, "completion_ids", "int32")?;
    let mask_values = list_values::<UInt8Array>(mask, "loss_mask", "uint8")?;
    let mu_values = list_values::<Float32Array>(mu, "mu", "float32")?;
    let lp_values = list_values::<Float32Array>(lp_old, "lp_old", "float32")?;
    for i in 0..batch.num_rows() {
        out.samples += 1;
        if lp_old.is_null(i) {
            continue;
        }
        let range = |l: &ListArray| {
            let o = l.value_offsets();
            o[i] as usize..o[i + 1] as usize
        };
        let (ids_r, mask_r, mu_r, lp_r) = (range(ids), range(mask), range(mu), range(lp_old));
        let n = ids_r.len();
        if mask_r.len() != n || mu_r.len() != n || lp_r.len() != n {
            return Err(format!(
                "row {i}: completion_ids, loss_mask, mu and lp_old differ in length: its samples \
                 are left out"
            ));
        }
        let sample_ids = &id_values.values()[ids_r];
        for t in 0..n {
            let (lp, m) = (
                lp_values.value(lp_r.start + t),
                mu_values.value(mu_r.start + t),
            );
            if mask_values.value(mask_r.start + t) == 0 || !lp.is_finite() || !m.is_finite() {
                continue;
            }
            let gap = lp as f64 - m as f64;
            if sums.len() <= t {
                sums.resize_with(t + 1, Sums::default);
            }
            sums[t].tokens += 1;
            sums[t].gap += gap;
            sums[t].abs_gap += gap.abs();
            out.tokens_with_lp += 1;
            let smallest_kept = out.top.last().map_or(f64::NEG_INFINITY, |x| x.gap.abs());
            if out.top.len() < TOP_TOKENS || gap.abs() > smallest_kept {
                let top = TopToken {
                    step: steps.value(i),
                    example_id: examples.value(i).to_string(),
                    finish_reason: finish.value(i).to_string(),
                    position: t,
                    token_id: sample_ids[t],
                    lp_old: lp,
                    mu: m,
                    gap,
                    before_ids: sample_ids[t.saturating_sub(CONTEXT_TOKENS)..t].to_vec(),
                    after_ids: sample_ids[t + 1..(t + 1 + CONTEXT_TOKENS).min(n)].to_vec(),
                    before: String::new(),
                    token: String::new(),
                    after: String::new(),
                };
                // Stable: among equal gaps the earlier token stays ahead.
                let at = out.top.partition_point(|x| x.gap.abs() >= gap.abs());
                out.top.insert(at, top);
                out.top.truncate(TOP_TOKENS);
            }
        }
    }
    Ok(())
}
