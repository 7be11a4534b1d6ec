//! The conversations SFT learns from: a prompt and the turns after it, from an environment's worked
//! answers (`reference_turns` on its train split) or from the rows of a JSONL file.
use std::path::Path;

use alp_envs::{Environment, Split};
use serde_json::Value;

use super::error::SftDataError;

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

/// The message roles an SFT row may use.
pub const ROLES: &[&str] = alp_envs::Role::ALL;

/// The worked conversation of the environment's train example of seed `index`, and its name.
pub fn env_pair(env: &dyn Environment, index: u64) -> Result<(String, SftPair), SftDataError> {
    let example = env.example(Split::Train, index)?;
    let origin = format!("environment `{}` example {}", env.name(), example.id);
    let episode = env.reset(&example.data)?;
    let Some(turns) = env.reference_turns(&example.data)? else {
        return Err(SftDataError::NoWorkedAnswer { origin });
    };
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

/// One pair per non-empty line, named `path:line`: `{"prompt": "...", "completion": "..."}` (the
/// prompt becomes one user message), or `{"messages": [...], "tools": [...]}`: the messages before the
/// first assistant message are the prompt, every assistant message from there on is learnt and the
/// messages between them (tool results) are not; the last message must be the assistant's. `tools`
/// (optional) lists the tool specs the chat template shows.
pub fn read_jsonl(path: &Path) -> Result<Vec<(String, SftPair)>, SftDataError> {
    let text = std::fs::read_to_string(path).map_err(|source| SftDataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let row: Value = match serde_json::from_str(line) {
            Ok(row) => row,
            Err(source) => return Err(SftDataError::NotJson { at, source }),
        };
        match parse_row(&row) {
            Ok(pair) => rows.push((at, pair)),
            Err(problem) => return Err(SftDataError::Row { at, problem }),
        }
    }
    if rows.is_empty() {
        return Err(SftDataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(rows)
}

/// One JSONL row as a pair, or what is wrong with it.
fn parse_row(row: &Value) -> Result<SftPair, String> {
    let Some(messages) = row.get("messages").and_then(Value::as_array) else {
        return match (
            row.get("prompt").and_then(Value::as_str),
            row.get("completion").and_then(Value::as_str),
        ) {
            (Some(prompt), Some(completion)) => Ok(SftPair::single(
                vec![serde_json::json!({"role": "user", "content": prompt})],
                Vec::new(),
                completion,
            )),
            _ => {
                Err("expected {\"prompt\", \"completion\"} strings or a {\"messages\"} list".into())
            }
        };
    };
    let tools = match row.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) if tools.iter().all(Value::is_object) => tools.clone(),
        Some(_) => {
            return Err(
                "`tools` must be a list of tool specs (JSON objects such as {\"type\": \"function\", \"function\": {...}})"
                    .into(),
            )
        }
    };
    for (k, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        if !role.is_some_and(|r| ROLES.contains(&r)) {
            return Err(format!(
                "message {} has role {}; allowed: {}",
                k + 1,
                m.get("role").map_or("(none)".to_string(), Value::to_string),
                ROLES.join(", ")
            ));
        }
        if !m.get("content").is_some_and(Value::is_string) {
            return Err(format!(
                "message {} needs a `content` string (tool calls are written in the assistant's \
                 content)",
                k + 1
            ));
        }
    }
    let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_string);
    let first = messages
        .iter()
        .position(|m| role(m).as_deref() == Some("assistant"));
    match (first, messages.last().and_then(role).as_deref()) {
        (Some(first), Some("assistant")) if first > 0 => Ok(SftPair {
            messages: messages[..first].to_vec(),
            tools,
            turns: messages[first..].to_vec(),
        }),
        _ => Err(
            "`messages` must hold the prompt (at least one message), then the assistant's turns; the last message must be the assistant's"
                .into(),
        ),
    }
}
