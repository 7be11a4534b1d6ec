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
use alp_learner::sft::{check_file, SftLearner, SftSettings, SftSource, SftStep};
use alp_policy::CausalLM;
use alp_tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::checkpoint_writer::{write_model, CheckpointState, CheckpointWriter, KEEP_ALL};
use crate::config::{SftSection, TrainConfig};
use crate::models::{ModelFactory, ModelRole};
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

/// The model of an SFT checkpoint in `staging/model/`. With a LoRA adapter: the adapter merged into
/// the weights (the model RL continues from, with a fresh adapter of its own), and the adapter itself
/// in PEFT's format in `staging/adapter/`; the learner's frozen weights are put back bit for bit.
fn write_sft_model(
    staging: &Path,
    learner: &SftLearner<CausalLM>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let policy = learner.policy();
    let Some(adapter) = learner.adapter() else {
        return write_model(staging, policy, tokenizer);
    };
    adapter
        .save(&staging.join("adapter"))
        .context("saving the SFT adapter")?;
    let merged = adapter
        .merged_weights(policy)
        .context("merging the SFT adapter")?;
    let names: std::collections::HashSet<&str> = merged.iter().map(|(n, _)| n.as_str()).collect();
    let originals: Vec<(String, tch::Tensor)> = tch::no_grad(|| {
        policy
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| names.contains(n.as_str()))
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    });
    policy.copy_named_weights_subset(&merged)?;
    let written = write_model(staging, policy, tokenizer);
    policy.copy_named_weights_subset(&originals)?;
    written
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
    let policy = ModelFactory::for_run(config).load(ModelRole::Policy, model_src)?;
    let extra = config.rollout.chat_extra_json();
    let source = source(sft, env, &tokenizer, &extra)?;
    // The adapter (its targets checked against the model) before anything is written, too.
    let lora = config.model.lora.as_ref().filter(|_| sft.lora);
    let learner = match lora {
        None => SftLearner::new(&settings(sft), policy),
        Some(lora) => {
            let adapter = lora.new_adapter(&policy, model_src)?;
            SftLearner::with_adapter(&settings(sft), policy, adapter)
        }
    };
    // Only once the data has loaded: a bad file leaves nothing that would refuse a rerun.
    std::fs::create_dir_all(run.checkpoints_dir())
        .with_context(|| format!("cannot create {}", run.checkpoints_dir().display()))?;
    let phase = Phase {
        sft,
        run,
        config_toml,
        tokenizer: &tokenizer,
        extra: &extra,
        // SFT has no `keep`: every checkpoint it writes stays.
        checkpoints: CheckpointWriter::new(run, KEEP_ALL),
    };
    tracing::info!(steps = sft.steps, batch = sft.batch_size, lr = sft.lr, run = %run.root.display(), "supervised fine-tuning");
    let (first_loss, last_loss) = phase.train(learner, &source)?;
    Ok(SftSummary {
        model: final_model,
        first_loss,
        last_loss,
    })
}

/// What the steps of one SFT phase share.
struct Phase<'a> {
    sft: &'a SftSection,
    run: &'a RunDir,
    config_toml: &'a str,
    tokenizer: &'a Tokenizer,
    extra: &'a Map<String, Value>,
    checkpoints: CheckpointWriter<'a>,
}

/// The loss and tokens of the steps since the last metrics row.
#[derive(Default)]
struct LogWindow {
    loss_sum: f64,
    tokens_sum: usize,
    steps: u64,
    rows: Vec<MetricsRow>,
}

impl Phase<'_> {
    /// Every step of the phase; the first and last step's loss.
    fn train(&self, mut learner: SftLearner<CausalLM>, source: &SftSource) -> Result<(f64, f64)> {
        let sft = self.sft;
        let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
        let mut window = LogWindow::default();
        let started = Instant::now();
        let progress = crate::progress::Progress::new("sft", Some(sft.steps), "steps");
        for step in 1..=sft.steps {
            let batch = source.batch(sft.seed, step, sft.batch_size, self.tokenizer, self.extra)?;
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
            window.loss_sum += out.loss;
            window.tokens_sum += out.tokens;
            progress.inc(1, out.tokens as u64);
            window.steps += 1;
            if step % sft.log_every == 0 || step == sft.steps {
                self.log(&mut window, step, &out, started)?;
            }
            if crate::schedule::due(step, sft.checkpoint_every, sft.steps) {
                let state = SftState {
                    step,
                    seed: sft.seed,
                };
                self.checkpoints.save(&state, |staging| {
                    write_sft_model(staging, &learner, self.tokenizer)
                })?;
            }
        }
        progress.finish();
        Ok((first_loss, last_loss))
    }

    /// Appends the window's metrics row to `metrics.parquet`, prints it and starts a new window.
    fn log(
        &self,
        window: &mut LogWindow,
        step: u64,
        out: &SftStep,
        started: Instant,
    ) -> Result<()> {
        let mean_loss = window.loss_sum / window.steps as f64;
        let mut values = BTreeMap::new();
        values.insert(names::SFT_LOSS.into(), mean_loss);
        values.insert(names::SFT_TOKENS.into(), window.tokens_sum as f64);
        values.insert(names::SFT_LR.into(), out.lr);
        values.insert(names::GRAD_NORM.into(), out.grad_norm);
        values.insert(
            names::TIME_ELAPSED_S.into(),
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(
            "sft step {step}/{} | loss {:.4} | tokens {} | lr {:.2e} | {:.1}s",
            self.sft.steps,
            mean_loss,
            window.tokens_sum,
            out.lr,
            started.elapsed().as_secs_f64()
        );
        window.rows.push(MetricsRow {
            step,
            policy_version: step,
            values,
        });
        parquet_log::write_parquet(
            &self.run.metrics(),
            &parquet_log::metrics_batch(&window.rows)?,
            self.config_toml,
        )?;
        (window.loss_sum, window.tokens_sum, window.steps) = (0.0, 0, 0);
        Ok(())
    }
}
