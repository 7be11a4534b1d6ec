//! Loading dataset rows as JSON values: GSM8K-style JSONL and verl-style parquet (read through arrow), plus
//! locating the shared data directory that tests and default settings use.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use crate::error::EnvError;

/// Environment variable that overrides where the shared data directory is.
pub const SHARED_DATA_ENV: &str = "ALP_SHARED_DATA";

/// Where `shared/data` may be, in order: `$ALP_SHARED_DATA`, `../shared/data` from the current directory (the
/// workspace root when the CLI runs), and beside the workspace this crate was built in.
pub fn shared_data_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os(SHARED_DATA_ENV) {
        c.push(PathBuf::from(p));
    }
    c.push(PathBuf::from("../shared/data"));
    // envs/ is one level below the workspace root; shared/ sits beside the workspace.
    c.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    c
}

/// The path of `relative` (e.g. `gsm8k/train.jsonl`) inside the shared data directory, or an error naming every
/// place looked at.
pub fn shared_data_file(relative: &str) -> Result<PathBuf, EnvError> {
    let tried: Vec<PathBuf> = shared_data_candidates()
        .into_iter()
        .map(|d| d.join(relative))
        .collect();
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| EnvError::Dataset {
        path: relative.to_string(),
        message: format!(
            "not found in the shared data directory; looked at {} (set {SHARED_DATA_ENV} to the folder holding it)",
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Resolves a dataset path from settings: as given if it exists; a path through `shared/data/` is also looked up
/// in the shared data directory wherever that is.
pub fn resolve_data_path(path: &str) -> Result<PathBuf, EnvError> {
    let p = PathBuf::from(path);
    if p.is_file() {
        return Ok(p);
    }
    if let Some(i) = path.find("shared/data/") {
        return shared_data_file(&path[i + "shared/data/".len()..]);
    }
    Err(EnvError::Dataset {
        path: path.to_string(),
        message: "file not found".into(),
    })
}

/// Reads every row of a `.jsonl`/`.json` (one object per line) or `.parquet` file.
pub fn load_rows(path: &Path) -> Result<Vec<Value>, EnvError> {
    let err = |message: String| EnvError::Dataset {
        path: path.display().to_string(),
        message,
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => load_parquet(path).map_err(err),
        Some("jsonl") | Some("json") => load_jsonl(path).map_err(err),
        _ => Err(err(
            "unknown format: expected a .jsonl or .parquet file".into()
        )),
    }
}

/// Where row `index` (0-based, as [`load_rows`] returns it) sits in `path`, for messages: `line N` of a
/// JSONL file (blank lines hold no row), `row N` otherwise.
pub fn row_location(path: &Path, index: usize) -> String {
    if matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl") | Some("json")
    ) {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some((line, _)) = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .nth(index)
            {
                return format!("line {}", line + 1);
            }
        }
    }
    format!("row {}", index + 1)
}

fn load_jsonl(path: &Path) -> Result<Vec<Value>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if !v.is_object() {
            return Err(format!("line {}: expected a JSON object", i + 1));
        }
        rows.push(v);
    }
    Ok(rows)
}

fn load_parquet(path: &Path) -> Result<Vec<Value>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        rows.extend(batch_to_json(&batch)?);
    }
    Ok(rows)
}

/// One JSON object per row of an arrow record batch.
pub fn batch_to_json(batch: &RecordBatch) -> Result<Vec<Value>, String> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|row| {
            let mut obj = Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                obj.insert(field.name().clone(), cell(column.as_ref(), row)?);
            }
            Ok(Value::Object(obj))
        })
        .collect()
}

/// The JSON value of one cell (nested lists and structs included).
fn cell(a: &dyn Array, i: usize) -> Result<Value, String> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(a.as_string_view().value(i).to_string()),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => a.as_primitive::<Float32Type>().value(i).into(),
        DataType::Float64 => a.as_primitive::<Float64Type>().value(i).into(),
        DataType::List(_) => list(a.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i).as_ref())?,
        DataType::FixedSizeList(..) => list(a.as_fixed_size_list().value(i).as_ref())?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut obj = Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), cell(col.as_ref(), i)?);
            }
            Value::Object(obj)
        }
        DataType::Dictionary(..) => {
            let d = a.as_any_dictionary();
            let key = d.normalized_keys()[i];
            cell(d.values().as_ref(), key)?
        }
        other => return Err(format!("unsupported column type {other}")),
    })
}

fn list(values: &dyn Array) -> Result<Value, String> {
    (0..values.len())
        .map(|j| cell(values, j))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn jsonl_rows_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"q\", \"answer\": \"#### 1\"}\n\n{\"question\": \"r\"}\n",
        )
        .unwrap();
        let rows = load_rows(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["question"], "r");
        let bad = dir.path().join("bad.jsonl");
        File::create(&bad)
            .unwrap()
            .write_all(b"{\"a\": 1}\n[1]\n")
            .unwrap();
        let e = load_rows(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bad.jsonl"), "{e}");
        let e = load_rows(&dir.path().join("x.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown format"), "{e}");
        let e = resolve_data_path("/nonexistent/shared/data/nothing.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nothing.jsonl") && e.contains("looked at"),
            "{e}"
        );
    }
}
