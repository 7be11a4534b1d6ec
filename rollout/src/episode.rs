//! Episodes: environments (message level) meet the generation backend (token level).
//!
//! Each episode keeps one token trajectory: the rendered prompt, then every token the policy sampled
//! (loss mask 1, with its sampling log-prob `mu`) interleaved with the tokens of the environment's
//! replies (loss mask 0). Sampled tokens are never re-tokenised, so the tokens trained on are exactly
//! the tokens sampled. The environment's messages are appended as the chat template renders them: the
//! text between the conversation rendered up to the assistant's last message and the conversation
//! rendered with the new messages and a generation prompt.
//!
//! All live episodes advance in lockstep: one batched `generate` call per turn.
use std::panic::{catch_unwind, AssertUnwindSafe};

use alp_envs::{Environment, Episode, Example, Observation};
use alp_tokenizer::Tokenizer;
use serde_json::{Map, Value};

use crate::backend::{Completion, FinishReason, GenerationBackend, GenerationRequest};
use crate::error::RolloutError;
use crate::sampling::SamplingParams;

/// One finished episode as the learner and the logs see it (serialisable: the ranks of a learner
/// spread over several processes exchange them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trajectory {
    pub example_id: String,
    pub prompt_ids: Vec<i64>,
    /// Everything after the prompt: sampled tokens and environment tokens, in order.
    pub completion_ids: Vec<i64>,
    /// 1 where the policy sampled the token, 0 for environment (tool result, feedback) tokens.
    pub loss_mask: Vec<u8>,
    /// Sampling log-prob of each completion token (0.0 where `loss_mask` is 0).
    pub mu: Vec<f32>,
    pub reward: f64,
    pub correct: bool,
    /// Assistant messages the policy produced.
    pub num_turns: u32,
    /// `stop` (the environment ended the episode), `length` (a token budget ran out), `truncated`
    /// (the turn limit ended it), or `error` (see `error`).
    pub finish_reason: String,
    /// The oldest policy version that sampled any of its tokens.
    pub policy_version: u64,
    pub prompt_text: String,
    pub completion_text: String,
    /// Why the episode failed (environment error or panic, template problem); the reward is then 0.
    pub error: Option<String>,
}

/// Limits and template options of an episode run.
#[derive(Debug, Clone)]
pub struct EpisodeSettings {
    /// Bound on completion tokens (sampled plus environment) per episode.
    pub max_total_tokens: usize,
    /// Extra chat-template variables (e.g. `enable_thinking`).
    pub chat_extra: Map<String, Value>,
}

impl Default for EpisodeSettings {
    fn default() -> Self {
        EpisodeSettings {
            max_total_tokens: 1024,
            chat_extra: Map::new(),
        }
    }
}

/// A live episode and its trajectory so far.
struct Live {
    episode: Option<Episode>,
    messages: Vec<Value>,
    tools: Vec<Value>,
    traj: Trajectory,
    done: bool,
}

impl Live {
    fn fail(&mut self, reason: String) {
        tracing::warn!(example = %self.traj.example_id, %reason, "episode failed");
        self.traj.error = Some(reason);
        self.traj.finish_reason = "error".into();
        self.traj.reward = 0.0;
        self.traj.correct = false;
        self.done = true;
    }

    fn finish(&mut self, obs: &Observation, reason: &str) {
        self.traj.reward = obs.reward;
        self.traj.correct = obs.info.correct;
        self.traj.finish_reason = reason.into();
        self.done = true;
    }
}

/// The message of a caught panic (`&str` or `String` payloads), for logs and error reports.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Renders the conversation with the chat template.
fn render(
    tokenizer: &Tokenizer,
    messages: &[Value],
    tools: &[Value],
    add_generation_prompt: bool,
    extra: &Map<String, Value>,
) -> Result<String, String> {
    let tools = (!tools.is_empty()).then_some(tools);
    tokenizer
        .render_chat(messages, tools, add_generation_prompt, extra)
        .map_err(|e| format!("chat template: {e}"))
}

/// Mixes the turn number into the seed so each turn's rows draw fresh random streams.
fn turn_params(params: &SamplingParams, turn: u32) -> SamplingParams {
    SamplingParams {
        seed: params
            .seed
            .wrapping_add(0xD1B5_4A32_D192_ED03u64.wrapping_mul(turn as u64)),
        ..params.clone()
    }
}

/// Runs one episode per example, single- or multi-turn, in lockstep batches through `backend`.
///
/// Environment failures (errors or panics) fail only their episode; a backend failure fails the call.
pub fn run_episodes(
    backend: &mut dyn GenerationBackend,
    tokenizer: &Tokenizer,
    env: &dyn Environment,
    examples: &[Example],
    params: &SamplingParams,
    settings: &EpisodeSettings,
) -> Result<Vec<Trajectory>, RolloutError> {
    run_member_episodes(backend, tokenizer, env, examples, None, params, settings)
}

/// [`run_episodes`] in which episode `i`, every turn of it, is generated by population member
/// `members[i]` (the backend holds the population; see [`crate::GenerationRequest::member`]).
/// `None`: the plain policy.
pub fn run_member_episodes(
    backend: &mut dyn GenerationBackend,
    tokenizer: &Tokenizer,
    env: &dyn Environment,
    examples: &[Example],
    members: Option<&[usize]>,
    params: &SamplingParams,
    settings: &EpisodeSettings,
) -> Result<Vec<Trajectory>, RolloutError> {
    if let Some(m) = members {
        assert_eq!(m.len(), examples.len(), "one member per episode");
    }
    let _span = tracing::info_span!("episodes", env = env.name(), n = examples.len()).entered();
    let extra = &settings.chat_extra;
    let mut live: Vec<Live> = examples
        .iter()
        .map(|ex| start(tokenizer, env, ex, extra, backend.policy_version()))
        .collect();

    let mut turn = 0u32;
    loop {
        if live.iter().all(|ep| ep.done) {
            break;
        }
        let context = backend.max_context();
        let (requests, asked) = turn_requests(&mut live, context, members, params, settings);
        if asked.is_empty() {
            continue;
        }
        let completions = backend.generate(&requests, &turn_params(params, turn))?;
        turn += 1;
        for (&i, c) in asked.iter().zip(completions) {
            take_turn(&mut live[i], &c, tokenizer, context, settings);
        }
    }
    Ok(live
        .into_iter()
        .map(|ep| with_texts(ep.traj, tokenizer))
        .collect())
}

/// One request per live episode: its conversation so far, with the token budget left (an episode
/// whose conversation already fills the model's context fails instead). Returns the requests and the
/// episode each one continues.
fn turn_requests(
    live: &mut [Live],
    context: Option<usize>,
    members: Option<&[usize]>,
    params: &SamplingParams,
    settings: &EpisodeSettings,
) -> (Vec<GenerationRequest>, Vec<usize>) {
    let mut requests = Vec::new();
    let mut asked = Vec::new();
    for (i, ep) in live.iter_mut().enumerate().filter(|(_, ep)| !ep.done) {
        let t = &ep.traj;
        let used = t.prompt_ids.len() + t.completion_ids.len();
        // The model cannot attend past its context: a prompt that already fills it fails its
        // episode (it is the data's problem, not the run's), and no turn may sample past it.
        if let Some(ctx) = context.filter(|&ctx| used >= ctx) {
            let reason = format!(
                "the conversation is {used} tokens but the model's context \
                 (max_position_embeddings) is {ctx}; shorten the prompt"
            );
            ep.fail(reason);
            continue;
        }
        let budget = settings
            .max_total_tokens
            .saturating_sub(t.completion_ids.len())
            .min(context.map_or(usize::MAX, |ctx| ctx - used));
        let mut prompt = t.prompt_ids.clone();
        prompt.extend_from_slice(&t.completion_ids);
        requests.push(GenerationRequest {
            prompt_ids: prompt,
            max_new_tokens: Some(budget.min(params.max_new_tokens)),
            stop_token_ids: None,
            member: members.map(|m| m[i]),
            stream: Some(i as u64),
        });
        asked.push(i);
    }
    (requests, asked)
}

/// Appends the completion `c` of one turn to episode `ep`, lets the environment answer it and
/// appends the answer's tokens, or ends the episode (done, out of tokens, or failed).
fn take_turn(
    ep: &mut Live,
    c: &Completion,
    tokenizer: &Tokenizer,
    context: Option<usize>,
    settings: &EpisodeSettings,
) {
    ep.traj.policy_version = ep.traj.policy_version.min(c.policy_version);
    ep.traj.num_turns += 1;
    ep.traj.completion_ids.extend_from_slice(&c.completion_ids);
    ep.traj
        .loss_mask
        .extend(std::iter::repeat_n(1u8, c.completion_ids.len()));
    ep.traj.mu.extend_from_slice(&c.logprobs);
    let ids: Vec<u32> = c.completion_ids.iter().map(|&t| t as u32).collect();
    let text = match tokenizer.decode(&ids, true) {
        Ok(text) => text,
        Err(e) => return ep.fail(format!("cannot decode the completion: {e}")),
    };
    let episode = ep.episode.as_mut().expect("live episodes have an episode");
    let obs = match catch_unwind(AssertUnwindSafe(|| episode.step(&text))) {
        Ok(Ok(obs)) => obs,
        Ok(Err(e)) => return ep.fail(format!("environment error: {e}")),
        Err(panic) => return ep.fail(format!("environment panicked: {}", panic_message(panic))),
    };
    let out_of_tokens = ep.traj.completion_ids.len() >= settings.max_total_tokens;
    if obs.done {
        let reason = if obs.info.truncated {
            "truncated"
        } else {
            "stop"
        };
        ep.finish(&obs, reason);
    } else if c.finish_reason == FinishReason::Length || out_of_tokens {
        ep.finish(&obs, "length");
    } else {
        append_reply(ep, &obs, &text, tokenizer, context, settings);
    }
}

/// Appends the assistant's `text` and the environment's reply in `obs` to the conversation, and the
/// reply's tokens (loss mask 0) to the trajectory.
fn append_reply(
    ep: &mut Live,
    obs: &Observation,
    text: &str,
    tokenizer: &Tokenizer,
    context: Option<usize>,
    settings: &EpisodeSettings,
) {
    ep.messages.push(assistant_message(text));
    let so_far = [ep.traj.prompt_ids.as_slice(), &ep.traj.completion_ids].concat();
    let new = obs
        .messages
        .iter()
        .map(|m| serde_json::to_value(m).expect("messages serialise"));
    let extra = &settings.chat_extra;
    match env_tokens(tokenizer, &mut ep.messages, &ep.tools, &so_far, new, extra) {
        // The reply must leave room for at least one more sampled token within both
        // `max_total_tokens` and the model's context; otherwise the episode ends here
        // (`length`) and the reply is not appended, so no episode exceeds its budget.
        Ok(ids)
            if ep.traj.completion_ids.len() + ids.len() >= settings.max_total_tokens
                || context.is_some_and(|ctx| so_far.len() + ids.len() >= ctx) =>
        {
            ep.finish(obs, "length");
        }
        Ok(ids) => {
            ep.traj
                .loss_mask
                .extend(std::iter::repeat_n(0u8, ids.len()));
            ep.traj.mu.extend(std::iter::repeat_n(0.0f32, ids.len()));
            ep.traj.completion_ids.extend(ids);
        }
        Err(reason) => ep.fail(reason),
    }
}

/// The finished trajectory with its prompt and completion decoded (special tokens kept).
fn with_texts(mut traj: Trajectory, tokenizer: &Tokenizer) -> Trajectory {
    let decode = |ids: &[i64]| {
        let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
        tokenizer.decode(&ids, false).unwrap_or_default()
    };
    traj.prompt_text = decode(&traj.prompt_ids);
    traj.completion_text = decode(&traj.completion_ids);
    traj
}

/// Resets the environment on `example` and renders the initial prompt.
fn start(
    tokenizer: &Tokenizer,
    env: &dyn Environment,
    example: &Example,
    extra: &Map<String, Value>,
    version: u64,
) -> Live {
    let mut live = Live {
        episode: None,
        messages: Vec::new(),
        tools: Vec::new(),
        traj: Trajectory {
            example_id: example.id.clone(),
            prompt_ids: Vec::new(),
            completion_ids: Vec::new(),
            loss_mask: Vec::new(),
            mu: Vec::new(),
            reward: 0.0,
            correct: false,
            num_turns: 0,
            finish_reason: String::new(),
            policy_version: version,
            prompt_text: String::new(),
            completion_text: String::new(),
            error: None,
        },
        done: false,
    };
    let episode = match catch_unwind(AssertUnwindSafe(|| env.reset(&example.data))) {
        Ok(Ok(episode)) => episode,
        Ok(Err(e)) => {
            live.fail(format!("environment reset failed: {e}"));
            return live;
        }
        Err(panic) => {
            live.fail(format!(
                "environment reset panicked: {}",
                panic_message(panic)
            ));
            return live;
        }
    };
    live.messages = episode
        .messages
        .iter()
        .map(|m| serde_json::to_value(m).expect("messages serialise"))
        .collect();
    live.tools = episode.tools.clone();
    live.episode = Some(episode);
    match prompt_ids(tokenizer, &live.messages, &live.tools, extra) {
        Ok(ids) => live.traj.prompt_ids = ids,
        Err(reason) => live.fail(reason),
    }
    live
}

/// The prompt's tokens: the conversation rendered with the generation prompt.
fn prompt_ids(
    tokenizer: &Tokenizer,
    messages: &[Value],
    tools: &[Value],
    extra: &Map<String, Value>,
) -> Result<Vec<i64>, String> {
    let text = render(tokenizer, messages, tools, true, extra)?;
    let ids = tokenizer.encode(&text, false).map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("the rendered prompt is empty".into());
    }
    Ok(ids.into_iter().map(i64::from).collect())
}

/// The assistant turn as the conversation records it: the text of the sampled tokens, special tokens
/// (the EOS the engine stopped on) left out.
fn assistant_message(text: &str) -> Value {
    serde_json::json!({"role": "assistant", "content": text})
}

/// The tokens that follow an assistant turn: the environment's `new` messages (and the next generation
/// prompt) as the chat template renders them, for the trajectory to append with loss mask 0. `messages`
/// is the conversation so far, ending with the assistant turn whose tokens end `so_far`; the new
/// messages are appended to it.
fn env_tokens(
    tokenizer: &Tokenizer,
    messages: &mut Vec<Value>,
    tools: &[Value],
    so_far: &[i64],
    new: impl IntoIterator<Item = Value>,
    extra: &Map<String, Value>,
) -> Result<Vec<i64>, String> {
    let before = render(tokenizer, messages, tools, false, extra)?;
    messages.extend(new);
    let after = render(tokenizer, messages, tools, true, extra)?;
    let Some(new_messages) = after.strip_prefix(before.as_str()) else {
        return Err(
            "the chat template re-renders earlier turns when messages are added (it is not \
                    prefix-stable), so multi-turn tokens cannot be appended without re-tokenising"
                .into(),
        );
    };
    // What the template puts after the sampled tokens of the assistant turn (e.g. the newline after
    // `<|im_end|>`) is not sampled either: it joins the masked environment tokens.
    let so_far: Vec<u32> = so_far.iter().map(|&t| t as u32).collect();
    let sampled_text = tokenizer
        .decode(&so_far, false)
        .map_err(|e| e.to_string())?;
    let Some(gap) = before.strip_prefix(sampled_text.as_str()) else {
        return Err(
            "the chat template renders the assistant turn differently from the sampled \
                    tokens (e.g. it strips reasoning), so the trajectory cannot continue"
                .into(),
        );
    };
    let ids = tokenizer
        .encode(&format!("{gap}{new_messages}"), false)
        .map_err(|e| e.to_string())?;
    Ok(ids.into_iter().map(i64::from).collect())
}

/// A conversation as token ids, laid out as [`run_episodes`] records an episode.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedConversation {
    /// The prompt rendered with the chat template and its generation prompt.
    pub prompt_ids: Vec<i64>,
    /// Assistant tokens and the environment's tokens, in order.
    pub completion_ids: Vec<i64>,
    /// 1 on the assistant's tokens (each turn's text and the EOS that ends it), 0 on the environment's
    /// messages and the template text around them.
    pub loss_mask: Vec<u8>,
}

/// The tokens and loss mask [`run_episodes`] would record if the policy wrote the assistant messages of
/// `turns`, each ended by the tokenizer's EOS (where the engine stops), and the environment answered with
/// the other messages: supervised training on worked conversations then trains exactly the tokens RL
/// samples and trains on.
///
/// `prompt` holds the messages before the first assistant turn; `turns` alternates assistant messages
/// (`{"role": "assistant", "content": "..."}`, tool calls written in the content as the model writes
/// them) with the environment's messages (tool results, feedback; any roles but `assistant`), beginning
/// and ending with an assistant message.
pub fn encode_conversation(
    tokenizer: &Tokenizer,
    prompt: &[Value],
    tools: &[Value],
    turns: &[Value],
    extra: &Map<String, Value>,
) -> Result<TokenizedConversation, RolloutError> {
    let bad = |problem: String| RolloutError::Conversation(problem);
    let eos = tokenizer.eos_token_id().ok_or_else(|| {
        bad("the tokenizer has no EOS token to end the assistant turns with".into())
    })?;
    let is_assistant = |m: &Value| m.get("role").and_then(Value::as_str) == Some("assistant");
    if !turns.first().is_some_and(is_assistant) || !turns.last().is_some_and(is_assistant) {
        return Err(bad(
            "the turns must begin and end with an assistant message".into(),
        ));
    }
    let mut messages = prompt.to_vec();
    let mut out = TokenizedConversation {
        prompt_ids: prompt_ids(tokenizer, &messages, tools, extra).map_err(bad)?,
        completion_ids: Vec::new(),
        loss_mask: Vec::new(),
    };
    let mut pending: Vec<Value> = Vec::new();
    for (i, m) in turns.iter().enumerate() {
        if !is_assistant(m) {
            if m.get("role").and_then(Value::as_str).is_none() {
                return Err(bad(format!("turn {i} has no `role` string")));
            }
            pending.push(m.clone());
            continue;
        }
        if m.get("tool_calls").is_some_and(|c| !c.is_null()) {
            return Err(bad(format!(
                "assistant turn {i} has structured `tool_calls`; write the calls in its content as \
                 the model generates them (e.g. <tool_call>{{...}}</tool_call>)"
            )));
        }
        let Some(text) = m.get("content").and_then(Value::as_str) else {
            return Err(bad(format!("assistant turn {i} has no `content` string")));
        };
        if i > 0 {
            let so_far = [out.prompt_ids.as_slice(), &out.completion_ids].concat();
            let ids = env_tokens(
                tokenizer,
                &mut messages,
                tools,
                &so_far,
                pending.drain(..),
                extra,
            )
            .map_err(bad)?;
            out.loss_mask.extend(std::iter::repeat_n(0u8, ids.len()));
            out.completion_ids.extend(ids);
        }
        let mut ids: Vec<i64> = tokenizer
            .encode(text, false)
            .map_err(|e| bad(format!("assistant turn {i}: {e}")))?
            .into_iter()
            .map(i64::from)
            .collect();
        ids.push(i64::from(eos));
        out.loss_mask.extend(std::iter::repeat_n(1u8, ids.len()));
        out.completion_ids.extend(ids);
        messages.push(assistant_message(text));
    }
    Ok(out)
}
