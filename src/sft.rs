//! The supervised phase (`alp-rl sft`, and the `[sft]` warm start of `alp-rl train`) in a run
//! directory: the training itself (data, tokenisation, loss, optimizer) is [`alp_learner::sft`]; this
//! driver loads the model and the data, logs `metrics.parquet` (one row every `sft.log_every` steps:
//! `sft/loss`, `sft/tokens`, ...), writes `checkpoints/step-N/` (`model/` in HF layout and `state.json`)
//! through the shared [`CheckpointWriter`], and reuses the final model of a phase already done.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alp_envs::Environment;
use alp_learner::metric_names as names;
use alp_learner::sft::{check_file, SftLearner, SftSettings, SftSource};
use alp_policy::{CausalLM, LoadOptions};
use alp_tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::Device;

use crate::checkpoint::{write_model, CheckpointState, CheckpointWriter, KEEP_ALL};
use crate::config::{SftSection, TrainConfig};
use crate::parquet_log::{self, MetricsRow};
use crate::run_dir::RunDir;

/// An SFT checkpoint's `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftState {
    /// Optimizer steps completed.
    pub step: u64,
    /// `sft.seed`, which orders the examples.
    pub seed: u64,
}

impl CheckpointState for SftState {
    fn step(&self) -> u64 {
        self.step
    }
}

/// The learner's settings of an `[sft]` section.
pub fn settings(sft: &SftSection) -> SftSettings {
    SftSettings {
        steps: sft.steps,
        lr: sft.lr,
        weight_decay: sft.weight_decay,
        warmup_steps: sft.warmup_steps,
        min_lr_ratio: sft.min_lr_ratio,
        max_grad_norm: sft.max_grad_norm,
    }
}

/// The examples of `[sft]`: the rows of `sft.data` (tokenised now), else the environment's worked
/// conversations.
pub fn source(
    sft: &SftSection,
    env: Arc<dyn Environment>,
    tokenizer: &Tokenizer,
    extra: &Map<String, Value>,
) -> Result<SftSource> {
    Ok(match &sft.data {
        Some(path) => SftSource::from_file(path, tokenizer, extra)?,
        None => SftSource::Env(env),
    })
}

/// Reads and tokenises the `sft.data` file (when set) before any run file is written, so a bad row, or
/// one longer than the model's context, is refused by its `file:line` with nothing to clean up.
pub fn check_data(
    sft: &SftSection,
    tokenizer: &Tokenizer,
    extra: &Map<String, Value>,
    context: usize,
) -> Result<()> {
    match &sft.data {
        Some(path) => Ok(check_file(path, tokenizer, extra, context)?),
        None => Ok(()),
    }
}

/// What an SFT phase left behind.
#[derive(Debug, Clone)]
pub struct SftSummary {
    /// The fine-tuned model (HF layout).
    pub model: PathBuf,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Runs `sft.steps` steps from the model in `model_src` and writes the logs and checkpoints into `run`.
/// A phase whose last checkpoint is already there (a resumed run) is not redone.
pub fn run(
    config: &TrainConfig,
    sft: &SftSection,
    env: Arc<dyn Environment>,
    run: &RunDir,
    model_src: &Path,
    config_toml: &str,
    device: Device,
) -> Result<SftSummary> {
    let final_model = run.checkpoint(sft.steps).join("model");
    if final_model.join("config.json").exists() {
        tracing::info!(model = %final_model.display(), "SFT already done: reusing its model");
        return Ok(SftSummary {
            model: final_model,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
        });
    }
    let tokenizer = Tokenizer::from_dir(model_src)
        .with_context(|| format!("loading the tokenizer of {}", model_src.display()))?;
    let kind = config.model.train_dtype.kind();
    let opts = LoadOptions {
        kind,
        device,
        ..LoadOptions::default()
    };
    let policy = CausalLM::load(model_src, &opts)
        .with_context(|| format!("loading the model in {}", model_src.display()))?;
    let extra = serde_json::to_value(&config.rollout.chat_extra)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let source = source(sft, env, &tokenizer, &extra)?;
    // Only once the data has loaded: a bad file leaves nothing that would refuse a rerun.
    std::fs::create_dir_all(run.checkpoints_dir())
        .with_context(|| format!("cannot create {}", run.checkpoints_dir().display()))?;
    // SFT has no `keep`: every checkpoint it writes stays.
    let checkpoints = CheckpointWriter::new(run, KEEP_ALL);
    let mut learner = SftLearner::new(&settings(sft), policy);
    tracing::info!(steps = sft.steps, batch = sft.batch_size, lr = sft.lr, run = %run.root.display(), "supervised fine-tuning");
    let mut rows = Vec::new();
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let (mut loss_sum, mut tokens_sum, mut n) = (0.0, 0usize, 0u64);
    let started = Instant::now();
    for step in 1..=sft.steps {
        let batch = source.batch(sft.seed, step, sft.batch_size, &tokenizer, &extra)?;
        let out = learner.train_step(&batch)?;
        ensure!(
            out.applied,
            "SFT step {step}: non-finite loss ({}) or gradient; lower sft.lr",
            out.loss
        );
        if step == 1 {
            first_loss = out.loss;
        }
        last_loss = out.loss;
        loss_sum += out.loss;
        tokens_sum += out.tokens;
        n += 1;
        if step % sft.log_every == 0 || step == sft.steps {
            let mut values = BTreeMap::new();
            values.insert(names::SFT_LOSS.into(), loss_sum / n as f64);
            values.insert(names::SFT_TOKENS.into(), tokens_sum as f64);
            values.insert(names::SFT_LR.into(), out.lr);
            values.insert(names::GRAD_NORM.into(), out.grad_norm);
            values.insert(
                names::TIME_ELAPSED_S.into(),
                started.elapsed().as_secs_f64(),
            );
            tracing::info!(
                "sft step {step}/{} | loss {:.4} | tokens {tokens_sum} | lr {:.2e} | {:.1}s",
                sft.steps,
                loss_sum / n as f64,
                out.lr,
                started.elapsed().as_secs_f64()
            );
            rows.push(MetricsRow {
                step,
                policy_version: step,
                values,
            });
            parquet_log::write_parquet(
                &run.metrics(),
                &parquet_log::metrics_batch(&rows)?,
                config_toml,
            )?;
            (loss_sum, tokens_sum, n) = (0.0, 0, 0);
        }
        if crate::train::due(step, sft.checkpoint_every, sft.steps) {
            let state = SftState {
                step,
                seed: sft.seed,
            };
            checkpoints.save(&state, |staging| {
                write_model(staging, learner.policy(), &tokenizer)
            })?;
        }
    }
    Ok(SftSummary {
        model: final_model,
        first_loss,
        last_loss,
    })
}
