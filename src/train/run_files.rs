//! The run directory's own files: `config.toml`, `run.json` (config, seeds, versions, resumes) and the
//! initial model of a preset; a resume checks the config against the saved one.
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use super::TrainRequest;
use crate::config::TrainConfig;
use crate::run_dir::{remove_stale_temps, temp_path, write_bytes_atomic, RunDir};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Creates (fresh run) or checks and reopens (resume) the run directory; writes `config.toml` and
/// `run.json`.
pub(crate) fn prepare_run_dir(req: &TrainRequest, run: &RunDir, config_toml: &str) -> Result<()> {
    if req.resume {
        let saved_path = run.config_toml();
        let saved = std::fs::read_to_string(&saved_path).with_context(|| {
            format!(
                "--resume: {} has no config.toml; is it a run directory?",
                run.root.display()
            )
        })?;
        let mut saved: TrainConfig =
            toml::from_str(&saved).with_context(|| format!("parsing {}", saved_path.display()))?;
        // Only the step count may change on resume (to extend a run).
        saved.run.steps = req.config.run.steps;
        saved.run.out = req.config.run.out.clone();
        ensure!(
            saved == req.config,
            "--resume: the config differs from the run's {} in more than run.steps; \
             resume with the same config",
            saved_path.display()
        );
        for dir in [run.root.clone(), run.rollouts_dir(), run.checkpoints_dir()] {
            remove_stale_temps(&dir)
                .with_context(|| format!("cannot clean temporary files in {}", dir.display()))?;
        }
    } else {
        let used = ["run.json", "metrics.parquet", "checkpoints", "rollouts"]
            .iter()
            .any(|n| run.root.join(n).exists());
        if used {
            bail!(
                "run directory {} already holds a run: pass --resume to continue it, or --out DIR",
                run.root.display()
            );
        }
    }
    for dir in [run.rollouts_dir(), run.checkpoints_dir()] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if req.resume && run.run_json().exists() {
        write_bytes_atomic(&run.config_toml(), config_toml.as_bytes())
            .with_context(|| format!("cannot write {}", run.config_toml().display()))?;
        let path = run.run_json();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--resume: cannot read {}", path.display()))?;
        let mut meta: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!("--resume: {} is not valid JSON; restore it from a backup, or start a new run with --out DIR", path.display())
        })?;
        meta["config"] = serde_json::to_value(&req.config)?;
        if let Some(list) = meta["resumes"].as_array_mut() {
            list.push(json!({ "time_unix": unix_now() }));
        }
        write_bytes_atomic(&run.run_json(), &serde_json::to_vec_pretty(&meta)?)?;
        return Ok(());
    }
    write_run_files(&req.config, &req.config_path, run, config_toml)
}

/// Writes `config.toml` and a fresh `run.json` (config, seeds, versions, start time) into `run`.
pub(crate) fn write_run_files(
    config: &TrainConfig,
    config_path: &Path,
    run: &RunDir,
    config_toml: &str,
) -> Result<()> {
    std::fs::create_dir_all(&run.root)
        .with_context(|| format!("cannot create the run directory {}", run.root.display()))?;
    write_bytes_atomic(&run.config_toml(), config_toml.as_bytes())
        .with_context(|| format!("cannot write {}", run.config_toml().display()))?;
    let meta = json!({
        "config_path": config_path.display().to_string(),
        "start_time_unix": unix_now(),
        "seeds": {
            "run": config.run.seed,
            "learner": config.learner.seed,
            "model_init": config.model.init_seed,
        },
        "versions": {
            "alp_rl": env!("CARGO_PKG_VERSION"),
            "git": option_env!("ALP_RL_GIT_DESCRIBE"),
            "libtorch_cuda": tch::Cuda::is_available(),
        },
        "resumes": [],
        "config": serde_json::to_value(config)?,
    });
    write_bytes_atomic(&run.run_json(), &serde_json::to_vec_pretty(&meta)?)
        .with_context(|| format!("cannot write {}", run.run_json().display()))?;
    Ok(())
}

/// The model the run starts from: `model.path`, or a preset created once inside the run directory.
pub(crate) fn initial_model(config: &TrainConfig, run: &RunDir) -> Result<PathBuf> {
    if let Some(p) = &config.model.path {
        return Ok(p.clone());
    }
    let preset = config
        .model
        .new_model
        .expect("validated: path or new_model");
    let dir = run.initial_model();
    if !dir.join("config.json").exists() {
        let tmp = temp_path(&dir);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        crate::models::presets::write_model(
            preset,
            config.model.arch,
            &tmp,
            config.model.init_seed,
            alp_policy::Dtype::F32,
        )?;
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    }
    Ok(dir)
}
