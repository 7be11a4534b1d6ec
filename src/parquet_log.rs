//! Parquet logs of a run (design section 7): `metrics.parquet` (one row per step, one column per metric
//! name) and `rollouts/step-NNNNNN.parquet` (one row per sample). Zstd compression (level
//! [`ZSTD_LEVEL`], the design's codec); files are written atomically (see [`crate::run_dir`]) and carry
//! the resolved config in their key-value metadata under [`CONFIG_KEY`].
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, UInt8Builder,
};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use thiserror::Error;

use crate::run_dir::write_atomic;

/// The zstd level of every column chunk we write (zstd's own default: most of level 19's ratio on
/// token-id lists at a small fraction of its time).
pub const ZSTD_LEVEL: i32 = 3;

/// Key-value metadata key holding the run's resolved config (TOML).
pub const CONFIG_KEY: &str = "alp_rl.config";

#[derive(Debug, Error)]
pub enum LogError {
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parquet error on {path}: {source}")]
    Parquet { path: String, source: ParquetError },
    #[error("arrow error: {0}")]
    Arrow(#[from] ArrowError),
    #[error("{path}: {problem}")]
    Format { path: String, problem: String },
}

/// One row of `metrics.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub step: u64,
    pub policy_version: u64,
    pub values: BTreeMap<String, f64>,
}

/// One row of a rollout file: one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub step: u64,
    pub policy_version: u64,
    pub worker: u32,
    pub env: String,
    pub example_id: String,
    pub group_id: u64,
    pub prompt_text: String,
    pub completion_text: String,
    pub prompt_ids: Vec<i64>,
    pub completion_ids: Vec<i64>,
    pub loss_mask: Vec<u8>,
    pub mu: Vec<f32>,
    /// Null: the learner does not expose per-sample `lp_old`/`lp` (its metrics summarise them).
    pub lp_old: Option<Vec<f32>>,
    pub lp: Option<Vec<f32>>,
    pub reward: f64,
    pub advantage: f64,
    pub correct: bool,
    pub num_turns: u32,
    pub finish_reason: String,
    pub staleness: u64,
    /// Why the episode failed (environment error or panic); null when it did not.
    pub error: Option<String>,
}

fn list_field(name: &str, item: DataType, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, false))),
        nullable,
    )
}

/// The schema of rollout files (stable: readers rely on these names and types).
pub fn rollout_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("policy_version", DataType::Int64, false),
        Field::new("worker", DataType::Int32, false),
        Field::new("env", DataType::Utf8, false),
        Field::new("example_id", DataType::Utf8, false),
        Field::new("group_id", DataType::Int64, false),
        Field::new("prompt_text", DataType::Utf8, false),
        Field::new("completion_text", DataType::Utf8, false),
        list_field("prompt_ids", DataType::Int32, false),
        list_field("completion_ids", DataType::Int32, false),
        list_field("loss_mask", DataType::UInt8, false),
        list_field("mu", DataType::Float32, false),
        list_field("lp_old", DataType::Float32, true),
        list_field("lp", DataType::Float32, true),
        Field::new("reward", DataType::Float64, false),
        Field::new("advantage", DataType::Float64, false),
        Field::new("correct", DataType::Boolean, false),
        Field::new("num_turns", DataType::Int32, false),
        Field::new("finish_reason", DataType::Utf8, false),
        Field::new("staleness", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn item(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dt, false))
}

/// Builds the record batch of rollout rows.
pub fn rollout_batch(rows: &[RolloutRow]) -> Result<RecordBatch, LogError> {
    let mut step = Int64Builder::new();
    let mut version = Int64Builder::new();
    let mut worker = Int32Builder::new();
    let mut env = StringBuilder::new();
    let mut example = StringBuilder::new();
    let mut group = Int64Builder::new();
    let mut prompt_text = StringBuilder::new();
    let mut completion_text = StringBuilder::new();
    let mut prompt_ids = ListBuilder::new(Int32Builder::new()).with_field(item(DataType::Int32));
    let mut completion_ids =
        ListBuilder::new(Int32Builder::new()).with_field(item(DataType::Int32));
    let mut loss_mask = ListBuilder::new(UInt8Builder::new()).with_field(item(DataType::UInt8));
    let mut mu = ListBuilder::new(Float32Builder::new()).with_field(item(DataType::Float32));
    let mut lp_old = ListBuilder::new(Float32Builder::new()).with_field(item(DataType::Float32));
    let mut lp = ListBuilder::new(Float32Builder::new()).with_field(item(DataType::Float32));
    let mut reward = Float64Builder::new();
    let mut advantage = Float64Builder::new();
    let mut correct = BooleanBuilder::new();
    let mut turns = Int32Builder::new();
    let mut finish = StringBuilder::new();
    let mut staleness = Int64Builder::new();
    let mut error = StringBuilder::new();
    let ids32 = |ids: &[i64]| ids.iter().map(|&t| t as i32).collect::<Vec<i32>>();
    for r in rows {
        step.append_value(r.step as i64);
        version.append_value(r.policy_version as i64);
        worker.append_value(r.worker as i32);
        env.append_value(&r.env);
        example.append_value(&r.example_id);
        group.append_value(r.group_id as i64);
        prompt_text.append_value(&r.prompt_text);
        completion_text.append_value(&r.completion_text);
        prompt_ids.values().append_slice(&ids32(&r.prompt_ids));
        prompt_ids.append(true);
        completion_ids
            .values()
            .append_slice(&ids32(&r.completion_ids));
        completion_ids.append(true);
        loss_mask.values().append_slice(&r.loss_mask);
        loss_mask.append(true);
        mu.values().append_slice(&r.mu);
        mu.append(true);
        for (builder, values) in [(&mut lp_old, &r.lp_old), (&mut lp, &r.lp)] {
            match values {
                Some(v) => {
                    builder.values().append_slice(v);
                    builder.append(true);
                }
                None => builder.append(false),
            }
        }
        reward.append_value(r.reward);
        advantage.append_value(r.advantage);
        correct.append_value(r.correct);
        turns.append_value(r.num_turns as i32);
        finish.append_value(&r.finish_reason);
        staleness.append_value(r.staleness as i64);
        error.append_option(r.error.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(step.finish()),
        Arc::new(version.finish()),
        Arc::new(worker.finish()),
        Arc::new(env.finish()),
        Arc::new(example.finish()),
        Arc::new(group.finish()),
        Arc::new(prompt_text.finish()),
        Arc::new(completion_text.finish()),
        Arc::new(prompt_ids.finish()),
        Arc::new(completion_ids.finish()),
        Arc::new(loss_mask.finish()),
        Arc::new(mu.finish()),
        Arc::new(lp_old.finish()),
        Arc::new(lp.finish()),
        Arc::new(reward.finish()),
        Arc::new(advantage.finish()),
        Arc::new(correct.finish()),
        Arc::new(turns.finish()),
        Arc::new(finish.finish()),
        Arc::new(staleness.finish()),
        Arc::new(error.finish()),
    ];
    Ok(RecordBatch::try_new(rollout_schema(), columns)?)
}

/// The metrics table: `step`, `policy_version`, then one nullable f64 column per metric name seen in
/// any row (sorted), null where a row lacks it.
pub fn metrics_batch(rows: &[MetricsRow]) -> Result<RecordBatch, LogError> {
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.values.keys()).collect();
    let mut fields = vec![
        Field::new("step", DataType::Int64, false),
        Field::new("policy_version", DataType::Int64, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.step as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.policy_version as i64),
        )),
    ];
    for name in names {
        fields.push(Field::new(name.as_str(), DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.values.get(name).copied()),
        )));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Writes one record batch to `path` atomically, with the config in the key-value metadata.
pub fn write_parquet(path: &Path, batch: &RecordBatch, config_toml: &str) -> Result<(), LogError> {
    let where_ = path.display().to_string();
    let level = ZstdLevel::try_new(ZSTD_LEVEL).expect("zstd accepts levels 1 to 22");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            CONFIG_KEY.to_string(),
            config_toml.to_string(),
        )]))
        .build();
    let mut failure = None;
    write_atomic(path, |file| {
        let result = (|| {
            let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
            w.write(batch)?;
            w.close()?;
            Ok::<_, ParquetError>(())
        })();
        result.map_err(|e| {
            failure = Some(e);
            std::io::Error::other("parquet write failed")
        })
    })
    .map_err(|source| match failure.take() {
        Some(e) => LogError::Parquet {
            path: where_.clone(),
            source: e,
        },
        None => LogError::Io {
            path: where_.clone(),
            source,
        },
    })
}

/// Reads every record batch of a parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, LogError> {
    let where_ = path.display().to_string();
    let file = File::open(path).map_err(|source| LogError::Io {
        path: where_.clone(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|source| LogError::Parquet {
            path: where_.clone(),
            source,
        })?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Reads `metrics.parquet` back into rows (null cells are left out of a row's values).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>, LogError> {
    let where_ = path.display().to_string();
    let bad = |problem: String| LogError::Format {
        path: where_.clone(),
        problem,
    };
    let mut rows = Vec::new();
    for batch in read_parquet(path)? {
        let int_col = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(|| bad(format!("no Int64 column `{name}`")))
        };
        let steps = int_col("step")?;
        let versions = int_col("policy_version")?;
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut values = BTreeMap::new();
            for (field, col) in schema.fields().iter().zip(batch.columns()) {
                if field.name() == "step" || field.name() == "policy_version" {
                    continue;
                }
                let col = col
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| bad(format!("column `{}` is not Float64", field.name())))?;
                if col.is_valid(i) {
                    values.insert(field.name().clone(), col.value(i));
                }
            }
            rows.push(MetricsRow {
                step: steps.value(i) as u64,
                policy_version: versions.value(i) as u64,
                values,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn sample_row(i: u64) -> RolloutRow {
        RolloutRow {
            step: 1,
            policy_version: 1,
            worker: 0,
            env: "arithmetic".into(),
            example_id: format!("ex-{i}"),
            group_id: i / 2,
            prompt_text: "2+2=".into(),
            completion_text: "#### 4".into(),
            prompt_ids: vec![5, 6, 7],
            completion_ids: vec![8, 9],
            loss_mask: vec![1, 1],
            mu: vec![-0.5, -0.25],
            lp_old: None,
            lp: Some(vec![-0.5, -0.3]),
            reward: 1.0,
            advantage: 0.5,
            correct: true,
            num_turns: 1,
            finish_reason: "stop".into(),
            staleness: 0,
            error: None,
        }
    }

    /// Every (leaf) column chunk's codec, as the file's own footer records it.
    fn codecs(path: &Path) -> Vec<(String, Compression)> {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let meta = reader.metadata();
        assert!(meta.num_row_groups() > 0);
        meta.row_groups()
            .iter()
            .flat_map(|rg| rg.columns())
            .map(|c| (c.column_path().string(), c.compression()))
            .collect()
    }

    #[test]
    fn rollouts_and_metrics_are_written_with_zstd() {
        let dir = tempfile::tempdir().unwrap();
        let rollouts = dir.path().join("rollouts/step-000001.parquet");
        let rows: Vec<RolloutRow> = (0..4).map(sample_row).collect();
        write_parquet(&rollouts, &rollout_batch(&rows).unwrap(), "x = 1").unwrap();
        let metrics = dir.path().join("metrics.parquet");
        let m = MetricsRow {
            step: 1,
            policy_version: 1,
            values: BTreeMap::from([("reward/mean".to_string(), 0.5)]),
        };
        write_parquet(&metrics, &metrics_batch(&[m]).unwrap(), "x = 1").unwrap();
        for (path, columns) in [(&rollouts, rollout_schema().fields().len()), (&metrics, 3)] {
            let found = codecs(path);
            assert_eq!(found.len(), columns, "{found:?}");
            for (column, codec) in found {
                // The footer records the codec, not its level.
                assert!(
                    matches!(codec, Compression::ZSTD(_)),
                    "{}: column {column} is {codec:?}",
                    path.display()
                );
            }
        }
        // And the rows read back.
        let back = read_parquet(&rollouts).unwrap();
        assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
    }
}
