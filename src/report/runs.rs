//! Reading one run directory for the report: what kind of run it is (`config.toml`) and its
//! `metrics.parquet` as columns. Whatever cannot be read becomes a [`Problem`] naming the file, and
//! the rest is still read: a run in progress, a truncated file or a missing column loses only what
//! it touches.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Float64Array, Int64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::run_dir::RunDir;

/// Something of a run that could not be read: the file and what is wrong with it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// `metrics.parquet` by column: one value per step, NaN where the file holds a null (as pandas
/// reads it), rows in step order.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub steps: Vec<i64>,
    pub columns: BTreeMap<String, Vec<f64>>,
}

impl Metrics {
    /// The column `name`, if the run logged it.
    pub fn column(&self, name: &str) -> Option<&[f64]> {
        self.columns.get(name).map(Vec::as_slice)
    }

    /// `(step, value)` of the column's finite values.
    pub fn points(&self, name: &str) -> Vec<(f64, f64)> {
        self.column(name)
            .map(|values| {
                self.steps
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| v.is_finite())
                    .map(|(&s, &v)| (s as f64, v))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the report knows of one run directory.
#[derive(Debug, Clone)]
pub struct Run {
    /// The directory's name (its path when two runs share a name): the legend's label.
    pub name: String,
    pub root: PathBuf,
    /// `learner.kind` (`pg` or `eggroll`), `learner.correction.kind`, `rollout.backend` and
    /// `run.steps` of `config.toml`, where it has them.
    pub learner: Option<String>,
    pub correction: Option<String>,
    pub backend: Option<String>,
    pub planned_steps: Option<i64>,
    pub metrics: Metrics,
}

impl Run {
    /// `name (learner/correction)`, the label of the run's series.
    pub fn label(&self) -> String {
        match (self.learner.as_deref(), self.correction.as_deref()) {
            (Some("eggroll"), _) => format!("{} (eggroll)", self.name),
            (_, Some(c)) => format!("{} ({c})", self.name),
            _ => self.name.clone(),
        }
    }

    /// The last logged step, if any.
    pub fn last_step(&self) -> Option<i64> {
        self.metrics.steps.last().copied()
    }
}

/// Whether `dir` looks like a run directory: it holds at least one of the files `alp-rl train`
/// writes first.
fn is_run_dir(run: &RunDir) -> bool {
    [run.run_json(), run.config_toml(), run.metrics()]
        .iter()
        .any(|p| p.is_file())
}

/// Reads the run at `root`, pushing what cannot be read to `problems`. `None`: `root` is not a run
/// directory at all.
pub fn read_run(root: &Path, problems: &mut Vec<Problem>) -> Option<Run> {
    let dir = RunDir::new(root);
    if !root.is_dir() || !is_run_dir(&dir) {
        let message = if root.is_dir() {
            "not a run directory: it has none of run.json, config.toml, metrics.parquet (pass \
             the --out directory of `alp-rl train`)"
        } else {
            "no such directory"
        };
        problems.push(Problem {
            path: root.to_path_buf(),
            message: message.into(),
        });
        return None;
    }
    let config = read_config(&dir, problems);
    let get = |path: &[&str]| -> Option<toml::Value> {
        let mut v = config.as_ref()?;
        for key in path {
            v = v.get(key)?;
        }
        Some(v.clone())
    };
    let text = |path: &[&str]| get(path).and_then(|v| v.as_str().map(str::to_string));
    let metrics = if dir.metrics().exists() {
        read_metrics(&dir.metrics(), problems)
    } else {
        // A run that has not finished its first step yet: a report without curves.
        problems.push(Problem {
            path: dir.metrics(),
            message: "not written yet (no step finished): the run has no metrics to plot".into(),
        });
        Metrics::default()
    };
    Some(Run {
        name: root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| root.display().to_string()),
        root: root.to_path_buf(),
        // A config without `learner.kind` predates EGGROLL: policy gradient, the key's default.
        learner: config
            .as_ref()
            .map(|_| text(&["learner", "kind"]).unwrap_or_else(|| "pg".into())),
        correction: text(&["learner", "correction", "kind"]),
        backend: text(&["rollout", "backend"]),
        planned_steps: get(&["run", "steps"]).and_then(|v| v.as_integer()),
        metrics,
    })
}

fn read_config(dir: &RunDir, problems: &mut Vec<Problem>) -> Option<toml::Value> {
    let path = dir.config_toml();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem {
                path,
                message: format!(
                    "cannot read it ({e}): the run's learner and correction are unknown"
                ),
            });
            return None;
        }
    };
    match toml::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(Problem {
                path,
                message: format!(
                    "not valid TOML ({e}): the run's learner and correction are unknown"
                ),
            });
            None
        }
    }
}

/// Reads `metrics.parquet`: `step` must be an int64 column, every metric a float64 one; a column of
/// another type is left out (and named), a file that cannot be read at all gives empty metrics.
pub fn read_metrics(path: &Path, problems: &mut Vec<Problem>) -> Metrics {
    let mut problem = |message: String| {
        problems.push(Problem {
            path: path.to_path_buf(),
            message,
        })
    };
    let batches = File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| e.to_string()))
        .and_then(|b| b.build().map_err(|e| e.to_string()))
        .and_then(|r| r.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string()));
    let batches = match batches {
        Ok(b) => b,
        Err(e) => {
            problem(format!(
                "cannot read it as parquet ({e}); it may be truncated or still being copied: \
                 the run's curves and summary are left out"
            ));
            return Metrics::default();
        }
    };
    let mut rows: Vec<(i64, BTreeMap<String, f64>)> = Vec::new();
    let mut skipped = BTreeMap::new();
    for batch in &batches {
        let Some(steps) = batch
            .column_by_name("step")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        else {
            problem(
                "no int64 column `step`: not an alp-rl metrics file, its curves and summary are \
                 left out"
                    .into(),
            );
            return Metrics::default();
        };
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut row = BTreeMap::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                let name = field.name();
                if name == "step" || name == "policy_version" {
                    continue;
                }
                match column.as_any().downcast_ref::<Float64Array>() {
                    Some(c) => {
                        let v = if c.is_valid(i) { c.value(i) } else { f64::NAN };
                        row.insert(name.clone(), v);
                    }
                    None => {
                        skipped.insert(name.clone(), field.data_type().to_string());
                    }
                }
            }
            rows.push((steps.value(i), row));
        }
    }
    for (name, ty) in skipped {
        problem(format!(
            "column `{name}` is {ty}, not float64: left out of the report"
        ));
    }
    rows.sort_by_key(|(step, _)| *step);
    let mut metrics = Metrics::default();
    let names: std::collections::BTreeSet<String> =
        rows.iter().flat_map(|(_, r)| r.keys().cloned()).collect();
    for name in names {
        let column = rows
            .iter()
            .map(|(_, r)| r.get(&name).copied().unwrap_or(f64::NAN))
            .collect();
        metrics.columns.insert(name, column);
    }
    metrics.steps = rows.into_iter().map(|(s, _)| s).collect();
    metrics
}

/// Gives runs that share a directory name their path as name, so every legend entry is distinct.
pub fn disambiguate(runs: &mut [Run]) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs.iter() {
        *count.entry(r.name.clone()).or_default() += 1;
    }
    for r in runs.iter_mut() {
        if count[&r.name] > 1 {
            r.name = r.root.display().to_string();
        }
    }
}
