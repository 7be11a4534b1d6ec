//! Episodes: environment messages become masked tokens, sampled tokens are kept as sampled, and a
//! failing environment fails only its own episode.
use alp_envs::{EnvError, Environment, Episode, Example, Message, Split};
use alp_rollout::{
    encode_conversation, run_episodes, EpisodeSettings, LocalEngine, SamplingParams,
};
use alp_test_support::backend::ScriptedBackend;
use alp_test_support::tiny_model::TinyModel;
use alp_tokenizer::{CharTokenizerSpec, Tokenizer};
use serde_json::{json, Value};

/// A tiny tied Qwen2 shape over `tok`'s vocabulary.
fn tiny_model(tok: &Tokenizer) -> TinyModel {
    TinyModel::new("qwen2")
        .with("vocab_size", tok.vocab_size())
        .with("tie_word_embeddings", true)
}

fn tokenizer() -> Tokenizer {
    CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
        .build()
        .unwrap()
}

const SCRIPTED_LOGPROB: f32 = -0.25;

/// A backend that answers turn `t` of every row with `replies[t]` followed by EOS, with log-prob
/// [`SCRIPTED_LOGPROB`] at policy version 7, in a model context of `context` tokens.
fn scripted(replies: Vec<String>, context: Option<usize>) -> ScriptedBackend {
    let mut backend = ScriptedBackend::per_turn(tokenizer(), replies);
    backend.logprob = SCRIPTED_LOGPROB;
    backend.policy_version = 7;
    backend.context = context;
    backend
}

#[test]
fn tool_results_are_masked_and_sampled_tokens_kept_exactly() {
    let tok = tokenizer();
    let env = alp_envs::Registry::builtin()
        .build("tool_math", &json!({}))
        .unwrap();
    let example = env.example(Split::Train, 3).unwrap();
    let expression = example.data["expression"].as_str().unwrap().to_string();
    let answer = example.data["answer"].as_str().unwrap().to_string();
    let call = format!(
        "<tool_call>{{\"name\": \"calculator\", \"arguments\": {{\"expression\": \"{expression}\"}}}}</tool_call>"
    );
    let final_answer = format!("The answer is \\boxed{{{answer}}}.");
    let mut backend = scripted(vec![call.clone(), final_answer.clone()], None);
    let params = SamplingParams::default();
    let out = run_episodes(
        &mut backend,
        &tok,
        env.as_ref(),
        std::slice::from_ref(&example),
        &params,
        &EpisodeSettings::default(),
    )
    .unwrap();
    let t = &out[0];
    assert_eq!(t.error, None);
    assert_eq!(t.num_turns, 2);
    assert_eq!(t.finish_reason, "stop");
    assert!(t.correct, "the final answer {answer} is right");
    assert_eq!(t.reward, 1.0);
    assert_eq!(t.policy_version, 7);

    // Layout: turn-1 tokens (mask 1), tool-result tokens (mask 0), turn-2 tokens (mask 1).
    let eos = tok.eos_token_id().unwrap() as i64;
    let turn1: Vec<i64> = tok
        .encode(&call, false)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .chain([eos])
        .collect();
    let turn2: Vec<i64> = tok
        .encode(&final_answer, false)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .chain([eos])
        .collect();
    let n = t.completion_ids.len();
    assert_eq!(t.loss_mask.len(), n);
    assert_eq!(t.mu.len(), n);
    assert_eq!(&t.completion_ids[..turn1.len()], turn1.as_slice());
    assert_eq!(&t.completion_ids[n - turn2.len()..], turn2.as_slice());
    let env_len = n - turn1.len() - turn2.len();
    assert!(env_len > 0);
    let expected_mask: Vec<u8> = [
        vec![1u8; turn1.len()],
        vec![0; env_len],
        vec![1; turn2.len()],
    ]
    .concat();
    assert_eq!(t.loss_mask, expected_mask);
    for (m, mu) in t.loss_mask.iter().zip(&t.mu) {
        assert_eq!(*mu, if *m == 1 { SCRIPTED_LOGPROB } else { 0.0 });
    }

    // The masked span is the tool turn as the template renders it, ending in the generation prompt,
    // and it carries the calculator's result.
    let env_ids: Vec<u32> = t.completion_ids[turn1.len()..turn1.len() + env_len]
        .iter()
        .map(|&x| x as u32)
        .collect();
    let env_text = tok.decode(&env_ids, false).unwrap();
    assert!(
        env_text.contains("<|im_start|>tool") && env_text.ends_with("<|im_start|>assistant\n"),
        "{env_text:?}"
    );
    assert!(
        env_text.contains(&answer),
        "tool result {answer} missing from {env_text:?}"
    );

    // No drift: the whole trajectory is the template's rendering of the conversation.
    let episode = env.reset(&example.data).unwrap();
    let mut convo: Vec<Value> = episode
        .messages
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    convo.push(json!({"role": "assistant", "content": call}));
    convo.push(json!({"role": "tool", "content": answer, "name": "calculator"}));
    convo.push(json!({"role": "assistant", "content": final_answer}));
    let rendered = tok
        .render_chat(&convo, None, false, &Default::default())
        .unwrap();
    assert!(
        rendered.starts_with(&(t.prompt_text.clone() + &t.completion_text)),
        "{rendered:?}\nvs\n{}{}",
        t.prompt_text,
        t.completion_text
    );
    // The second call's prompt is the first call's prompt plus everything appended since.
    assert_eq!(
        backend.calls[1][0].prompt_ids,
        [
            t.prompt_ids.clone(),
            t.completion_ids[..n - turn2.len()].to_vec()
        ]
        .concat()
    );
}

#[test]
fn encoded_reference_conversations_are_the_trajectories_the_runner_records() {
    let tok = tokenizer();
    let env = alp_envs::Registry::builtin()
        .build(
            "tool_math",
            &json!({"max_turns": 3, "source_settings": {"digits": 2, "operators": "+-*/"}}),
        )
        .unwrap();
    for seed in 0..20 {
        let example = env.example(Split::Train, seed).unwrap();
        let turns = env.reference_turns(&example.data).unwrap().unwrap();
        let replies: Vec<String> = turns
            .iter()
            .filter(|m| m.role == alp_envs::Role::Assistant)
            .map(|m| m.content.clone())
            .collect();
        assert_eq!(replies.len(), 2, "a call, then the answer: {turns:?}");
        let mut backend = scripted(replies, None);
        let t = run_episodes(
            &mut backend,
            &tok,
            env.as_ref(),
            std::slice::from_ref(&example),
            &SamplingParams::default(),
            &EpisodeSettings::default(),
        )
        .unwrap()
        .remove(0);
        assert!(t.correct && t.error.is_none(), "{t:?}");
        let episode = env.reset(&example.data).unwrap();
        let values = |ms: &[Message]| -> Vec<Value> {
            ms.iter()
                .map(|m| serde_json::to_value(m).unwrap())
                .collect()
        };
        let encoded = encode_conversation(
            &tok,
            &values(&episode.messages),
            &episode.tools,
            &values(&turns),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(encoded.prompt_ids, t.prompt_ids);
        assert_eq!(encoded.completion_ids, t.completion_ids);
        assert_eq!(encoded.loss_mask, t.loss_mask);
        // The tool result is among the masked tokens.
        let masked: Vec<u32> = t
            .completion_ids
            .iter()
            .zip(&t.loss_mask)
            .filter(|(_, &m)| m == 0)
            .map(|(&id, _)| id as u32)
            .collect();
        let masked = tok.decode(&masked, false).unwrap();
        assert!(masked.contains(&turns[1].content), "{masked:?}");
    }

    // A plain single answer is the prompt, the answer and EOS, all of it trained.
    let prompt = [json!({"role": "user", "content": "2+2?"})];
    let one = encode_conversation(
        &tok,
        &prompt,
        &[],
        &[json!({"role": "assistant", "content": "4"})],
        &Default::default(),
    )
    .unwrap();
    let eos = tok.eos_token_id().unwrap() as i64;
    assert_eq!(
        one.completion_ids,
        [tok.encode("4", false).unwrap()[0] as i64, eos]
    );
    assert_eq!(one.loss_mask, [1, 1]);
    for (turns, needle) in [
        (
            vec![json!({"role": "tool", "content": "4"})],
            "begin and end with an assistant message",
        ),
        (
            vec![
                json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calculator"}}]}),
            ],
            "structured `tool_calls`",
        ),
        (
            vec![json!({"role": "assistant", "content": 4})],
            "no `content` string",
        ),
    ] {
        let e = encode_conversation(&tok, &prompt, &[], &turns, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

/// An environment whose episodes panic on the assistant's message when the example says so.
struct Fragile;

impl Environment for Fragile {
    fn name(&self) -> &str {
        "fragile"
    }
    fn num_examples(&self, _: Split) -> Result<Option<usize>, EnvError> {
        Ok(None)
    }
    fn example(&self, _: Split, seed: u64) -> Result<Example, EnvError> {
        Ok(Example {
            id: seed.to_string(),
            data: json!({"panic": seed % 2 == 1}),
        })
    }
    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let panics = example["panic"].as_bool().unwrap();
        Ok(Episode::single_turn(
            vec![Message::user("say hi")],
            move |_| {
                if panics {
                    panic!("reward code bug");
                }
                alp_envs::Observation::finished(0.5, Default::default())
            },
        ))
    }
}

#[test]
fn a_panicking_environment_fails_only_its_episode() {
    let tok = tokenizer();
    let examples: Vec<Example> = (0..4)
        .map(|s| Fragile.example(Split::Train, s).unwrap())
        .collect();
    let mut backend = scripted(vec!["hi".into()], None);
    let out = run_episodes(
        &mut backend,
        &tok,
        &Fragile,
        &examples,
        &SamplingParams::default(),
        &EpisodeSettings::default(),
    )
    .unwrap();
    for (i, t) in out.iter().enumerate() {
        if i % 2 == 1 {
            assert_eq!(t.finish_reason, "error");
            assert!(t.error.as_deref().unwrap().contains("reward code bug"));
            assert_eq!(t.reward, 0.0);
        } else {
            assert_eq!(t.error, None);
            assert_eq!(t.reward, 0.5);
        }
    }
}

#[test]
fn single_turn_episodes_on_the_local_engine_score_their_own_text() {
    tch::set_num_threads(1);
    let tok = tokenizer();
    let model = tiny_model(&tok).random(1);
    let mut engine = LocalEngine::new(model, 8);
    let env = alp_envs::Registry::builtin()
        .build("arithmetic", &json!({}))
        .unwrap();
    let examples: Vec<Example> = (0..6)
        .map(|s| env.example(Split::Train, s).unwrap())
        .collect();
    let params = SamplingParams {
        max_new_tokens: 16,
        stop_token_ids: vec![tok.eos_token_id().unwrap() as i64],
        seed: 3,
        ..Default::default()
    };
    let settings = EpisodeSettings {
        max_total_tokens: 12,
        ..Default::default()
    };
    let out = run_episodes(
        &mut engine,
        &tok,
        env.as_ref(),
        &examples,
        &params,
        &settings,
    )
    .unwrap();
    assert_eq!(out.len(), 6);
    for (t, ex) in out.iter().zip(&examples) {
        assert_eq!(t.num_turns, 1);
        assert!(t.loss_mask.iter().all(|&m| m == 1));
        assert_eq!(t.mu.len(), t.completion_ids.len());
        assert!(
            t.completion_ids.len() <= 12,
            "max_total_tokens bounds the completion"
        );
        assert!(t.finish_reason == "stop" || t.finish_reason == "length");
        let ids: Vec<u32> = t.completion_ids.iter().map(|&x| x as u32).collect();
        let text = tok.decode(&ids, true).unwrap();
        let score = env.score(&ex.data, &text).unwrap();
        assert_eq!(t.reward, score.reward);
        assert_eq!(t.correct, score.correct);
    }
}

/// A tool call whose answer has 309 digits, and the episode's token budget.
fn huge_reply_episode(
    max_total_tokens: usize,
    context: Option<usize>,
) -> (Vec<alp_rollout::Trajectory>, usize) {
    let tok = tokenizer();
    let env = alp_envs::Registry::builtin()
        .build("tool_math", &json!({}))
        .unwrap();
    let example = env.example(Split::Train, 3).unwrap();
    let call = "<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"10^308\"}}</tool_call>";
    let mut backend = scripted(vec![call.into(), "\\boxed{1}".into()], context);
    let settings = EpisodeSettings {
        max_total_tokens,
        ..Default::default()
    };
    let out = run_episodes(
        &mut backend,
        &tok,
        env.as_ref(),
        std::slice::from_ref(&example),
        &SamplingParams::default(),
        &settings,
    )
    .unwrap();
    (out, backend.calls.len())
}

#[test]
fn a_tool_reply_past_max_total_tokens_ends_the_episode_without_it() {
    // The call is about 90 tokens with the char tokenizer; its 309-digit reply does not fit in 150.
    let (out, calls) = huge_reply_episode(150, None);
    let t = &out[0];
    assert_eq!(t.error, None);
    assert_eq!(t.finish_reason, "length");
    assert_eq!(t.num_turns, 1);
    assert_eq!(calls, 1, "no turn is sampled after the budget ran out");
    assert!(t.completion_ids.len() <= 150, "{}", t.completion_ids.len());
    assert!(
        t.loss_mask.iter().all(|&m| m == 1),
        "the reply was not appended"
    );
    // With room for it, the same reply is appended and the episode goes on.
    let (out, calls) = huge_reply_episode(2000, None);
    assert_eq!(calls, 2);
    assert_eq!(out[0].num_turns, 2);
    assert!(out[0].loss_mask.contains(&0));
}

#[test]
fn the_model_context_bounds_every_episode() {
    // Budget 2000 but a 300-token context: the reply cannot fit the context.
    let (out, calls) = huge_reply_episode(2000, Some(300));
    let t = &out[0];
    assert_eq!((t.finish_reason.as_str(), calls), ("length", 1));
    assert!(t.prompt_ids.len() + t.completion_ids.len() < 300);
    // A prompt longer than the context fails its episode with the reason, before any generation.
    let (out, calls) = huge_reply_episode(2000, Some(20));
    let t = &out[0];
    assert_eq!((t.finish_reason.as_str(), calls), ("error", 0));
    let e = t.error.as_deref().unwrap();
    assert!(
        e.contains("max_position_embeddings") && e.contains("20"),
        "{e}"
    );
}

/// Episodes of 1 to 3 turns whatever the model writes: each turn gets a user reply ("again") until
/// the example's turn count is reached.
struct Chatty;

struct ChattyLogic {
    turns: u32,
}

impl alp_envs::EpisodeLogic for ChattyLogic {
    fn step(&mut self, _assistant: &str, turn: alp_envs::Turn) -> alp_envs::Observation {
        if turn.index + 1 >= self.turns {
            return alp_envs::Observation::finished(1.0, Default::default());
        }
        alp_envs::Observation {
            messages: vec![Message::user("again")],
            reward: 0.0,
            done: false,
            info: Default::default(),
        }
    }
}

impl Environment for Chatty {
    fn name(&self) -> &str {
        "chatty"
    }
    fn max_turns(&self) -> u32 {
        3
    }
    fn num_examples(&self, _: Split) -> Result<Option<usize>, EnvError> {
        Ok(None)
    }
    fn example(&self, _: Split, seed: u64) -> Result<Example, EnvError> {
        Ok(Example {
            id: seed.to_string(),
            data: json!({"turns": seed % 3 + 1}),
        })
    }
    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let turns = example["turns"].as_u64().unwrap() as u32;
        Ok(Episode::new(
            vec![Message::user("count")],
            Vec::new(),
            3,
            Box::new(ChattyLogic { turns }),
        ))
    }
}

/// Multi-turn episodes on a continuously batched engine record the same trajectories as on an engine
/// that generates one request at a time: each turn's continuation is a new request that takes a free
/// slot while other episodes' turns are still decoding.
#[test]
fn multi_turn_episodes_are_the_same_with_continuous_batching() {
    tch::set_num_threads(1);
    let tok = tokenizer();
    let shape = tiny_model(&tok);
    let env = Chatty;
    let examples: Vec<Example> = (0..10)
        .map(|s| env.example(Split::Train, s).unwrap())
        .collect();
    // Many stop tokens, so that this random model's turns usually stop (a turn cut by its length ends
    // the episode) after different numbers of tokens.
    let mut stop: Vec<i64> = (30..60).collect();
    stop.push(tok.eos_token_id().unwrap() as i64);
    let params = SamplingParams {
        max_new_tokens: 12,
        stop_token_ids: stop,
        seed: 4,
        ..Default::default()
    };
    let settings = EpisodeSettings {
        max_total_tokens: 200,
        ..Default::default()
    };
    let run = |batch: usize| {
        let mut engine = LocalEngine::new(shape.random(2), batch);
        run_episodes(&mut engine, &tok, &env, &examples, &params, &settings).unwrap()
    };
    let (alone, continuous) = (run(1), run(3));
    assert_eq!(alone.len(), continuous.len());
    assert!(
        alone.iter().any(|t| t.num_turns == 3),
        "multi-turn episodes ran"
    );
    for (i, (a, b)) in alone.iter().zip(&continuous).enumerate() {
        assert_eq!(a.completion_ids, b.completion_ids, "episode {i}");
        assert_eq!(a.loss_mask, b.loss_mask, "episode {i}");
        assert_eq!(a.num_turns, b.num_turns, "episode {i}");
        for (x, y) in a.mu.iter().zip(&b.mu) {
            assert!((x - y).abs() < 1e-4, "episode {i}: {x} vs {y}");
        }
    }
}
