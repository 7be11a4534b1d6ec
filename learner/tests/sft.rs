//! Supervised fine-tuning: the tokenised examples against the chat template and the episode runner,
//! the JSONL rows, the loss against PyTorch's cross-entropy with HF's label shift, and the learner's
//! schedule against its closed form.
mod common;

use std::error::Error;

use alp_envs::Split;
use alp_learner::sft::{
    encode_pair, env_pair, read_jsonl, sft_loss, SftExample, SftLearner, SftPair, SftSettings,
    SftSource,
};
use alp_learner::TrainablePolicy;
use alp_policy::{CausalLM, LoadOptions, ModelConfig, NoHooks};
use alp_tokenizer::{CharTokenizerSpec, Tokenizer};
use serde_json::{json, Map};
use tch::{Kind, Reduction, Tensor};

fn tokenizer() -> Tokenizer {
    CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
        .build()
        .unwrap()
}

fn pair(q: &str, a: &str) -> SftPair {
    SftPair::single(vec![json!({"role": "user", "content": q})], Vec::new(), a)
}

/// An error and its sources, as `anyhow`'s `{:#}` prints them.
fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

fn tiny_model(tok: &Tokenizer, seed: i64) -> CausalLM {
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": tok.vocab_size(), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": true, "hidden_act": "silu",
        "eos_token_id": tok.eos_token_id(), "torch_dtype": "float32"
    });
    let config = ModelConfig::from_json_str(&config.to_string(), "test").unwrap();
    CausalLM::random(config, &LoadOptions::default(), seed as u64).unwrap()
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
        ("{\"prompt\": \"1+1\",", "not JSON"),
        ("{\"prompt\": \"1+1\"}", "expected {\"prompt\", \"completion\"} strings"),
    ] {
        std::fs::write(&path, format!("{row}\n")).unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1") && err.contains(needle), "{err}");
    }
    std::fs::write(&path, "\n\n").unwrap();
    let err = read_jsonl(&path).unwrap_err().to_string();
    assert!(err.ends_with("d.jsonl holds no rows"), "{err}");
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
    let refused = SftSource::from_file(&path, &tok, &Map::new());
    let err = chain(&refused.err().expect("the bad row is refused"));
    assert!(
        err.contains("tools.jsonl:2") && err.contains("structured `tool_calls`"),
        "{err}"
    );
    // The preflight check refuses it too, and a row longer than the context by its line.
    let err = chain(&alp_learner::sft::check_file(&path, &tok, &Map::new(), 1000).unwrap_err());
    assert!(err.contains("tools.jsonl:2"), "{err}");
    std::fs::write(&path, format!("{row}\n")).unwrap();
    alp_learner::sft::check_file(&path, &tok, &Map::new(), ex.ids.len()).unwrap();
    let err = alp_learner::sft::check_file(&path, &tok, &Map::new(), ex.ids.len() - 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tools.jsonl:1")
            && err.contains(&format!("is {} tokens", ex.ids.len()))
            && err.contains("shorten it"),
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
    // A step's batch is consecutive examples after the seed's offset.
    let batch = source.batch(3, 2, 4, &tok, &Map::new()).unwrap();
    for (i, ex) in batch.iter().enumerate() {
        let index = 3u64 * 1_000_003 + 4 + i as u64;
        assert_eq!(*ex, source.example(index, &tok, &Map::new()).unwrap());
    }
}

/// The SFT loss is HF's causal-LM loss: labels are the inputs shifted by one, -100 (ignored) where
/// not trained, and PyTorch's cross-entropy averages over the trained tokens of the whole batch. The
/// reference scores each conversation alone (no padding) through the full-vocabulary forward.
#[test]
fn loss_and_gradient_equal_pytorch_cross_entropy_with_hf_labels() {
    common::init();
    let tok = tokenizer();
    let policy = tiny_model(&tok, 3);
    let mut batch: Vec<SftExample> = [("1+2?", "3"), ("12+25?", "= 37\n#### 37")]
        .iter()
        .map(|(q, a)| encode_pair(&tok, &pair(q, a), &Map::new()).unwrap())
        .collect();
    // A multi-turn shape: an untrained stretch (a tool result) between trained ones.
    let mut ex = batch[1].clone();
    for m in &mut ex.loss_mask[ex.prompt_len + 2..ex.prompt_len + 5] {
        *m = false;
    }
    batch.push(ex);
    let params = policy.trainable_parameters();
    let grads = || -> Vec<Tensor> { params.iter().map(|(_, p)| p.grad().copy()).collect() };
    let zero = || {
        for (_, p) in &params {
            let _ = p.grad().zero_();
        }
    };

    let mut total = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    let mut trained = 0usize;
    for ex in &batch {
        let n = ex.ids.len() as i64;
        let ids = Tensor::from_slice(&ex.ids).reshape([1, n]);
        let logits = TrainablePolicy::forward(&policy, &ids, None, &NoHooks).get(0);
        let labels: Vec<i64> = (1..ex.ids.len())
            .map(|p| if ex.loss_mask[p] { ex.ids[p] } else { -100 })
            .collect();
        trained += labels.iter().filter(|&&l| l != -100).count();
        total += logits.narrow(0, 0, n - 1).cross_entropy_loss::<Tensor>(
            &Tensor::from_slice(&labels),
            None,
            Reduction::Sum,
            -100,
            0.0,
        );
    }
    let reference = total / trained as f64;
    reference.backward();
    let reference_grads = grads();
    zero();

    let (loss, tokens) = sft_loss(&policy, &batch).unwrap();
    assert_eq!(tokens, trained);
    let (a, b) = (
        f64::try_from(&loss).unwrap(),
        f64::try_from(&reference).unwrap(),
    );
    assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
    loss.backward();
    for (((name, _), got), want) in params.iter().zip(grads()).zip(&reference_grads) {
        let diff = f64::try_from((&got - want).abs().max()).unwrap();
        let scale = f64::try_from(want.abs().max()).unwrap().max(1e-6);
        assert!(
            diff <= 1e-4 * scale,
            "{name}: gradient differs by {diff} (max {scale})"
        );
    }
}

/// The learning rate of step `t` (0-based) of a warmup-then-cosine schedule, in closed form.
fn cosine_lr(s: &SftSettings, t: u64) -> f64 {
    if t < s.warmup_steps {
        return s.lr * (t + 1) as f64 / s.warmup_steps as f64;
    }
    let p = (t - s.warmup_steps) as f64 / (s.steps - s.warmup_steps) as f64;
    let m = s.min_lr_ratio;
    s.lr * (m + (1.0 - m) * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

#[test]
fn learner_warms_up_then_decays_and_the_loss_falls() {
    common::init();
    let tok = tokenizer();
    let batch: Vec<SftExample> = [("1+2?", "3"), ("2+2?", "4"), ("3+3?", "6")]
        .iter()
        .map(|(q, a)| encode_pair(&tok, &pair(q, a), &Map::new()).unwrap())
        .collect();
    let settings = SftSettings {
        steps: 20,
        lr: 1e-2,
        weight_decay: 0.0,
        warmup_steps: 3,
        min_lr_ratio: 0.1,
        max_grad_norm: 1.0,
    };
    let mut learner = SftLearner::new(&settings, tiny_model(&tok, 0));
    let mut losses = Vec::new();
    for t in 0..settings.steps {
        let out = learner.train_step(&batch).unwrap();
        // Answer tokens plus one EOS per pair.
        assert_eq!(out.tokens, 6);
        assert!(out.applied && out.grad_norm.is_finite());
        let want = cosine_lr(&settings, t);
        assert!(
            (out.lr - want).abs() < 1e-12,
            "step {t}: lr {} vs {want}",
            out.lr
        );
        losses.push(out.loss);
    }
    assert_eq!(learner.optimizer().steps_taken(), settings.steps);
    assert!(
        losses[19] < 0.5 * losses[0],
        "the loss should fall: {losses:?}"
    );
}

#[test]
fn a_non_finite_loss_leaves_the_weights_alone() {
    common::init();
    let tok = tokenizer();
    let policy = tiny_model(&tok, 1);
    let (name, mut broken) = policy.trainable_parameters().swap_remove(0);
    let _ = tch::no_grad(|| broken.fill_(f64::NAN));
    let before: Vec<Tensor> = policy
        .trainable_parameters()
        .iter()
        .map(|(_, p)| p.copy())
        .collect();
    let settings = SftSettings {
        steps: 2,
        lr: 1e-2,
        weight_decay: 0.0,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        max_grad_norm: 1.0,
    };
    let mut learner = SftLearner::new(&settings, policy);
    let batch = [encode_pair(&tok, &pair("1+2?", "3"), &Map::new()).unwrap()];
    let out = learner.train_step(&batch).unwrap();
    assert!(!out.applied && !out.loss.is_finite(), "{name}: {out:?}");
    assert_eq!(learner.optimizer().steps_taken(), 0);
    for ((n, p), b) in learner.policy().trainable_parameters().iter().zip(&before) {
        assert!(p.allclose(b, 0.0, 0.0, true), "{n} changed");
    }
}
