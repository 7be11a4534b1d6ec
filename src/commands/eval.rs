//! `alp-rl eval`: accuracy (avg@k) and unbiased pass@k of a model on an environment, as JSON.
use std::path::PathBuf;

use alp_envs::{cli, Registry};
use alp_policy::Dtype;
use alp_rollout::{default_stop_tokens, evaluate, EpisodeSettings, LocalEngine, SamplingParams};
use alp_tokenizer::Tokenizer;
use anyhow::{Context, Result};
use clap::Args;

use crate::config::SplitName;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory in the HF layout, with tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Environment name (see `alp-rl env list`).
    #[arg(long)]
    pub env: String,
    /// An environment setting override, `key=value`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Samples per problem (k of pass@k).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Number of problems (seeds 0..problems of the split; a dataset caps it at its size).
    #[arg(long, default_value_t = 100)]
    pub problems: usize,
    /// `heldout` (the environment's test split) or `train`.
    #[arg(long, default_value_t = SplitName::Heldout)]
    pub split: SplitName,
    /// Greedy decoding (then --n should be 1).
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Bound on completion tokens per episode across turns.
    #[arg(long, default_value_t = 1024)]
    pub max_total_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// A LoRA adapter directory in PEFT's format (adapter_config.json, adapter_model.safetensors),
    /// written by PEFT or by alp-rl, for the model in --model. It is merged into the inference copy
    /// (W + scale B A, computed in f32 and rounded once to --dtype) before evaluating.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

pub fn run(args: EvalArgs, registry: &Registry) -> Result<()> {
    // The flags are checked like the `[eval]` and `[rollout]` keys they mirror, before any work.
    use crate::config::{MAX_BATCH, MAX_EVAL_PROBLEMS, MAX_EVAL_SAMPLES, MAX_TOKENS};
    super::check_count("--n", args.n, MAX_EVAL_SAMPLES)?;
    super::check_count("--problems", args.problems, MAX_EVAL_PROBLEMS)?;
    super::check_count("--batch-size", args.batch_size, MAX_BATCH)?;
    super::check_count("--max-total-tokens", args.max_total_tokens, MAX_TOKENS)?;
    anyhow::ensure!(
        !(args.greedy && args.n > 1),
        "--n is {} but --greedy makes every sample the same; pass --n 1, or drop --greedy",
        args.n
    );
    anyhow::ensure!(
        args.max_total_tokens >= args.max_new_tokens,
        "--max-total-tokens ({}) must be at least --max-new-tokens ({})",
        args.max_total_tokens,
        args.max_new_tokens
    );
    let kind = args.dtype.kind();
    super::check_sampling_flags(&SamplingParams {
        greedy: args.greedy,
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        ..SamplingParams::default()
    })?;
    let env = cli::build(registry, &args.env, &cli::parse_overrides(&args.set)?)
        .with_context(|| format!("--env {}", args.env))?;
    let split = args.split.split();
    let available = env.num_examples(split)?.unwrap_or(usize::MAX);
    let examples = (0..args.problems.min(available) as u64)
        .map(|seed| env.example(split, seed))
        .collect::<Result<Vec<_>, _>>()?;
    let tokenizer = Tokenizer::from_dir(&args.model)
        .with_context(|| format!("eval needs tokenizer.json in {}", args.model.display()))?;
    let model = crate::models::load_for_command(&args.model, kind)?;
    if let Some(adapter) = &args.adapter {
        super::adapter::merge_adapter(&model, &args.model, adapter)?;
    }
    let params = SamplingParams {
        greedy: args.greedy,
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        stop_token_ids: default_stop_tokens(&model, Some(&tokenizer)),
        seed: args.seed,
        ..SamplingParams::default()
    };
    let settings = EpisodeSettings {
        max_total_tokens: args.max_total_tokens,
        ..EpisodeSettings::default()
    };
    let mut engine = LocalEngine::new(model, args.batch_size);
    // One unit per generation request: a sample's turn (one per sample for single-turn environments).
    let progress =
        crate::progress::Progress::new("eval", Some((examples.len() * args.n) as u64), "requests");
    engine.set_on_finished(Some(progress.hook()));
    let report = evaluate(
        &mut engine,
        &tokenizer,
        env.as_ref(),
        &examples,
        args.n,
        &params,
        &settings,
    )?;
    progress.finish();
    tracing::info!(
        accuracy = report.accuracy,
        problems = report.problems,
        k = args.n,
        "evaluated"
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
