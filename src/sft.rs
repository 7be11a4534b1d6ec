//! Supervised fine-tuning (`alp-rl sft`, and the `[sft]` warm start of `alp-rl train`): next-token
//! cross-entropy on (prompt, answer) pairs, with the loss on the answer tokens (and the EOS that ends
//! them) only. Pairs come from an environment's worked answers (`reference_completion`) on its train
//! split, or from a JSONL file. The run directory has the layout of a train run: `metrics.parquet` (one
//! row every `sft.log_every` steps: `sft/loss`, `sft/tokens`, ...) and `checkpoints/step-N/model` (HF).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alp_envs::{Environment, Split};
use alp_learner::{
    AdamW, AdamWConfig, Entropy, LrSchedule, PackedBatch, ParamGroup, Sample, Schedule,
};
use alp_policy::{CausalLM, LoadOptions, NoHooks};
use alp_tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use crate::config::{SftSection, TrainConfig};
use crate::parquet_log::{self, MetricsRow};
use crate::run_dir::{temp_path, write_bytes_atomic, RunDir};

/// One tokenised pair: `ids = prompt ++ answer ++ [eos]`, `loss_mask[i]` true on answer and EOS tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<i64>,
    pub loss_mask: Vec<bool>,
    /// Tokens of the rendered prompt (chat template with the generation prompt).
    pub prompt_len: usize,
}

impl SftExample {
    /// The learner's sample view (completion = the answer), so packing and log-probs are shared with RL.
    fn to_sample(&self) -> Sample {
        let completion = self.ids[self.prompt_len..].to_vec();
        Sample {
            mu: vec![0.0; completion.len()],
            loss_mask: self.loss_mask[self.prompt_len..].to_vec(),
            prompt_ids: self.ids[..self.prompt_len].to_vec(),
            completion_ids: completion,
            reward: 0.0,
            policy_version: 0,
        }
    }
}

/// A prompt (chat messages and tools) and the assistant answer to learn.
#[derive(Debug, Clone, PartialEq)]
pub struct SftPair {
    pub messages: Vec<Value>,
    pub tools: Vec<Value>,
    pub answer: String,
}

/// Renders the prompt exactly as the episode runner does (so SFT trains the same context RL samples
/// from) and appends the answer and the EOS the engine stops on.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    pair: &SftPair,
    extra: &Map<String, Value>,
) -> Result<SftExample> {
    let tools = (!pair.tools.is_empty()).then_some(pair.tools.as_slice());
    let prompt: Vec<i64> = tokenizer
        .apply_chat_template(&pair.messages, tools, true, extra)?
        .into_iter()
        .map(i64::from)
        .collect();
    let eos = tokenizer
        .eos_token_id()
        .context("SFT needs a tokenizer with an EOS token (it ends the answer)")?;
    let mut answer: Vec<i64> = tokenizer
        .encode(&pair.answer, false)?
        .into_iter()
        .map(i64::from)
        .collect();
    answer.push(i64::from(eos));
    ensure!(!prompt.is_empty(), "the rendered prompt is empty");
    let mut loss_mask = vec![false; prompt.len()];
    loss_mask.resize(prompt.len() + answer.len(), true);
    let prompt_len = prompt.len();
    let mut ids = prompt;
    ids.extend(answer);
    Ok(SftExample {
        ids,
        loss_mask,
        prompt_len,
    })
}

/// Where the pairs come from.
pub enum SftSource {
    /// Worked answers of an environment's train split; pair `i` is the example of seed `i`.
    Env(Arc<dyn Environment>),
    /// Rows of a JSONL file, cycled in order.
    Rows(Vec<SftPair>),
}

impl SftSource {
    pub fn from_config(config: &TrainConfig, sft: &SftSection) -> Result<Self> {
        match &sft.data {
            Some(path) => Ok(SftSource::Rows(read_jsonl(path)?)),
            None => Ok(SftSource::Env(alp_envs::cli::build(
                &config.env.name,
                &config.env.settings_json(),
            )?)),
        }
    }

    /// Pair number `index`: a pure function of the index, so a run is reproducible.
    pub fn pair(&self, index: u64) -> Result<SftPair> {
        match self {
            SftSource::Rows(rows) => Ok(rows[(index % rows.len() as u64) as usize].clone()),
            SftSource::Env(env) => {
                let example = env.example(Split::Train, index)?;
                let episode = env.reset(&example.data)?;
                let answer = env.reference_completion(&example.data)?.with_context(|| {
                    format!(
                        "environment `{}` has no worked answer for {}",
                        env.name(),
                        example.id
                    )
                })?;
                Ok(SftPair {
                    messages: episode
                        .messages
                        .iter()
                        .map(serde_json::to_value)
                        .collect::<Result<_, _>>()?,
                    tools: episode.tools.clone(),
                    answer,
                })
            }
        }
    }
}

/// `{"prompt": "...", "completion": "..."}` (the prompt becomes one user message) or `{"messages": [...]}`
/// (every message before the last is the prompt; the last must be the assistant's answer) per line.
pub fn read_jsonl(path: &Path) -> Result<Vec<SftPair>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the SFT data {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let row: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let pair = if let Some(messages) = row.get("messages").and_then(Value::as_array) {
            let Some((last, prompt)) = messages.split_last() else {
                bail!("{}: `messages` is empty", at());
            };
            let answer = last.get("content").and_then(Value::as_str);
            match (last.get("role").and_then(Value::as_str), answer) {
                (Some("assistant"), Some(answer)) if !prompt.is_empty() => SftPair {
                    messages: prompt.to_vec(),
                    tools: Vec::new(),
                    answer: answer.to_string(),
                },
                _ => bail!(
                    "{}: the last message must be the assistant's answer (role and content), after at least one prompt message",
                    at()
                ),
            }
        } else {
            match (
                row.get("prompt").and_then(Value::as_str),
                row.get("completion").and_then(Value::as_str),
            ) {
                (Some(prompt), Some(completion)) => SftPair {
                    messages: vec![serde_json::json!({"role": "user", "content": prompt})],
                    tools: Vec::new(),
                    answer: completion.to_string(),
                },
                _ => bail!(
                    "{}: expected {{\"prompt\", \"completion\"}} strings or a {{\"messages\"}} list",
                    at()
                ),
            }
        };
        rows.push(pair);
    }
    ensure!(!rows.is_empty(), "{} holds no rows", path.display());
    Ok(rows)
}

/// Mean negative log-likelihood of the masked (answer) tokens of `batch`, and how many there are.
pub fn sft_loss(policy: &CausalLM, batch: &[SftExample]) -> Result<(Tensor, usize)> {
    let samples: Vec<Sample> = batch.iter().map(SftExample::to_sample).collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    let packed = PackedBatch::pack(&refs, &vec![0.0; refs.len()], policy.device())?;
    let (lp, _) = packed.log_probs(policy, &NoHooks, Entropy::Skip);
    let tokens = packed.num_tokens();
    let loss = -(lp * &packed.mask).sum(Kind::Float) / tokens.max(1) as f64;
    Ok((loss, tokens))
}

/// Saves `policy` and `tokenizer` as `RUN/checkpoints/step-N/model` (assembled under a temporary name,
/// then renamed) and points `checkpoints/latest` at it.
fn save_checkpoint(
    run: &RunDir,
    policy: &CausalLM,
    tokenizer: &Tokenizer,
    step: u64,
) -> Result<()> {
    let dir = run.checkpoint(step);
    let tmp = temp_path(&dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    policy.save(&tmp.join("model"))?;
    tokenizer.save(tmp.join("model"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)?;
    write_bytes_atomic(
        &run.latest(),
        crate::run_dir::checkpoint_name(step).as_bytes(),
    )?;
    Ok(())
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
    std::fs::create_dir_all(run.checkpoints_dir())?;
    let tokenizer = Tokenizer::from_dir(model_src)
        .with_context(|| format!("loading the tokenizer of {}", model_src.display()))?;
    let kind = alp_policy::parse_kind(&config.model.train_dtype)?;
    let policy = CausalLM::load(model_src, &LoadOptions { kind, device })
        .with_context(|| format!("loading the model in {}", model_src.display()))?;
    let source = SftSource::from_config(config, sft)?;
    let extra = serde_json::to_value(&config.rollout.chat_extra)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut opt = AdamW::new(
        vec![ParamGroup {
            name: "model".into(),
            params: policy.named_parameters(),
            lr: sft.lr,
            weight_decay: sft.weight_decay,
        }],
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        Schedule {
            warmup_steps: sft.warmup_steps,
            kind: LrSchedule::Cosine,
            total_steps: Some(sft.steps),
            min_lr_ratio: sft.min_lr_ratio,
        },
    );
    tracing::info!(steps = sft.steps, batch = sft.batch_size, lr = sft.lr, run = %run.root.display(), "supervised fine-tuning");
    // Pair indices are offset by the seed so different seeds see different problems in a different order.
    let offset = sft.seed.wrapping_mul(1_000_003);
    let mut rows = Vec::new();
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let (mut loss_sum, mut tokens_sum, mut n) = (0.0, 0usize, 0u64);
    let started = Instant::now();
    for step in 1..=sft.steps {
        let batch = (0..sft.batch_size as u64)
            .map(|i| {
                let index = offset.wrapping_add((step - 1) * sft.batch_size as u64 + i);
                encode_pair(&tokenizer, &source.pair(index)?, &extra)
            })
            .collect::<Result<Vec<_>>>()?;
        let lr = opt.lr_at("model", opt.steps_taken()).unwrap_or(sft.lr);
        opt.zero_grad();
        let (loss, tokens) = sft_loss(&policy, &batch)?;
        loss.backward();
        let grad_norm = opt.clip_grad_norm(sft.max_grad_norm);
        let loss = f64::try_from(&loss)?;
        ensure!(
            loss.is_finite() && grad_norm.is_finite(),
            "SFT step {step}: non-finite loss ({loss}) or gradient; lower sft.lr"
        );
        opt.step();
        if step == 1 {
            first_loss = loss;
        }
        last_loss = loss;
        loss_sum += loss;
        tokens_sum += tokens;
        n += 1;
        if step % sft.log_every == 0 || step == sft.steps {
            let mut values = BTreeMap::new();
            values.insert("sft/loss".into(), loss_sum / n as f64);
            values.insert("sft/tokens".into(), tokens_sum as f64);
            values.insert("sft/lr".into(), lr);
            values.insert("grad/norm".into(), grad_norm);
            values.insert("time/elapsed_s".into(), started.elapsed().as_secs_f64());
            tracing::info!(
                "sft step {step}/{} | loss {:.4} | tokens {tokens_sum} | lr {lr:.2e} | {:.1}s",
                sft.steps,
                loss_sum / n as f64,
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
        let every = sft.checkpoint_every;
        if step == sft.steps || (every > 0 && step.is_multiple_of(every)) {
            save_checkpoint(run, &policy, &tokenizer, step)?;
        }
    }
    Ok(SftSummary {
        model: final_model,
        first_loss,
        last_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alp_policy::ModelConfig;
    use alp_tokenizer::CharTokenizerSpec;
    use serde_json::json;

    fn tokenizer() -> Tokenizer {
        CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
            .build()
            .unwrap()
    }

    fn pair(q: &str, a: &str) -> SftPair {
        SftPair {
            messages: vec![json!({"role": "user", "content": q})],
            tools: Vec::new(),
            answer: a.into(),
        }
    }

    #[test]
    fn loss_mask_covers_only_the_answer_and_eos() {
        let tok = tokenizer();
        let ex = encode_pair(&tok, &pair("What is 2 + 3?", "= 5\n#### 5"), &Map::new()).unwrap();
        let prompt = tok
            .apply_chat_template(
                &[json!({"role": "user", "content": "What is 2 + 3?"})],
                None,
                true,
                &Map::new(),
            )
            .unwrap();
        assert_eq!(ex.prompt_len, prompt.len());
        assert!(ex.loss_mask[..ex.prompt_len].iter().all(|&m| !m));
        assert!(ex.loss_mask[ex.prompt_len..].iter().all(|&m| m));
        let answer: Vec<u32> = ex.ids[ex.prompt_len..].iter().map(|&t| t as u32).collect();
        let eos = tok.eos_token_id().unwrap();
        assert_eq!(answer.last(), Some(&eos));
        assert_eq!(
            tok.decode(&answer[..answer.len() - 1], false).unwrap(),
            "= 5\n#### 5"
        );
        assert_eq!(ex.ids.len(), ex.loss_mask.len());
        // The learner's view puts exactly the masked tokens in the completion.
        let s = ex.to_sample();
        assert_eq!(s.prompt_ids.len(), ex.prompt_len);
        assert_eq!(s.num_loss_tokens(), answer.len());
    }

    #[test]
    fn jsonl_rows_of_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"1+1?\", \"completion\": \"2\"}\n\n{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
        )
        .unwrap();
        let rows = read_jsonl(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], pair("1+1?", "2"));
        assert_eq!(rows[1].messages.len(), 2);
        assert_eq!(rows[1].answer, "a");
        std::fs::write(
            &path,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}]}\n",
        )
        .unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1"), "{err}");
    }

    #[test]
    fn loss_decreases_on_a_tiny_model() {
        tch::manual_seed(0);
        let tok = tokenizer();
        let config = json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": tok.vocab_size(), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "max_position_embeddings": 256, "tie_word_embeddings": true, "hidden_act": "silu",
            "eos_token_id": tok.eos_token_id(), "torch_dtype": "float32"
        });
        let config = ModelConfig::from_json_str(&config.to_string(), "test").unwrap();
        let policy = CausalLM::random(config, &LoadOptions::default(), 0).unwrap();
        let batch: Vec<SftExample> = [("1+2?", "3"), ("2+2?", "4"), ("3+3?", "6")]
            .iter()
            .map(|(q, a)| encode_pair(&tok, &pair(q, a), &Map::new()).unwrap())
            .collect();
        let mut opt = AdamW::new(
            vec![ParamGroup {
                name: "model".into(),
                params: policy.named_parameters(),
                lr: 1e-2,
                weight_decay: 0.0,
            }],
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            Schedule {
                warmup_steps: 0,
                kind: LrSchedule::Constant,
                total_steps: None,
                min_lr_ratio: 0.0,
            },
        );
        let mut losses = Vec::new();
        for _ in 0..20 {
            opt.zero_grad();
            let (loss, tokens) = sft_loss(&policy, &batch).unwrap();
            // Answer tokens plus one EOS per pair.
            assert_eq!(tokens, 6);
            loss.backward();
            opt.step();
            losses.push(f64::try_from(&loss).unwrap());
        }
        assert!(losses[0].is_finite());
        assert!(
            losses[19] < 0.5 * losses[0],
            "the loss should fall: {losses:?}"
        );
    }
}
