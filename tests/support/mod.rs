//! Readers for what `alp-rl` runs leave behind, shared by the integration tests (`mod support;`).
//! Not every test file uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::Output;

use arrow_array::{
    Array, ArrowPrimitiveType, Float64Array, Int64Array, ListArray, PrimitiveArray, RecordBatch,
    StringArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Asserts that an `alp-rl` command succeeded, showing its stderr otherwise.
pub fn ok(out: Output) {
    assert!(
        out.status.success(),
        "alp-rl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every record batch of a parquet file.
pub fn read(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
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

/// Metrics as `step -> name -> value` (nulls left out).
pub fn metrics(run: &Path) -> BTreeMap<i64, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for b in read(&run.join("metrics.parquet")) {
        let steps = b
            .column_by_name("step")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                if let Some(c) = c.as_any().downcast_ref::<Float64Array>() {
                    if c.is_valid(i) {
                        row.insert(f.name().clone(), c.value(i));
                    }
                }
            }
            out.insert(steps.value(i), row);
        }
    }
    out
}
