//! The `alp-rl train` runtime: one rollout worker thread ([`actor`]) feeding the learner on the main
//! thread, parquet logs, checkpoints ([`checkpoint`]) and exact resume.
//!
//! Versions: the initial weights are version 0; learner step `t` (1-based) trains on batch `t - 1` while
//! holding version `t - 1`, then publishes version `t`. A sample's staleness is `t - 1 - v` for the
//! version `v` that generated it, bounded by `rollout.max_staleness` through the worker's pacing.
pub mod actor;
pub mod checkpoint;
pub mod eval;
pub mod pause;
pub mod preflight;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use alp_envs::Environment;
use alp_learner::{group_advantages, Group, Learner, Sample, TrainablePolicy};
use alp_policy::{CausalLM, LoadOptions};
use alp_rollout::{EpisodeSettings, Trajectory};
use alp_tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use tch::{Device, Kind};

use crate::config::TrainConfig;
use crate::parquet_log::{self, MetricsRow, RolloutRow};
use crate::run_dir::{remove_stale_temps, temp_path, write_bytes_atomic, RunDir};
use actor::{Actor, ActorSettings, RolloutBatch};
use checkpoint::RuntimeState;

/// What `train` was asked to do.
#[derive(Clone)]
pub struct TrainRequest {
    pub config: TrainConfig,
    /// The `[env]` environment (built from the application's registry when the config was loaded).
    pub env: Arc<dyn Environment>,
    pub config_path: PathBuf,
    pub run_dir: PathBuf,
    pub resume: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub first_step: u64,
    pub last_step: u64,
    /// `(step, eval/accuracy)` of the first and the last evaluation, when `[eval]` is set.
    pub first_eval: Option<(u64, f64)>,
    pub last_eval: Option<(u64, f64)>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Creates (fresh run) or checks and reopens (resume) the run directory; writes `config.toml` and
/// `run.json`.
fn prepare_run_dir(req: &TrainRequest, run: &RunDir, config_toml: &str) -> Result<()> {
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
        crate::commands::new_model::write_model(
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

pub fn run(req: TrainRequest) -> Result<TrainSummary> {
    let config = &req.config;
    let run = RunDir::new(&req.run_dir);
    let config_toml = config.to_toml();
    // Refuse a missing model (or budgets it cannot hold) before anything is written, so a typo
    // leaves no run directory behind; then hold the run directory's lock for the whole run.
    preflight::check_model(config, req.env.as_ref(), &req.config_path)?;
    let _lock = preflight::lock_run_dir(&run.root, !req.resume)?;
    prepare_run_dir(&req, &run, &config_toml)?;
    let device = config.model.device.to_tch();
    let mut model_src = initial_model(config, &run)?;
    if let Some(sft) = &config.sft {
        // The warm start: its logs and checkpoints go to RUN/sft/, RL starts from its last model
        // (which is also the reference policy of a KL term).
        let sft_run = RunDir::new(run.root.join("sft"));
        model_src = crate::sft::run(
            config,
            sft,
            req.env.clone(),
            &sft_run,
            &model_src,
            &config_toml,
            device,
        )?.model;
    }

    let train_kind = config.model.train_dtype.kind();
    let inference_kind = config.model.inference_dtype.kind();
    let latest = if req.resume {
        preflight::resume_checkpoint(&run)?
    } else {
        None
    };
    let (weights_dir, state) = match &latest {
        Some((dir, _)) => (dir.join("model"), checkpoint::load_state(dir)?),
        None => {
            if req.resume {
                tracing::warn!(run = %run.root.display(), "no complete checkpoint: starting from step 0");
            }
            (
                model_src.clone(),
                RuntimeState {
                    step: 0,
                    policy_version: 0,
                    seed: config.run.seed,
                    nonfinite_run: 0,
                    nonfinite_total: 0,
                },
            )
        }
    };
    ensure!(
        state.step <= config.run.steps,
        "the run is already at step {} beyond run.steps = {}",
        state.step,
        config.run.steps
    );

    let tokenizer = Tokenizer::from_dir(&model_src)
        .with_context(|| format!("loading the tokenizer of {}", model_src.display()))?;
    let load = |dir: &Path, kind: Kind| {
        CausalLM::load(dir, &LoadOptions { kind, device })
            .with_context(|| format!("loading the model in {}", dir.display()))
    };
    let policy = load(&weights_dir, train_kind)?;
    crate::commands::check_finite(&policy, &weights_dir)?;
    let stop = alp_rollout::default_stop_tokens(&policy, Some(&tokenizer));
    let reference: Option<Box<dyn TrainablePolicy>> = if config.learner.loss.kl_coef > 0.0 {
        Some(Box::new(load(&model_src, train_kind)?))
    } else {
        None
    };
    let mut learner = Learner::new(config.learner_settings(), policy, reference)?;
    if let Some((dir, _)) = &latest {
        learner
            .load_state(&dir.join("learner"))
            .with_context(|| format!("restoring the learner from {}", dir.display()))?;
    }

    let mut metrics_rows = Vec::new();
    if req.resume && run.metrics().exists() {
        metrics_rows = parquet_log::read_metrics(&run.metrics())?;
        // Steps after the checkpoint are redone: drop their rows and rollout files. Without a
        // checkpoint the run restarts from scratch and its step-0 evaluation runs again, so no row
        // survives (a kept one would be duplicated).
        metrics_rows.retain(|r| state.step > 0 && r.step <= state.step);
    }
    // Every rollout file after the checkpoint, also those of a crashed attempt that got further
    // than this run's `run.steps`.
    if run.rollouts_dir().exists() {
        for entry in std::fs::read_dir(run.rollouts_dir())? {
            let path = entry?.path();
            let step = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
                n.strip_prefix("step-")?
                    .strip_suffix(".parquet")?
                    .parse::<u64>()
                    .ok()
            });
            if step.is_some_and(|s| s > state.step) {
                std::fs::remove_file(&path)?;
            }
        }
    }

    let env = req.env.clone();
    let mut params = config.sampling_params();
    params.stop_token_ids = stop.clone();
    let chat_extra = serde_json::to_value(&config.rollout.chat_extra)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let episode = EpisodeSettings {
        max_total_tokens: config.rollout.max_total_tokens,
        chat_extra: chat_extra.clone(),
    };
    let mut evaluator = match &config.eval {
        Some(section) => Some(eval::Evaluator::new(eval::EvaluatorSetup {
            config,
            section,
            env: env.clone(),
            model_dir: &weights_dir,
            tokenizer_dir: &model_src,
            kind: inference_kind,
            device,
            stop_token_ids: stop,
            episode: episode.clone(),
        })?),
        None => None,
    };
    if let (Some(ev), 0) = (evaluator.as_mut(), state.step) {
        // Step 0: the starting point (after the SFT warm start, before any RL update).
        metrics_rows.push(MetricsRow {
            step: 0,
            policy_version: 0,
            values: ev.run(learner.policy(), 0)?,
        });
        parquet_log::write_parquet(
            &run.metrics(),
            &parquet_log::metrics_batch(&metrics_rows)?,
            &config_toml,
        )?;
    }
    let actor = Actor::spawn(ActorSettings {
        model_dir: weights_dir.clone(),
        tokenizer_dir: model_src.clone(),
        inference_kind,
        device,
        engine_batch_size: config.rollout.batch_size,
        env: env.clone(),
        params,
        episode,
        group_size: config.rollout.group_size,
        prompts_per_step: config.rollout.prompts_per_step,
        seed: config.run.seed,
        max_staleness: config.rollout.max_staleness,
        first_batch: state.step,
        end_batch: config.run.steps,
    });

    tracing::info!(
        run = %run.root.display(),
        from_step = state.step,
        steps = config.run.steps,
        correction = %config.learner.correction.kind,
        max_staleness = config.rollout.max_staleness,
        "training"
    );
    let first_step = state.step + 1;
    let mut state = state;
    while state.step < config.run.steps {
        let step = state.step + 1;
        let started = Instant::now();
        let batch = actor.next_batch()?;
        let wait_s = started.elapsed().as_secs_f64();
        tracing::debug!(
            step,
            version = batch.policy_version,
            wait_s,
            "rollout batch received"
        );
        ensure!(
            batch.index == step - 1,
            "rollout batch {} arrived for step {step}",
            batch.index
        );
        let out = train_one(config, &mut learner, &batch, step)?;
        // The update is applied in memory, nothing of it is on disk yet.
        pause::point("update", step);
        let mut values = out.metrics;
        let bad_update = ["loss/total", "grad/norm"]
            .iter()
            .any(|k| values.get(*k).is_some_and(|v| !v.is_finite()))
            || values.get("optim/skipped_steps").is_some_and(|&v| v > 0.0);
        let bad_mu = values.get("rollout/nonfinite_mu").is_some_and(|&v| v > 0.0);
        if bad_update || bad_mu {
            state.nonfinite_run += 1;
            state.nonfinite_total += 1;
            // Say exactly what happened: a non-finite loss or gradient skips the optimizer update;
            // samples with non-finite sampling log-probs are dropped and the rest is trained on.
            let what = match (bad_update, bad_mu) {
                (true, true) => "non-finite loss or gradient (update skipped) and non-finite sampling log-probs (those samples dropped)",
                (true, false) => "non-finite loss or gradient: the optimizer update was skipped",
                _ => "non-finite sampling log-probs: those samples were dropped, the rest trained on",
            };
            tracing::warn!(step, consecutive = state.nonfinite_run, "{what}");
            if state.nonfinite_run >= config.run.max_nonfinite_steps {
                bail!(
                    "{} consecutive steps (up to step {step}) had a non-finite loss, gradient or \
                     sampling log-prob \
                     (run.max_nonfinite_steps = {}); lower learner.optimizer.lr or check the data",
                    state.nonfinite_run,
                    config.run.max_nonfinite_steps
                );
            }
        } else {
            state.nonfinite_run = 0;
        }
        state.step = step;
        state.policy_version = step;
        actor.publish(learner.policy(), step);

        values.insert("train/nonfinite_steps".into(), state.nonfinite_total as f64);
        values.insert("time/rollout_wait_s".into(), wait_s);
        values.insert("time/generate_s".into(), batch.generate_s);
        values.insert("time/weights_wait_s".into(), batch.wait_weights_s);
        values.insert(
            "throughput/rollout_tokens_per_s".into(),
            out.sampled_tokens as f64 / batch.generate_s.max(1e-9),
        );
        parquet_log::write_parquet(
            &run.rollouts(step),
            &parquet_log::rollout_batch(&out.rows)?,
            &config_toml,
        )?;
        let step_s = started.elapsed().as_secs_f64();
        values.insert("time/step_s".into(), step_s);
        values.insert(
            "throughput/samples_per_s".into(),
            out.rows.len() as f64 / step_s.max(1e-9),
        );
        if let Some(ev) = evaluator.as_mut() {
            let every = config.eval.as_ref().map_or(0, |e| e.every);
            if step == config.run.steps || (every > 0 && step.is_multiple_of(every)) {
                values.extend(ev.run(learner.policy(), step)?);
            }
        }
        pause::point("metrics", step);
        tracing::info!("{}", summary_line(step, config.run.steps, &values));
        metrics_rows.push(MetricsRow {
            step,
            policy_version: step,
            values,
        });
        parquet_log::write_parquet(
            &run.metrics(),
            &parquet_log::metrics_batch(&metrics_rows)?,
            &config_toml,
        )?;
        let every = config.run.checkpoint_every;
        if step == config.run.steps || (every > 0 && step.is_multiple_of(every)) {
            let t = Instant::now();
            checkpoint::save(&run, &learner, &tokenizer, &state, config.run.keep)?;
            tracing::debug!(secs = t.elapsed().as_secs_f64(), "checkpoint time");
        }
    }
    drop(actor);
    let evals: Vec<(u64, f64)> = metrics_rows
        .iter()
        .filter_map(|r| r.values.get("eval/accuracy").map(|&a| (r.step, a)))
        .collect();
    Ok(TrainSummary {
        run_dir: run.root.clone(),
        first_step,
        last_step: state.step,
        first_eval: evals.first().copied(),
        last_eval: evals.last().copied(),
    })
}

/// The one-line summary of a step on stderr: a progress bar and the numbers people watch.
fn summary_line(step: u64, steps: u64, m: &BTreeMap<String, f64>) -> String {
    const WIDTH: u64 = 20;
    let done = (step * WIDTH / steps.max(1)) as usize;
    let bar = format!("{}{}", "#".repeat(done), "-".repeat(WIDTH as usize - done));
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    format!(
        "step {step}/{steps} [{bar}] {:.1} samples/s | reward {:.3} | acc {:.3} | loss {:.4} | \
         k3 {:.2e} | staleness {} | {:.2}s",
        get("throughput/samples_per_s"),
        get("reward/mean"),
        get("acc"),
        get("loss/total"),
        get("mismatch/k3"),
        get("staleness/max"),
        get("time/step_s"),
    )
}

/// The learner's side of one step: samples, update, and the rows and metrics to log.
struct StepOutput {
    metrics: BTreeMap<String, f64>,
    rows: Vec<RolloutRow>,
    sampled_tokens: usize,
}

/// Whether a trajectory can be trained on: failed episodes (environment error, non-finite reward)
/// and empty completions are logged but not trained on, nor are samples with a non-finite `mu`
/// (see [`finite_mu`]).
fn trainable(t: &Trajectory) -> bool {
    t.error.is_none()
        && t.reward.is_finite()
        && !t.prompt_ids.is_empty()
        && !t.completion_ids.is_empty()
        && t.loss_mask.len() == t.completion_ids.len()
        && t.mu.len() == t.completion_ids.len()
        && finite_mu(t)
}

/// A non-finite sampling log-prob on a trained token means the inference copy's weights have gone
/// non-finite (a diverged update): the step counts as non-finite.
fn finite_mu(t: &Trajectory) -> bool {
    t.mu.iter()
        .zip(&t.loss_mask)
        .all(|(m, &k)| k == 0 || m.is_finite())
}

fn to_sample(t: &Trajectory) -> Sample {
    Sample {
        prompt_ids: t.prompt_ids.clone(),
        completion_ids: t.completion_ids.clone(),
        loss_mask: t.loss_mask.iter().map(|&m| m != 0).collect(),
        mu: t.mu.clone(),
        reward: t.reward,
        policy_version: t.policy_version,
    }
}

/// Per-token log-probs of every sample's completion under the current weights, unperturbed and without
/// grad, `chunk` samples per forward (the `lp_old` / `lp` columns of the rollout logs).
fn plain_log_probs(
    learner: &Learner<CausalLM>,
    groups: &[Group],
    chunk: usize,
) -> Result<Vec<Vec<f32>>> {
    let samples: Vec<&Sample> = groups.iter().flat_map(|g| &g.samples).collect();
    let mut out = Vec::with_capacity(samples.len());
    for part in samples.chunks(chunk.max(1)) {
        let lp = learner
            .log_probs(part, &alp_policy::NoHooks)?
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        for (i, s) in part.iter().enumerate() {
            let row = lp.get(i as i64).narrow(0, 0, s.completion_ids.len() as i64);
            out.push(Vec::<f32>::try_from(&row.contiguous())?);
        }
    }
    Ok(out)
}

fn train_one(
    config: &TrainConfig,
    learner: &mut Learner<CausalLM>,
    batch: &RolloutBatch,
    step: u64,
) -> Result<StepOutput> {
    let learner_version = step - 1;
    let max_staleness = config.rollout.max_staleness;
    let mut groups = Vec::new();
    let mut rows = Vec::new();
    let (mut staleness_sum, mut staleness_max, mut trained) = (0.0, 0u64, 0usize);
    let (mut correct, mut total, mut failed, mut sampled_tokens) = (0usize, 0usize, 0usize, 0usize);
    let mut nonfinite_mu = 0usize;
    // Row index of each trained sample, in the order the groups hold them.
    let mut trained_rows = Vec::new();
    for (g, trajectories) in batch.groups.iter().enumerate() {
        let keep: Vec<&Trajectory> = trajectories.iter().filter(|t| trainable(t)).collect();
        let rewards: Vec<f64> = keep.iter().map(|t| t.reward).collect();
        let advantages = group_advantages(&rewards, config.learner.advantage);
        let mut adv = advantages.iter();
        let mut samples = Vec::new();
        for t in trajectories {
            let staleness = learner_version
                .checked_sub(t.policy_version)
                .with_context(|| {
                    format!(
                        "a sample of version {} is newer than the learner ({learner_version})",
                        t.policy_version
                    )
                })?;
            // Never train on a sample older than the bound (the worker's pacing makes this an
            // invariant; a violation is a bug, not something to train through).
            ensure!(
                staleness <= max_staleness,
                "a sample of version {} is {staleness} versions stale at step {step} \
                 (rollout.max_staleness = {max_staleness})",
                t.policy_version
            );
            total += 1;
            correct += t.correct as usize;
            sampled_tokens += t.loss_mask.iter().filter(|&&m| m != 0).count();
            let advantage = if trainable(t) {
                samples.push(to_sample(t));
                trained_rows.push(rows.len());
                staleness_sum += staleness as f64;
                staleness_max = staleness_max.max(staleness);
                trained += 1;
                *adv.next().expect("one advantage per kept sample")
            } else {
                if finite_mu(t) {
                    failed += 1;
                } else {
                    nonfinite_mu += 1;
                }
                0.0
            };
            rows.push(RolloutRow {
                step,
                policy_version: t.policy_version,
                worker: 0,
                env: config.env.name.clone(),
                example_id: t.example_id.clone(),
                group_id: batch.index * config.rollout.prompts_per_step as u64 + g as u64,
                prompt_text: t.prompt_text.clone(),
                completion_text: t.completion_text.clone(),
                prompt_ids: t.prompt_ids.clone(),
                completion_ids: t.completion_ids.clone(),
                loss_mask: t.loss_mask.clone(),
                mu: t.mu.clone(),
                lp_old: None,
                lp: None,
                reward: t.reward,
                advantage,
                correct: t.correct,
                num_turns: t.num_turns,
                finish_reason: t.finish_reason.clone(),
                staleness,
                error: t.error.clone(),
            });
        }
        if !samples.is_empty() {
            groups.push(Group { samples });
        }
    }
    let log_lp = config.run.log_logprobs && !groups.is_empty();
    let chunk = config.learner.micro_batch_size;
    if log_lp {
        for (row, lp) in trained_rows
            .iter()
            .zip(plain_log_probs(learner, &groups, chunk)?)
        {
            rows[*row].lp_old = Some(lp);
        }
    }
    // The learner splits the batch into `mini_batches` parts; with fewer trainable samples than that
    // (failed episodes are dropped) the step is skipped rather than failing the run.
    let trainable_samples: usize = groups.iter().map(|g| g.samples.len()).sum();
    let mut metrics = if trainable_samples < config.learner.mini_batches {
        tracing::warn!(
            step,
            trainable_samples,
            mini_batches = config.learner.mini_batches,
            "too few trainable samples in this step (failed episodes are dropped): no update"
        );
        BTreeMap::new()
    } else {
        learner
            .train_step(&groups)
            .with_context(|| format!("learner step {step}"))?
    };
    if log_lp {
        for (row, lp) in trained_rows
            .iter()
            .zip(plain_log_probs(learner, &groups, chunk)?)
        {
            rows[*row].lp = Some(lp);
        }
    }
    metrics.insert("acc".into(), correct as f64 / total.max(1) as f64);
    metrics.insert(
        "staleness/mean".into(),
        staleness_sum / trained.max(1) as f64,
    );
    metrics.insert("staleness/max".into(), staleness_max as f64);
    metrics.insert("rollout/failed_episodes".into(), failed as f64);
    metrics.insert("rollout/nonfinite_mu".into(), nonfinite_mu as f64);
    Ok(StepOutput {
        metrics,
        rows,
        sampled_tokens,
    })
}
