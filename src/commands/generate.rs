//! `alp-rl generate`: complete prompts with the local engine and print one JSON object per completion.
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use alp_policy::Dtype;
use alp_rollout::{
    default_stop_tokens, GenerationBackend, GenerationRequest, LocalEngine, LogprobMode,
    SamplingParams,
};
use alp_tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompt_ids", "prompts"])))]
pub struct GenerateArgs {
    /// Model directory in the HF layout (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// One prompt as text (needs tokenizer.json in the model directory).
    #[arg(long)]
    pub prompt: Option<String>,
    /// One prompt as comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<i64>>,
    /// A JSONL file: one object per line with `prompt` (text), `prompt_ids` or `messages` (chat).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Render text prompts as a user turn with the model's chat template (add_generation_prompt).
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// Argmax decoding (log-probs are then the raw log-softmax).
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute dtype of the inference copy: f32, bf16 or f16.
    #[arg(long, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// A LoRA adapter directory in PEFT's format (adapter_config.json, adapter_model.safetensors),
    /// written by PEFT or by alp-rl, for the model in --model. It is merged into the inference copy
    /// (W + scale B A, computed in f32 and rounded once to --dtype) before generating.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Which distribution the recorded log-probs are under: sampling, temperature or raw.
    #[arg(long, default_value_t = LogprobMode::Sampling)]
    pub logprobs: LogprobMode,
    /// Write results here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A prompt as the user gave it, before tokenisation.
enum PromptInput {
    Ids(Vec<i64>),
    Text(String),
    Messages(Vec<Value>),
}

fn read_prompts(path: &Path) -> Result<Vec<PromptInput>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{} line {}", path.display(), i + 1);
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not JSON", where_()))?;
        let prompt = if let Some(ids) = value.get("prompt_ids") {
            PromptInput::Ids(serde_json::from_value(ids.clone()).with_context(|| {
                format!("{}: `prompt_ids` must be a list of integers", where_())
            })?)
        } else if let Some(text) = value.get("prompt").and_then(Value::as_str) {
            PromptInput::Text(text.to_string())
        } else if let Some(Value::Array(messages)) = value.get("messages") {
            PromptInput::Messages(messages.clone())
        } else {
            bail!(
                "{}: expected a `prompt` string, `prompt_ids` list or `messages` list",
                where_()
            );
        };
        prompts.push(prompt);
    }
    Ok(prompts)
}

fn load_tokenizer(model: &Path) -> Result<Tokenizer> {
    Tokenizer::from_dir(model).with_context(|| {
        format!(
            "text prompts need a tokenizer: {} has no usable tokenizer.json (use --prompt-ids instead)",
            model.display()
        )
    })
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (mode, kind) = (args.logprobs, args.dtype.kind());
    // The flags are checked like the `[rollout]` keys they mirror, before the model is loaded.
    super::check_count("--batch-size", args.batch_size, crate::config::MAX_BATCH)?;
    super::check_sampling_flags(&SamplingParams {
        greedy: args.greedy,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        ..SamplingParams::default()
    })?;
    let inputs = if let Some(ids) = &args.prompt_ids {
        vec![PromptInput::Ids(ids.clone())]
    } else if let Some(text) = &args.prompt {
        vec![PromptInput::Text(text.clone())]
    } else {
        read_prompts(args.prompts.as_deref().expect("clap requires one input"))?
    };
    let needs_tokenizer = inputs.iter().any(|p| !matches!(p, PromptInput::Ids(_)));
    let tokenizer = if needs_tokenizer || args.model.join("tokenizer.json").exists() {
        Some(load_tokenizer(&args.model)?)
    } else {
        None
    };

    let prompt_ids = tokenize_prompts(inputs, tokenizer.as_ref(), args.chat)?;

    let model = crate::models::load_for_command(&args.model, kind)?;
    if let Some(adapter) = &args.adapter {
        super::adapter::merge_adapter(&model, &args.model, adapter)?;
    }
    let stop = default_stop_tokens(&model, tokenizer.as_ref());
    let params = SamplingParams {
        greedy: args.greedy,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        stop_token_ids: stop,
        logprob_mode: mode,
        seed: args.seed,
        first_stream: 0,
    };
    let requests: Vec<_> = prompt_ids.into_iter().map(GenerationRequest::new).collect();
    tracing::info!(
        prompts = requests.len(),
        dtype = %args.dtype,
        batch_size = args.batch_size,
        "generating"
    );
    let started = std::time::Instant::now();
    let mut engine = LocalEngine::new(model, args.batch_size);
    let progress =
        crate::progress::Progress::new("generate", Some(requests.len() as u64), "requests");
    engine.set_on_finished(Some(progress.hook()));
    let completions = engine
        .generate(&requests, &params)
        .with_context(|| match &args.prompts {
            // Request i is the i-th prompt of the file (blank lines hold none).
            Some(file) => format!(
                "--prompts {} (requests count its prompts from 0)",
                file.display()
            ),
            None if args.prompt_ids.is_some() => "--prompt-ids".to_string(),
            None => "--prompt".to_string(),
        })?;
    if let Some(c) = completions
        .iter()
        .position(|c| c.logprobs.iter().any(|lp| !lp.is_finite()))
    {
        bail!(
            "completion {c}: the model in {} produced non-finite log-probs (its weights or config \
             give NaN logits); try --dtype f32, or check the checkpoint",
            args.model.display()
        );
    }
    progress.finish();
    let new_tokens: usize = completions.iter().map(|c| c.completion_ids.len()).sum();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        completions = completions.len(),
        new_tokens,
        seconds = format!("{secs:.2}"),
        tokens_per_s = format!("{:.1}", new_tokens as f64 / secs.max(1e-9)),
        "done"
    );

    write_completions(&args, tokenizer.as_ref(), &completions, mode)
}

/// Token ids of each prompt: ids as given, text encoded (as a user turn with `--chat`), messages
/// rendered with the chat template.
fn tokenize_prompts(
    inputs: Vec<PromptInput>,
    tokenizer: Option<&Tokenizer>,
    chat: bool,
) -> Result<Vec<Vec<i64>>> {
    let mut prompt_ids = Vec::with_capacity(inputs.len());
    for input in inputs {
        let ids = match input {
            PromptInput::Ids(ids) => ids,
            PromptInput::Text(text) if chat => {
                let tok = tokenizer.expect("loaded for text prompts");
                chat_ids(tok, &[json!({"role": "user", "content": text})])?
            }
            PromptInput::Text(text) => {
                let tok = tokenizer.expect("loaded for text prompts");
                tok.encode(&text, true)?
                    .into_iter()
                    .map(i64::from)
                    .collect()
            }
            PromptInput::Messages(messages) => {
                chat_ids(tokenizer.expect("loaded for chat prompts"), &messages)?
            }
        };
        prompt_ids.push(ids);
    }
    Ok(prompt_ids)
}

/// One JSON object per completion, to `--out` or stdout.
fn write_completions(
    args: &GenerateArgs,
    tokenizer: Option<&Tokenizer>,
    completions: &[alp_rollout::Completion],
    mode: LogprobMode,
) -> Result<()> {
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for (index, c) in completions.iter().enumerate() {
        let text = match tokenizer {
            Some(tok) => {
                let ids: Vec<u32> = c.completion_ids.iter().map(|&t| t as u32).collect();
                Value::from(tok.decode(&ids, true)?)
            }
            None => Value::Null,
        };
        let line = json!({
            "index": index,
            "prompt_ids": c.prompt_ids,
            "completion_ids": c.completion_ids,
            "logprobs": c.logprobs,
            // Greedy decoding records raw log-probs whatever the setting (docs/generation.md).
            "logprob_mode": if args.greedy { LogprobMode::Raw } else { mode },
            "text": text,
            "finish_reason": c.finish_reason.as_str(),
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

fn chat_ids(tok: &Tokenizer, messages: &[Value]) -> Result<Vec<i64>> {
    let ids = tok.apply_chat_template(messages, None, true, &serde_json::Map::new())?;
    Ok(ids.into_iter().map(i64::from).collect())
}
