//! The `alp-rl train` runtime: one rollout worker thread ([`rollout_worker`]) feeding the learner on the main
//! thread, parquet logs, checkpoints ([`checkpoint`]) and exact resume. The loop drives either
//! learner through one seam ([`learners::RunLearner`]); what a step does is the learner's business.
//!
//! Versions: the initial weights are version 0; learner step `t` (1-based) trains on batch `t - 1` while
//! holding version `t - 1`, then publishes version `t`. A sample's staleness is `t - 1 - v` for the
//! version `v` that generated it, bounded by `rollout.max_staleness` through the worker's pacing.
pub mod checkpoint;
pub mod eval;
pub mod learners;
pub mod messages;
pub mod pause;
pub mod preflight;
pub mod rollout_backend;
pub mod rollout_worker;
pub mod rows;
pub mod run_files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alp_envs::Environment;
use alp_learner::metric_names as names;
use alp_learner::{Learner, TrainablePolicy};
use alp_policy::{CausalLM, LoadOptions};
use alp_rollout::EpisodeSettings;
use alp_tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use tch::Kind;

use crate::config::TrainConfig;
use crate::parquet_log::{self, MetricsRow};
use crate::run_dir::RunDir;
use checkpoint::RuntimeState;
use learners::{es::Eggroll, pg::PolicyGradient, RunLearner};
use rollout_backend::BackendSettings;
use rollout_worker::{RolloutWorker, RolloutWorkerSettings};
pub(crate) use run_files::{initial_model, write_run_files};

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

/// The learner of `[learner] kind`, on the weights in `weights_dir` (the reference policy of a KL
/// term is the run's starting model, `model_src`).
fn build_learner(
    config: &TrainConfig,
    policy: CausalLM,
    model_src: &Path,
    load: &dyn Fn(&Path, Kind) -> Result<CausalLM>,
) -> Result<Box<dyn RunLearner>> {
    if let Some(settings) = config.eggroll_settings() {
        return Ok(Box::new(Eggroll::new(
            config,
            settings,
            config.learner.seed,
            policy,
        )?));
    }
    let reference: Option<Box<dyn TrainablePolicy>> = if config.learner.loss.kl_coef > 0.0 {
        Some(Box::new(load(model_src, config.model.train_dtype.kind())?))
    } else {
        None
    };
    let learner = Learner::new(config.learner_settings(), policy, reference)?;
    Ok(Box::new(PolicyGradient::new(config, learner)))
}

pub fn run(req: TrainRequest) -> Result<TrainSummary> {
    let config = &req.config;
    let run = RunDir::new(&req.run_dir);
    let config_toml = config.to_toml();
    // Refuse a missing model (or budgets it cannot hold) before anything is written, so a typo
    // leaves no run directory behind; then hold the run directory's lock for the whole run.
    preflight::check_model(config, req.env.as_ref(), &req.config_path)?;
    let _lock = preflight::lock_run_dir(&run.root, !req.resume)?;
    run_files::prepare_run_dir(&req, &run, &config_toml)?;
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
        )?
        .model;
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
        CausalLM::load(
            dir,
            &LoadOptions {
                kind,
                device,
                ..LoadOptions::default()
            },
        )
        .with_context(|| format!("loading the model in {}", dir.display()))
    };
    let policy = load(&weights_dir, train_kind)?;
    crate::commands::check_finite(&policy, &weights_dir)?;
    let stop = alp_rollout::default_stop_tokens(&policy, Some(&tokenizer));
    let mut learner = build_learner(config, policy, &model_src, &load)?;
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
    remove_rollouts_after(&run, state.step)?;

    let env = req.env.clone();
    let mut params = config.sampling_params();
    if let Some(es) = config.eggroll_settings() {
        // Members explore through their weights; their own sampling is greedy by default.
        params.greedy = es.temperature == 0.0;
        if es.temperature > 0.0 {
            params.temperature = es.temperature;
        }
    }
    params.stop_token_ids = stop.clone();
    let chat_extra = serde_json::to_value(&config.rollout.chat_extra)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let episode = EpisodeSettings {
        max_total_tokens: config.rollout.max_total_tokens,
        chat_extra: chat_extra.clone(),
    };
    let evaluation = match &config.eval {
        Some(section) => Some(eval::Evaluation::new(
            config,
            section,
            env.clone(),
            stop,
            episode.clone(),
        )?),
        None => None,
    };
    let evaluates = evaluation.is_some();
    let eval_every = config.eval.as_ref().map_or(0, |e| e.every);
    // Step 0: the starting point (after the SFT warm start, before any RL update).
    let evaluate_first = evaluates && state.step == 0;
    let actor = RolloutWorker::spawn(RolloutWorkerSettings {
        model_dir: weights_dir.clone(),
        tokenizer_dir: model_src.clone(),
        backend: match config.vllm_settings(&run.root) {
            None => BackendSettings::Local {
                kind: inference_kind,
                device,
                bf16: config.model.bf16_compute,
                batch_size: config.rollout.batch_size,
            },
            Some(settings) => BackendSettings::Vllm {
                settings: Box::new(settings),
                logprob_mode: config.rollout.logprob_mode,
                reference_kind: train_kind,
            },
        },
        env: env.clone(),
        params,
        episode,
        group_size: config.rollout.group_size,
        prompts_per_step: config.rollout.prompts_per_step,
        seed: config.run.seed,
        max_staleness: config.rollout.max_staleness,
        first_batch: state.step,
        end_batch: config.run.steps,
        population: learner.batch_population(),
        evaluation,
        evaluate_first,
    });
    if evaluate_first {
        metrics_rows.push(MetricsRow {
            step: 0,
            policy_version: 0,
            values: actor.evaluation()?,
        });
        parquet_log::write_parquet(
            &run.metrics(),
            &parquet_log::metrics_batch(&metrics_rows)?,
            &config_toml,
        )?;
    }

    tracing::info!(
        run = %run.root.display(),
        from_step = state.step,
        steps = config.run.steps,
        learner = %config.learner_kind(),
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
        let out = learner.train(&batch, step)?;
        // The update is applied in memory, nothing of it is on disk yet.
        pause::point("update", step);
        let mut values = out.metrics;
        if out.bad_update || out.bad_samples {
            state.nonfinite_run += 1;
            state.nonfinite_total += 1;
            // Say exactly what happened: a non-finite loss or gradient skips the optimizer update;
            // samples with non-finite sampling log-probs are dropped and the rest is trained on.
            let what = match (out.bad_update, out.bad_samples) {
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
        let evaluate = evaluates && due(step, eval_every, config.run.steps);
        actor.publish(learner.policy(), step, evaluate);

        values.insert(
            names::TRAIN_NONFINITE_STEPS.into(),
            state.nonfinite_total as f64,
        );
        values.insert(names::TIME_ROLLOUT_WAIT_S.into(), wait_s);
        values.insert(names::TIME_GENERATE_S.into(), batch.generate_s);
        values.insert(names::TIME_WEIGHTS_WAIT_S.into(), batch.wait_weights_s);
        values.extend(backend_metrics(&batch));
        values.insert(
            names::THROUGHPUT_ROLLOUT_TOKENS_PER_S.into(),
            out.sampled_tokens as f64 / batch.generate_s.max(1e-9),
        );
        parquet_log::write_parquet(
            &run.rollouts(step),
            &parquet_log::rollout_batch(&out.rows)?,
            &config_toml,
        )?;
        let step_s = started.elapsed().as_secs_f64();
        values.insert(names::TIME_STEP_S.into(), step_s);
        values.insert(
            names::THROUGHPUT_SAMPLES_PER_S.into(),
            out.rows.len() as f64 / step_s.max(1e-9),
        );
        if evaluate {
            values.extend(actor.evaluation()?);
        }
        pause::point("metrics", step);
        tracing::info!(
            "{}",
            summary_line(step, config.run.steps, &values, learner.watched_metrics())
        );
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
        if due(step, config.run.checkpoint_every, config.run.steps) {
            let t = Instant::now();
            checkpoint::writer(&run, config.run.keep).save(&state, |staging| {
                checkpoint::write_model(staging, learner.policy(), &tokenizer)?;
                pause::point("checkpoint", state.step);
                learner
                    .save_state(&staging.join("learner"))
                    .context("saving the learner state")
            })?;
            tracing::debug!(secs = t.elapsed().as_secs_f64(), "checkpoint time");
        }
    }
    drop(actor);
    let evals: Vec<(u64, f64)> = metrics_rows
        .iter()
        .filter_map(|r| r.values.get(names::EVAL_ACCURACY).map(|&a| (r.step, a)))
        .collect();
    Ok(TrainSummary {
        run_dir: run.root.clone(),
        first_step,
        last_step: state.step,
        first_eval: evals.first().copied(),
        last_eval: evals.last().copied(),
    })
}

/// The vLLM sync and server metrics of a batch (none for the local engine).
fn backend_metrics(batch: &messages::RolloutBatch) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if let Some(sync) = &batch.sync {
        let probes = &sync.probes;
        let most =
            |f: fn(&alp_rollout::ProbeReport) -> f64| probes.iter().map(f).fold(f64::NAN, f64::max);
        m.insert(names::SYNC_S.into(), sync.seconds);
        m.insert(names::SYNC_SERVERS_PROBED.into(), probes.len() as f64);
        m.insert(
            names::SYNC_PROBE_MAX_ABS_DIFF.into(),
            most(|p| p.max_abs_logprob_diff),
        );
        m.insert(
            names::SYNC_PROBE_MEAN_ABS_DIFF.into(),
            most(|p| p.mean_abs_logprob_diff),
        );
    }
    if !batch.servers.is_empty() {
        let count = |f: fn(&alp_vllm::ReplicaStats) -> usize| {
            batch.servers.iter().map(f).sum::<usize>() as f64
        };
        m.insert(
            names::VLLM_SERVERS_SERVING.into(),
            count(|s| usize::from(s.serving)),
        );
        m.insert(names::VLLM_TAKEN_OUT.into(), count(|s| s.taken_out));
        m.insert(names::VLLM_RECOVERED.into(), count(|s| s.recovered));
    }
    m
}

/// Every rollout file after step `step` (redone on resume), also those of a crashed attempt that
/// got further than this run's `run.steps`.
fn remove_rollouts_after(run: &RunDir, step: u64) -> Result<()> {
    if !run.rollouts_dir().exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(run.rollouts_dir())? {
        let path = entry?.path();
        let file_step = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            n.strip_prefix("step-")?
                .strip_suffix(".parquet")?
                .parse::<u64>()
                .ok()
        });
        if file_step.is_some_and(|s| s > step) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Whether something done every `every` steps (0: never) and always at the `last` step is due at
/// `step` (evaluation, RL and SFT checkpoints).
pub(crate) fn due(step: u64, every: u64, last: u64) -> bool {
    step == last || (every > 0 && step.is_multiple_of(every))
}

/// The one-line summary of a step on stderr: a progress bar and the numbers people watch.
fn summary_line(
    step: u64,
    steps: u64,
    m: &BTreeMap<String, f64>,
    learner_metrics: &[(&str, &str)],
) -> String {
    const WIDTH: u64 = 20;
    let done = (step * WIDTH / steps.max(1)) as usize;
    let bar = format!("{}{}", "#".repeat(done), "-".repeat(WIDTH as usize - done));
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let learner: String = learner_metrics
        .iter()
        .map(|(label, key)| format!(" | {label} {:.3e}", get(key)))
        .collect();
    format!(
        "step {step}/{steps} [{bar}] {:.1} samples/s | reward {:.3} | acc {:.3}{learner} | \
         staleness {} | {:.2}s",
        get(names::THROUGHPUT_SAMPLES_PER_S),
        get(names::REWARD_MEAN),
        get(names::ACC),
        get(names::STALENESS_MAX),
        get(names::TIME_STEP_S),
    )
}
