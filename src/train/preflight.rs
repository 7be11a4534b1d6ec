//! What `train` and `sft` check and take before they write anything: the model exists and its context
//! holds the configured token budgets, the run directory is not used by another process (a lock held
//! for the whole run), and a resumed run's files are what they claim to be.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use alp_envs::Environment;
use alp_learner::eggroll::{evolved_matrices_of, EggrollSettings};
use alp_policy::ModelConfig;
use alp_tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};

use crate::config::{Preset, SftSection, TrainConfig};
use crate::run_dir::{checkpoint_name, RunDir};

/// The starting model's config and tokenizer: `model.path`'s files, or the `model.new_model` preset's;
/// and what they came from, for messages.
pub(crate) fn starting_model(config: &TrainConfig) -> Result<(ModelConfig, Tokenizer, String)> {
    if let Some(path) = &config.model.path {
        ensure!(
            path.join("config.json").exists(),
            "model.path = {}: no config.json there (expected an HF checkpoint directory)",
            path.display()
        );
        let cfg = ModelConfig::from_dir(path)?;
        let tokenizer = Tokenizer::from_dir(path).with_context(|| {
            format!("model.path = {}: cannot load its tokenizer", path.display())
        })?;
        return Ok((
            cfg,
            tokenizer,
            path.join("config.json").display().to_string(),
        ));
    }
    let preset = config.model.new_model.unwrap_or(Preset::Tiny);
    let (cfg, tokenizer) = crate::models::presets::preset_config(preset, config.model.arch)?;
    Ok((cfg, tokenizer, format!("the `{preset}` preset")))
}

/// `model.device = "cuda"` needs a GPU libtorch can see; refused before any work instead of a panic
/// inside libtorch at the first tensor moved there.
pub(crate) fn check_device(config: &TrainConfig, config_path: &Path) -> Result<()> {
    if config.model.device == crate::config::Device::Cuda && !tch::Cuda::is_available() {
        bail!(
            "{}: model.device = \"cuda\" but libtorch sees no CUDA device (no GPU or driver, or a \
             CPU-only libtorch); use device = \"auto\" (CUDA when there is one) or \"cpu\"",
            config_path.display()
        );
    }
    Ok(())
}

/// The `[sft]` data, read and tokenised before anything is written (see [`crate::sft::check_data`]).
pub(crate) fn check_sft(config: &TrainConfig, sft: &SftSection) -> Result<()> {
    let (model, tokenizer, _) = starting_model(config)?;
    if sft.data.is_none() {
        return Ok(());
    }
    let extra = config.rollout.chat_extra_json();
    crate::sft::check_data(
        sft,
        &tokenizer,
        &extra,
        model.max_position_embeddings.max(0) as usize,
    )
}

/// Refuses token budgets the model cannot hold, before any work: every episode (prompt, turns and
/// environment messages) must fit in the model's `max_position_embeddings`.
pub(crate) fn check_model(
    config: &TrainConfig,
    env: &dyn Environment,
    config_path: &Path,
) -> Result<()> {
    check_device(config, config_path)?;
    let (model, tokenizer, source) = starting_model(config)?;
    if let Some(es) = config.eggroll_settings() {
        check_eggroll(&es, &model, &source, config_path)?;
    }
    if let Some(lora) = &config.model.lora {
        // Targets that name no projection of the model are refused before anything is written.
        lora.to_lora_config(None)
            .sites(&model, "[model.lora]")
            .with_context(|| {
                format!(
                    "{}: model.lora.target_modules does not fit the model of {source}",
                    config_path.display()
                )
            })?;
    }
    let context = model.max_position_embeddings.max(0) as usize;
    let total = config.rollout.max_total_tokens;
    if total >= context {
        bail!(
            "{}: `rollout.max_total_tokens` is {total}, but the model's context is {context} tokens \
             (max_position_embeddings of {source}) and must also hold the prompt; set \
             rollout.max_total_tokens below {context}",
            config_path.display()
        );
    }
    // The first training prompt, rendered as the episode runner renders it: a prompt that leaves
    // no room for the episode would fail every episode of the run.
    let prompt = first_prompt_len(config, env, &tokenizer)?;
    if prompt + config.rollout.max_new_tokens.min(total) > context {
        bail!(
            "{}: the first training prompt of env `{}` is {prompt} tokens, so an episode of \
             rollout.max_new_tokens = {} does not fit the model's context of {context} tokens \
             (max_position_embeddings of {source}); shorten the prompt (its template or system \
             prompt) or lower the token budgets",
            config_path.display(),
            config.env.name,
            config.rollout.max_new_tokens
        );
    }
    if let Some(sft) = &config.sft {
        check_sft(config, sft)?;
    }
    Ok(())
}

/// Refuses `[learner.eggroll]` settings the starting model cannot take (a rank above the smaller side
/// of an evolved matrix, a `params` pattern that matches no projection), from its config alone.
fn check_eggroll(
    es: &EggrollSettings,
    model: &ModelConfig,
    source: &str,
    config_path: &Path,
) -> Result<()> {
    if let Err(e) = es.check_against(&evolved_matrices_of(model)) {
        let key = format!("learner.{}", e.field);
        bail!(
            "{}: `{key}`: {} (the model of {source})",
            crate::config::key_location(config_path, &key),
            e.reason
        );
    }
    Ok(())
}

/// Tokens of the environment's first training prompt (train example of seed 0) with the generation
/// prompt, rendered with the run's chat template variables.
fn first_prompt_len(
    config: &TrainConfig,
    env: &dyn Environment,
    tokenizer: &Tokenizer,
) -> Result<usize> {
    let example = env.example(alp_envs::Split::Train, 0)?;
    let episode = env.reset(&example.data)?;
    let extra = config.rollout.chat_extra_json();
    let tools = (!episode.tools.is_empty()).then_some(episode.tools.as_slice());
    let text = tokenizer
        .render_chat(&episode.messages, tools, true, &extra)
        .with_context(|| format!("rendering the first prompt of env `{}`", config.env.name))?;
    Ok(tokenizer.encode(&text, false)?.len())
}

/// `RUN/.lock`, locked (`flock`) for as long as the run lives; it holds the owner's pid.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Locks the run directory `root` (creating it) for this process. A second `train` or `sft` in the same
/// directory is refused with the holder's pid instead of both writing the same files.
pub(crate) fn lock_run_dir(root: &Path, create: bool) -> Result<RunLock> {
    if create {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create the run directory {}", root.display()))?;
    }
    ensure!(
        root.is_dir(),
        "--resume: {} is not a run directory (no such directory); check --out / run.out",
        root.display()
    );
    let path = root.join(".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the run lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another alp-rl (pid {holder})")
            };
            bail!(
                "run directory {} is in use by {who} (lock {}); wait for it to finish, or pass \
                 --out DIR for a separate run",
                root.display(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    let write_pid = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()
    };
    write_pid(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(RunLock { _file: file })
}

/// The checkpoint a resume starts from. `checkpoints/latest` names it; without `latest` a run that
/// has complete checkpoints is refused (restarting from step 0 would redo and overwrite them), and
/// the checkpoint's `state.json` must agree with its directory's step.
pub(crate) fn resume_checkpoint(run: &RunDir) -> Result<Option<(PathBuf, u64)>> {
    let latest = run
        .latest_checkpoint()
        .with_context(|| format!("cannot read {}", run.latest().display()))?;
    let Some((dir, step)) = latest else {
        let steps = run
            .checkpoint_steps()
            .with_context(|| format!("cannot list {}", run.checkpoints_dir().display()))?;
        if let Some(&last) = steps.last() {
            bail!(
                "--resume: {} is missing but {} holds complete checkpoints (up to {}); restore it \
                 with `echo {} > {}` to resume from that step, or start a new run with --out DIR",
                run.latest().display(),
                run.checkpoints_dir().display(),
                checkpoint_name(last),
                checkpoint_name(last),
                run.latest().display()
            );
        }
        return Ok(None);
    };
    ensure!(
        dir.is_dir(),
        "--resume: {} names {}, which does not exist",
        run.latest().display(),
        dir.display()
    );
    let state = super::run_state::load_state(&dir)?;
    ensure!(
        state.step == step,
        "--resume: {} says step {} but its directory is {}; the checkpoint is inconsistent \
         (restore it or point {} at another checkpoint)",
        dir.join("state.json").display(),
        state.step,
        checkpoint_name(step),
        run.latest().display()
    );
    Ok(Some((dir, step)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_directory_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_run_dir(dir.path(), true).unwrap();
        let e = lock_run_dir(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        lock_run_dir(dir.path(), false).unwrap();
        let gone = dir.path().join("nothing");
        let e = lock_run_dir(&gone, false).unwrap_err().to_string();
        assert!(e.contains("not a run directory") && !gone.exists(), "{e}");
    }
}
