//! Readers for the parquet files an `alp-rl` run leaves behind (docs/run-directory.md).
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use alp_learner::metric_names;
use arrow_array::{
    Array, ArrowPrimitiveType, Float64Array, Int64Array, ListArray, PrimitiveArray, RecordBatch,
    StringArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every record batch of a parquet file.
pub fn read(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// An `Int64` column (`step`, `policy_version`, ...).
pub fn int_column(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec()
}

/// Row `i` of a list column (`completion_ids`, `loss_mask`, `mu`, ...).
pub fn list_row<T: ArrowPrimitiveType>(b: &RecordBatch, name: &str, i: usize) -> Vec<T::Native> {
    let col = b
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    col.value(i)
        .as_any()
        .downcast_ref::<PrimitiveArray<T>>()
        .unwrap()
        .values()
        .to_vec()
}

/// Row `i` of a string column.
pub fn text(b: &RecordBatch, name: &str, i: usize) -> String {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(i)
        .to_string()
}

/// `RUN/metrics.parquet` as `step -> name -> value` (nulls left out); a step written twice fails.
pub fn metrics(run: &Path) -> BTreeMap<i64, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for b in read(&run.join("metrics.parquet")) {
        for (i, step) in int_column(&b, "step").into_iter().enumerate() {
            let mut row = BTreeMap::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                if let Some(c) = c.as_any().downcast_ref::<Float64Array>() {
                    if c.is_valid(i) {
                        row.insert(f.name().clone(), c.value(i));
                    }
                }
            }
            assert!(out.insert(step, row).is_none(), "step {step} twice");
        }
    }
    out
}

/// `metrics` without the metrics that depend on wall time (`time/*`, `throughput/*`:
/// [`metric_names::TIMING_PREFIXES`]), for comparing runs.
pub fn without_timing(
    metrics: BTreeMap<i64, BTreeMap<String, f64>>,
) -> BTreeMap<i64, BTreeMap<String, f64>> {
    metrics
        .into_iter()
        .map(|(step, row)| {
            let row = row
                .into_iter()
                .filter(|(k, _)| !metric_names::is_timing(k))
                .collect();
            (step, row)
        })
        .collect()
}
