//! Supervised fine-tuning (`alp-rl sft`, and the `[sft]` warm start of `alp-rl train`): next-token
//! cross-entropy on worked conversations, with the loss on the assistant's tokens (each turn and the EOS
//! that ends it) only; prompt tokens and what the environment says between turns (tool results) are
//! never trained on. Conversations come from an environment's worked answers (`reference_turns`) on its
//! train split, or from a JSONL file. They are tokenised by the episode runner's own code
//! ([`alp_rollout::encode_conversation`]), so SFT trains exactly the tokens RL samples and trains on. The
//! run directory has the layout of a train run: `metrics.parquet` (one row every `sft.log_every` steps:
//! `sft/loss`, `sft/tokens`, ...) and `checkpoints/step-N/model` (HF).
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

/// One tokenised conversation: `ids = prompt ++ turns`, `loss_mask[i]` true on the assistant's tokens
/// (and the EOS ending each assistant turn), false on the prompt and the environment's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<i64>,
    pub loss_mask: Vec<bool>,
    /// Tokens of the rendered prompt (chat template with the generation prompt).
    pub prompt_len: usize,
}

impl SftExample {
    /// The learner's sample view (completion = everything after the prompt), so packing and log-probs
    /// are shared with RL.
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

/// A prompt (chat messages and tools) and the conversation to learn after it.
#[derive(Debug, Clone, PartialEq)]
pub struct SftPair {
    pub messages: Vec<Value>,
    pub tools: Vec<Value>,
    /// Assistant messages (learnt) alternating with the environment's messages (tool results; not
    /// learnt), beginning and ending with an assistant message. A single answer is one assistant message.
    pub turns: Vec<Value>,
}

impl SftPair {
    /// A prompt and a single assistant answer.
    pub fn single(messages: Vec<Value>, tools: Vec<Value>, answer: &str) -> Self {
        SftPair {
            messages,
            tools,
            turns: vec![serde_json::json!({"role": "assistant", "content": answer})],
        }
    }
}

/// Tokenises `pair` exactly as the episode runner records an episode in which the policy wrote its
/// assistant turns: the prompt rendered with the generation prompt, each assistant turn followed by the
/// EOS the engine stops on (trained on), the other messages as the chat template renders them (not
/// trained on).
pub fn encode_pair(
    tokenizer: &Tokenizer,
    pair: &SftPair,
    extra: &Map<String, Value>,
) -> Result<SftExample> {
    let c = alp_rollout::encode_conversation(
        tokenizer,
        &pair.messages,
        &pair.tools,
        &pair.turns,
        extra,
    )?;
    let prompt_len = c.prompt_ids.len();
    let mut loss_mask = vec![false; prompt_len];
    loss_mask.extend(c.loss_mask.iter().map(|&m| m == 1));
    let mut ids = c.prompt_ids;
    ids.extend(c.completion_ids);
    Ok(SftExample {
        ids,
        loss_mask,
        prompt_len,
    })
}

/// Where the examples come from.
pub enum SftSource {
    /// Worked conversations of an environment's train split; example `i` is the one of seed `i`.
    Env(Arc<dyn Environment>),
    /// Rows of a JSONL file, tokenised once when loaded, cycled in order.
    Rows(Vec<SftExample>),
}

impl SftSource {
    pub fn from_config(
        sft: &SftSection,
        env: Arc<dyn Environment>,
        tokenizer: &Tokenizer,
        extra: &Map<String, Value>,
    ) -> Result<Self> {
        match &sft.data {
            Some(path) => Self::from_rows(read_jsonl(path)?, tokenizer, extra),
            None => Ok(SftSource::Env(env)),
        }
    }

    /// Tokenises every row (`path:line`, pair) once, so a bad row stops the run before its first step,
    /// named by its line.
    pub fn from_rows(
        rows: Vec<(String, SftPair)>,
        tokenizer: &Tokenizer,
        extra: &Map<String, Value>,
    ) -> Result<Self> {
        rows.iter()
            .map(|(origin, pair)| encode(tokenizer, origin, pair, extra))
            .collect::<Result<_>>()
            .map(SftSource::Rows)
    }

    /// Example number `index`, tokenised: a pure function of the index, so a run is reproducible; an
    /// error names the environment's example.
    pub fn example(
        &self,
        index: u64,
        tokenizer: &Tokenizer,
        extra: &Map<String, Value>,
    ) -> Result<SftExample> {
        match self {
            SftSource::Rows(rows) => Ok(rows[(index % rows.len() as u64) as usize].clone()),
            SftSource::Env(env) => {
                let (origin, pair) = env_pair(env.as_ref(), index)?;
                encode(tokenizer, &origin, &pair, extra)
            }
        }
    }
}

/// The worked conversation of the environment's train example of seed `index`, and its name.
pub fn env_pair(env: &dyn Environment, index: u64) -> Result<(String, SftPair)> {
    let example = env.example(Split::Train, index)?;
    let origin = format!("environment `{}` example {}", env.name(), example.id);
    let episode = env.reset(&example.data)?;
    let turns = env
        .reference_turns(&example.data)?
        .with_context(|| format!("{origin}: no worked answer"))?;
    let values = |ms: &[alp_envs::Message]| {
        ms.iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
    };
    let pair = SftPair {
        messages: values(&episode.messages)?,
        tools: episode.tools.clone(),
        turns: values(&turns)?,
    };
    Ok((origin, pair))
}

/// [`encode_pair`], with errors naming where the pair comes from.
fn encode(
    tokenizer: &Tokenizer,
    origin: &str,
    pair: &SftPair,
    extra: &Map<String, Value>,
) -> Result<SftExample> {
    encode_pair(tokenizer, pair, extra).with_context(|| format!("SFT data {origin}"))
}

/// One pair per non-empty line: `{"prompt": "...", "completion": "..."}` (the prompt becomes one user
/// message), or `{"messages": [...], "tools": [...]}`: the messages before the first assistant message
/// are the prompt, every assistant message from there on is learnt and the messages between them (tool
/// results) are not; the last message must be the assistant's. `tools` (optional) lists the tool specs
/// the chat template shows.
pub fn read_jsonl(path: &Path) -> Result<Vec<(String, SftPair)>> {
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
            let tools = match row.get("tools") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(tools)) if tools.iter().all(Value::is_object) => tools.clone(),
                Some(_) => bail!(
                    "{}: `tools` must be a list of tool specs (JSON objects such as {{\"type\": \"function\", \"function\": {{...}}}})",
                    at()
                ),
            };
            for (k, m) in messages.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str);
                if !role.is_some_and(|r| ROLES.contains(&r)) {
                    bail!(
                        "{}: message {} has role {}; allowed: {}",
                        at(),
                        k + 1,
                        m.get("role").map_or("(none)".to_string(), Value::to_string),
                        ROLES.join(", ")
                    );
                }
                if !m.get("content").is_some_and(Value::is_string) {
                    bail!(
                        "{}: message {} needs a `content` string (tool calls are written in the \
                         assistant's content)",
                        at(),
                        k + 1
                    );
                }
            }
            let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_string);
            let first = messages
                .iter()
                .position(|m| role(m).as_deref() == Some("assistant"));
            match (first, messages.last().and_then(role).as_deref()) {
                (Some(first), Some("assistant")) if first > 0 => SftPair {
                    messages: messages[..first].to_vec(),
                    tools,
                    turns: messages[first..].to_vec(),
                },
                _ => bail!(
                    "{}: `messages` must hold the prompt (at least one message), then the assistant's turns; the last message must be the assistant's",
                    at()
                ),
            }
        } else {
            match (
                row.get("prompt").and_then(Value::as_str),
                row.get("completion").and_then(Value::as_str),
            ) {
                (Some(prompt), Some(completion)) => SftPair::single(
                    vec![serde_json::json!({"role": "user", "content": prompt})],
                    Vec::new(),
                    completion,
                ),
                _ => bail!(
                    "{}: expected {{\"prompt\", \"completion\"}} strings or a {{\"messages\"}} list",
                    at()
                ),
            }
        };
        rows.push((at(), pair));
    }
    ensure!(!rows.is_empty(), "{} holds no rows", path.display());
    Ok(rows)
}

/// The message roles an SFT row may use.
pub const ROLES: &[&str] = alp_envs::Role::ALL;

/// Reads and tokenises the `sft.data` file (when set) before any run file is written, so a bad row, or
/// one longer than the model's context, is refused by its `file:line` with nothing to clean up.
pub fn check_data(
    sft: &SftSection,
    tokenizer: &Tokenizer,
    extra: &Map<String, Value>,
    context: usize,
) -> Result<()> {
    let Some(path) = &sft.data else {
        return Ok(());
    };
    for (origin, pair) in read_jsonl(path)? {
        let ex = encode(tokenizer, &origin, &pair, extra)?;
        ensure!(
            ex.ids.len() <= context,
            "SFT data {origin}: the conversation is {} tokens, more than the model's context of \
             {context} tokens (max_position_embeddings); shorten it",
            ex.ids.len()
        );
    }
    Ok(())
}

/// Mean negative log-likelihood of the trained (assistant) tokens of `batch`, and how many there are.
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
    let cannot = |what: &str, p: &Path| format!("cannot {what} {}", p.display());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| cannot("remove", &tmp))?;
    }
    let model = tmp.join("model");
    policy
        .save(&model)
        .with_context(|| cannot("save the model to", &model))?;
    tokenizer
        .save(&model)
        .with_context(|| cannot("save the tokenizer to", &model))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| cannot("remove", &dir))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| cannot("rename into place", &tmp))?;
    write_bytes_atomic(
        &run.latest(),
        crate::run_dir::checkpoint_name(step).as_bytes(),
    )
    .with_context(|| cannot("write", &run.latest()))?;
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
    let policy = CausalLM::load(model_src, &LoadOptions { kind, device })
        .with_context(|| format!("loading the model in {}", model_src.display()))?;
    let extra = serde_json::to_value(&config.rollout.chat_extra)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let source = SftSource::from_config(sft, env, &tokenizer, &extra)?;
    // Only once the data has loaded: a bad file leaves nothing that would refuse a rerun.
    std::fs::create_dir_all(run.checkpoints_dir())
        .with_context(|| format!("cannot create {}", run.checkpoints_dir().display()))?;
    let mut opt = AdamW::new(
        vec![ParamGroup {
            name: "model".into(),
            params: policy.named_parameters(),
            lr: sft.lr,
            weight_decay: sft.weight_decay,
        }],
        AdamWConfig::default(),
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
                source.example(index, &tokenizer, &extra)
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
        SftPair::single(vec![json!({"role": "user", "content": q})], Vec::new(), a)
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
        assert!(rows[0].0.ends_with("d.jsonl:1") && rows[1].0.ends_with("d.jsonl:3"));
        assert_eq!(rows[0].1, pair("1+1?", "2"));
        assert_eq!(rows[1].1.messages.len(), 2);
        assert_eq!(
            rows[1].1.turns,
            [json!({"role": "assistant", "content": "a"})]
        );
        for (row, needle) in [
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}]}",
                "the last message must be the assistant's",
            ),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}], \"tools\": {}}",
                "`tools` must be a list",
            ),
            (
                "{\"messages\": [{\"role\": \"bot\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}",
                "message 1 has role \"bot\"; allowed: system, user, assistant, tool",
            ),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": 5}, {\"role\": \"assistant\", \"content\": \"a\"}]}",
                "message 1 needs a `content` string",
            ),
        ] {
            std::fs::write(&path, format!("{row}\n")).unwrap();
            let err = read_jsonl(&path).unwrap_err().to_string();
            assert!(err.contains("d.jsonl:1") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn multi_turn_rows_train_every_assistant_turn_and_mask_tool_results() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tools.jsonl");
        let call = alp_envs::envs::tool_math::call_text("6 * 7");
        let row = json!({
            "messages": [
                {"role": "user", "content": "What is 6 * 7?"},
                {"role": "assistant", "content": call},
                {"role": "tool", "name": "calculator", "content": "42"},
                {"role": "assistant", "content": "\\boxed{42}"},
            ],
            "tools": [alp_envs::envs::tool_math::calculator_spec()],
        });
        std::fs::write(&path, format!("{row}\n")).unwrap();
        let rows = read_jsonl(&path).unwrap();
        let p = &rows[0].1;
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.turns.len(), 3);
        assert_eq!(p.tools.len(), 1);
        let tok = tokenizer();
        let source = SftSource::from_rows(rows, &tok, &Map::new()).unwrap();
        let ex = source.example(0, &tok, &Map::new()).unwrap();
        // The trained tokens are exactly the two assistant turns, each with its EOS; the tool result
        // and the template text around it are not trained.
        let text = |mask: bool| {
            let ids: Vec<u32> = ex.ids[ex.prompt_len..]
                .iter()
                .zip(&ex.loss_mask[ex.prompt_len..])
                .filter(|(_, &m)| m == mask)
                .map(|(&t, _)| t as u32)
                .collect();
            tok.decode(&ids, false).unwrap()
        };
        assert_eq!(
            text(true),
            format!("{call}<|im_end|>\\boxed{{42}}<|im_end|>")
        );
        assert_eq!(
            text(false),
            "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(ex.loss_mask[..ex.prompt_len].iter().all(|&m| !m));

        // A row the template cannot tokenise is refused with its line before training starts.
        let bad = json!({"messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calculator"}}]},
        ]});
        std::fs::write(&path, format!("{row}\n{bad}\n")).unwrap();
        let refused = SftSource::from_rows(read_jsonl(&path).unwrap(), &tok, &Map::new());
        let err = format!("{:#}", refused.err().expect("the bad row is refused"));
        assert!(
            err.contains("tools.jsonl:2") && err.contains("structured `tool_calls`"),
            "{err}"
        );
    }

    /// Replies to turn `t` of every row with `replies[t]` and EOS.
    struct Scripted {
        tokenizer: Tokenizer,
        replies: Vec<String>,
        turn: usize,
    }

    impl alp_rollout::GenerationBackend for Scripted {
        fn generate(
            &mut self,
            requests: &[alp_rollout::GenerationRequest],
            _: &alp_rollout::SamplingParams,
        ) -> Result<Vec<alp_rollout::Completion>, alp_rollout::RolloutError> {
            let mut ids: Vec<i64> = self
                .tokenizer
                .encode(&self.replies[self.turn], false)
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect();
            ids.push(i64::from(self.tokenizer.eos_token_id().unwrap()));
            self.turn += 1;
            Ok(requests
                .iter()
                .map(|r| alp_rollout::Completion {
                    prompt_ids: r.prompt_ids.clone(),
                    logprobs: vec![0.0; ids.len()],
                    completion_ids: ids.clone(),
                    finish_reason: alp_rollout::FinishReason::Stop,
                    policy_version: 0,
                })
                .collect())
        }

        fn policy_version(&self) -> u64 {
            0
        }
    }

    #[test]
    fn tool_math_warm_start_trains_the_tokens_of_an_rl_episode() {
        let tok = tokenizer();
        let settings = json!({"max_turns": 2, "source_settings": {"digits": 1, "max_operands": 2}, "prompt_template": "{question} ="});
        let env = alp_envs::Registry::builtin()
            .build("tool_math", &settings)
            .unwrap();
        let source = SftSource::Env(env.clone());
        for index in 0..10 {
            let ex = source.example(index, &tok, &Map::new()).unwrap();
            let (_, pair) = env_pair(env.as_ref(), index).unwrap();
            let replies: Vec<String> = pair
                .turns
                .iter()
                .filter(|m| m["role"] == "assistant")
                .map(|m| m["content"].as_str().unwrap().to_string())
                .collect();
            assert!(replies[0].starts_with("<tool_call>"), "{replies:?}");
            // The policy writing the worked turns gives the SFT example's tokens and mask.
            let example = env.example(Split::Train, index).unwrap();
            let mut backend = Scripted {
                tokenizer: tokenizer(),
                replies,
                turn: 0,
            };
            let t = alp_rollout::run_episodes(
                &mut backend,
                &tok,
                env.as_ref(),
                &[example],
                &alp_rollout::SamplingParams::default(),
                &alp_rollout::EpisodeSettings::default(),
            )
            .unwrap()
            .remove(0);
            assert!(t.correct, "{t:?}");
            assert_eq!(
                ex.ids,
                [t.prompt_ids.clone(), t.completion_ids.clone()].concat()
            );
            let mask: Vec<bool> = t.loss_mask.iter().map(|&m| m == 1).collect();
            assert_eq!(ex.loss_mask[ex.prompt_len..], mask);
            assert_eq!(ex.prompt_len, t.prompt_ids.len());
            assert!(mask.contains(&false) && mask.contains(&true));
        }
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
            AdamWConfig::default(),
            Schedule::constant(),
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
