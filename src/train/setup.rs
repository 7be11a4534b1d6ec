//! Setting a run up, in the order that leaves nothing behind on a refusal: check the model and budgets,
//! take the run directory, warm-start, find where to resume, build the learner, start the rollout
//! worker and take the step-0 evaluation. What comes out is a [`Session`] that the loop steps.
use std::path::{Path, PathBuf};

use alp_learner::{PgLearner, TrainablePolicy};
use alp_rollout::EpisodeSettings;
use alp_tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};

use super::learners::{es::Eggroll, pg::PolicyGradient, RunLearner};
use super::ranks::Ranks;
use super::rollout_backend::BackendSettings;
use super::rollout_worker::{RolloutWorker, RolloutWorkerSettings};
use super::run_state::{self, RuntimeState};
use super::session::Session;
use super::{eval, preflight, run_files, TrainRequest};
use crate::config::{BackendKind, TrainConfig};
use crate::models::{ModelFactory, ModelRole};
use crate::parquet_log::{self, MetricsRow};
use crate::run_dir::RunDir;

/// Everything before the first RL step.
pub(super) fn start(req: &TrainRequest) -> Result<Session<'_>> {
    let config = &req.config;
    let ranks = &req.ranks;
    let run = RunDir::new(&req.run_dir);
    let config_toml = config.to_toml();
    // Refuse a missing model (or budgets it cannot hold) before anything is written, so a typo
    // leaves no run directory behind; then hold the run directory's lock for the whole run. Rank 0
    // alone writes the run directory; the others read it once it is ready.
    preflight::check_model(config, req.env.as_ref(), &req.config_path)?;
    super::ranks_check::check_config(config, ranks)?;
    super::ranks_check::agree_on_config(ranks, &config_toml)?;
    let (lock, made) = if ranks.is_leader() {
        let lock = preflight::lock_run_dir(&run.root, !req.resume)?;
        run_files::prepare_run_dir(req, &run, &config_toml)?;
        (Some(lock), Some(starting_model(req, &run, &config_toml)?))
    } else {
        wait_for_warm_start(config, &run);
        (None, None)
    };
    ranks.barrier("to prepare the run directory")?;
    // The other ranks find the starting model rank 0 made (a warm start's is found done and reused).
    let model_src = match made {
        Some(model) => model,
        None => starting_model(req, &run, &config_toml)?,
    };
    let (latest, weights_dir, state) = resume_point(req, &run, &model_src)?;
    super::ranks_check::agree_on_start(ranks, &weights_dir, state.step)?;

    let tokenizer = Tokenizer::from_dir(&model_src)
        .with_context(|| format!("loading the tokenizer of {}", model_src.display()))?;
    let models = ModelFactory::for_run(config);
    let policy = models.load(ModelRole::Policy, &weights_dir)?;
    let stop = alp_rollout::default_stop_tokens(&policy, Some(&tokenizer));
    let mut learner = build_learner(config, policy, &model_src, &models, ranks)?;
    if let Some(dir) = &latest {
        learner
            .load_state(&dir.join("learner"))
            .with_context(|| format!("restoring the learner from {}", dir.display()))?;
    }
    let metrics_rows = if ranks.is_leader() {
        let rows = surviving_metrics(req, &run, &state)?;
        super::logs::remove_rollouts_after(&run, state.step)?;
        rows
    } else {
        Vec::new()
    };

    // Rank 0 evaluates (on its rollout worker), for every rank.
    let evaluates = config.eval.is_some() && ranks.is_leader();
    // Step 0: the starting point (after the SFT warm start, before any RL update).
    let evaluate_first = evaluates && state.step == 0;
    let worker = spawn_rollout_worker(
        req,
        &run,
        &weights_dir,
        &model_src,
        stop,
        &*learner,
        &state,
        evaluate_first,
    )?;
    let mut session = Session {
        config,
        run,
        config_toml,
        tokenizer,
        learner,
        worker,
        first_step: state.step + 1,
        state,
        metrics_rows,
        evaluates,
        ranks: ranks.clone(),
        _lock: lock,
    };
    if evaluate_first {
        let values = session.worker.evaluation()?;
        session.metrics_rows.push(MetricsRow {
            step: 0,
            policy_version: 0,
            values,
        });
        session.write_metrics()?;
    }
    Ok(session)
}

/// The model RL starts from: the config's, or the last model of an `[sft]` warm start (its logs and
/// checkpoints go to RUN/sft/; it is also the reference policy of a KL term).
fn starting_model(req: &TrainRequest, run: &RunDir, config_toml: &str) -> Result<PathBuf> {
    let config = &req.config;
    let model_src = run_files::initial_model(config, run)?;
    let Some(sft) = &config.sft else {
        return Ok(model_src);
    };
    let sft_run = RunDir::new(run.root.join("sft"));
    Ok(crate::sft::run(
        config,
        sft,
        req.env.clone(),
        &sft_run,
        &model_src,
        config_toml,
    )?
    .model)
}

/// On a rank other than 0 of a run with `[sft]`: waits until rank 0's warm start has written its
/// last checkpoint (it may take far longer than a collective's timeout, so this rank watches the
/// run directory instead of waiting in a barrier; if rank 0 dies, the launcher ends this rank).
fn wait_for_warm_start(config: &TrainConfig, run: &RunDir) {
    let Some(sft) = &config.sft else { return };
    let done = RunDir::new(run.root.join("sft"))
        .checkpoint(sft.steps)
        .join("model")
        .join("config.json");
    let started = std::time::Instant::now();
    let mut told = 0;
    while !done.exists() {
        let minutes = started.elapsed().as_secs() / 60;
        if minutes > told {
            told = minutes;
            tracing::info!(minutes, "waiting for rank 0's SFT warm start");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Where the run continues: the latest complete checkpoint (its directory), the weights to load and
/// the runtime state; a fresh run starts from `model_src` at step 0.
fn resume_point(
    req: &TrainRequest,
    run: &RunDir,
    model_src: &Path,
) -> Result<(Option<PathBuf>, PathBuf, RuntimeState)> {
    let config = &req.config;
    let latest = if req.resume {
        preflight::resume_checkpoint(run)?
    } else {
        None
    };
    let (weights_dir, state) = match &latest {
        Some((dir, _)) => (dir.join("model"), run_state::load_state(dir)?),
        None => {
            if req.resume {
                tracing::warn!(run = %run.root.display(), "no complete checkpoint: starting from step 0");
            }
            (
                model_src.to_path_buf(),
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
    Ok((latest.map(|(dir, _)| dir), weights_dir, state))
}

/// The learner of `[learner] kind`, on `policy` (the reference policy of a KL term is the run's
/// starting model, `model_src`).
fn build_learner(
    config: &TrainConfig,
    policy: alp_policy::CausalLM,
    model_src: &Path,
    models: &ModelFactory,
    ranks: &Ranks,
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
        Some(Box::new(models.load(ModelRole::Reference, model_src)?))
    } else {
        None
    };
    let model_config = policy.config().clone();
    let (learner, adapter_params) = match &config.model.lora {
        None => (
            PgLearner::new(config.learner_settings(), policy, reference)?,
            None,
        ),
        Some(lora) => {
            // A fresh adapter; a resumed run then loads the trained one from its learner state.
            let adapter = lora.new_adapter(&policy, model_src)?;
            let params = adapter
                .named_tensors()
                .iter()
                .map(|(_, t)| t.numel() as u64)
                .sum();
            let learner =
                PgLearner::with_adapter(config.learner_settings(), policy, reference, adapter)?;
            (learner, Some(params))
        }
    };
    let learner = match ranks.gradient_sync() {
        Some(sync) => learner.with_gradient_sync(sync),
        None => learner,
    };
    let estimate = super::memory_plan::run_estimate(config, &model_config, adapter_params);
    tracing::info!(%estimate, "memory estimate of an RL step (the measured peak is memory/peak_rss_gb)");
    Ok(Box::new(PolicyGradient::new(config, learner, ranks)))
}

/// The metrics rows a resumed run keeps: steps after the checkpoint are redone, so their rows go (and
/// their rollout files, [`super::logs::remove_rollouts_after`]). Without a checkpoint the run restarts
/// from scratch and its step-0 evaluation runs again, so no row survives (a kept one would be
/// duplicated).
fn surviving_metrics(
    req: &TrainRequest,
    run: &RunDir,
    state: &RuntimeState,
) -> Result<Vec<MetricsRow>> {
    if !(req.resume && run.metrics().exists()) {
        return Ok(Vec::new());
    }
    let mut rows = parquet_log::read_metrics(&run.metrics())?;
    rows.retain(|r| state.step > 0 && r.step <= state.step);
    Ok(rows)
}

/// Starts the rollout worker on `weights_dir`: the backend of `rollout.backend`, the sampling and
/// episode settings, the learner's population (EGGROLL) and the evaluation it runs.
#[allow(clippy::too_many_arguments)]
fn spawn_rollout_worker(
    req: &TrainRequest,
    run: &RunDir,
    weights_dir: &Path,
    model_src: &Path,
    stop: Vec<i64>,
    learner: &dyn RunLearner,
    state: &RuntimeState,
    evaluate_first: bool,
) -> Result<RolloutWorker> {
    let config = &req.config;
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
    let episode = EpisodeSettings {
        max_total_tokens: config.rollout.max_total_tokens,
        chat_extra: config.rollout.chat_extra_json(),
    };
    let evaluation = match config.eval.as_ref().filter(|_| req.ranks.is_leader()) {
        Some(section) => Some(eval::Evaluation::new(
            config,
            section,
            env.clone(),
            stop,
            episode.clone(),
        )?),
        None => None,
    };
    let models = ModelFactory::for_run(config);
    Ok(RolloutWorker::spawn(RolloutWorkerSettings {
        model_dir: weights_dir.to_path_buf(),
        tokenizer_dir: model_src.to_path_buf(),
        backend: match config.vllm_settings(&run.root) {
            None => BackendSettings::Local {
                models,
                batch_size: config.rollout.batch_size,
            },
            Some(settings) => BackendSettings::Vllm {
                settings: Box::new(settings),
                logprob_mode: config.rollout.logprob_mode,
                models,
            },
        },
        env,
        params,
        episode,
        group_size: config.rollout.group_size,
        prompts_per_step: config.rollout.prompts_per_step,
        rank: req.ranks.rank(),
        world_size: req.ranks.world_size(),
        seed: config.run.seed,
        max_staleness: config.rollout.max_staleness,
        first_batch: state.step,
        end_batch: config.run.steps,
        population: learner.batch_population(),
        evaluation,
        evaluate_first,
        initial_update: match learner.initial_update(state.step)? {
            // The local engine takes the learner's weights through the one install path before the
            // first batch too, so every batch's `sync/*` (a resumed run's first included) is an
            // install of the same kind.
            None if config.rollout.backend == BackendKind::Local => Some(
                alp_rollout::WeightUpdate::copy_of(learner.policy(), state.step),
            ),
            other => other,
        },
    }))
}
