//! The library side of `alp-rl env ...`, so the binary's glue is a few lines:
//!
//! - `env list` prints [`list_text`] (or [`list`] as JSON);
//! - `env sample NAME [--set k=v ...] [--n N] [--seed S]` builds settings with [`parse_overrides`] and prints each
//!   value of [`sample`] as one JSON line;
//! - `env score NAME --input FILE.jsonl` calls [`score_line`] on each line and prints the [`ScoreResult`] as JSON.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::env::{Environment, ScoreResult, Split};
use crate::error::EnvError;
use crate::registry::{EnvDoc, Registry};
use crate::rng::Rng;

pub use crate::settings::parse_overrides;

/// Every registered environment with its settings.
pub fn list(registry: &Registry) -> Vec<EnvDoc> {
    registry.docs()
}

/// `env list` as text: one block per environment, one line per setting with type, default and doc.
pub fn list_text(registry: &Registry) -> String {
    let mut out = String::new();
    for doc in list(registry) {
        out.push_str(&format!("{}: {}\n", doc.name, doc.summary));
        for s in &doc.settings {
            out.push_str(&format!(
                "    {} ({}, default {}): {}\n",
                s.name, s.ty, s.default, s.doc
            ));
        }
        out.push('\n');
    }
    out
}

/// Builds a registered environment from a settings table (`null` or `{}` for defaults).
pub fn build(
    registry: &Registry,
    name: &str,
    settings: &Value,
) -> Result<Arc<dyn Environment>, EnvError> {
    registry.build(name, settings)
}

/// `n` initial episodes of the train split; see [`sample_split`].
pub fn sample(
    registry: &Registry,
    name: &str,
    settings: &Value,
    n: usize,
    seed: u64,
) -> Result<Vec<Value>, EnvError> {
    sample_split(registry, name, settings, n, seed, Split::Train)
}

/// `n` initial episodes drawn from `seed`, each as `{env, id, split, seed, messages, tools?, max_turns, example}`.
/// `example` is what [`score`] takes back, so a sample line can be scored later.
pub fn sample_split(
    registry: &Registry,
    name: &str,
    settings: &Value,
    n: usize,
    seed: u64,
    split: Split,
) -> Result<Vec<Value>, EnvError> {
    let env = build(registry, name, settings)?;
    let mut rng = Rng::derive(seed, "sample");
    (0..n)
        .map(|_| {
            // 53 bits: the seed survives JSON readers that hold numbers as doubles.
            let episode_seed = rng.next_u64() >> 11;
            let ex = env.example(split, episode_seed)?;
            let episode = env.reset(&ex.data)?;
            let mut line = json!({
                "env": env.name(),
                "id": ex.id,
                "split": split,
                "seed": episode_seed,
                "messages": episode.messages,
                "max_turns": episode.max_turns(),
                "example": ex.data,
            });
            if !episode.tools.is_empty() {
                line["tools"] = json!(episode.tools);
            }
            Ok(line)
        })
        .collect()
}

/// Scores one completion. `example` is a sample line, its `example` field, or a raw dataset row.
pub fn score(
    registry: &Registry,
    name: &str,
    settings: &Value,
    example: &Value,
    completion: &str,
) -> Result<ScoreResult, EnvError> {
    build(registry, name, settings)?.score(unwrap_example(example), completion)
}

/// Scores one input line `{"example": ..., "completion": "..."}` with an already built environment.
pub fn score_line(env: &dyn Environment, line: &str) -> Result<ScoreResult, EnvError> {
    let v: Value = serde_json::from_str(line).map_err(|e| EnvError::BadInput(e.to_string()))?;
    let example = v
        .get("example")
        .ok_or_else(|| EnvError::BadInput("missing `example`".into()))?;
    let completion = v
        .get("completion")
        .and_then(Value::as_str)
        .ok_or_else(|| EnvError::BadInput("missing `completion` (a string)".into()))?;
    env.score(unwrap_example(example), completion)
}

/// A whole `sample` line carries the example in its `example` field.
fn unwrap_example(v: &Value) -> &Value {
    match v.get("example") {
        Some(inner) if v.get("messages").is_some() => inner,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_then_score_roundtrip() {
        let r = Registry::builtin();
        let settings = parse_overrides(&["digits=3", "operators=+*"]).unwrap();
        let lines = sample(&r, "arithmetic", &settings, 5, 42).unwrap();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines, sample(&r, "arithmetic", &settings, 5, 42).unwrap());
        for line in &lines {
            assert_eq!(line["messages"][0]["role"], "user");
            let solution = line["example"]["solution"].as_str().unwrap();
            let env = build(&r, "arithmetic", &settings).unwrap();
            let input = json!({"example": line, "completion": solution}).to_string();
            let verdict = score_line(env.as_ref(), &input).unwrap();
            assert!(verdict.correct && verdict.reward == 1.0);
            assert_eq!(
                verdict.extracted.as_deref(),
                line["example"]["answer"].as_str()
            );
            let wrong = score(&r, "arithmetic", &settings, &line["example"], "#### 0.5").unwrap();
            assert!(!wrong.correct && wrong.reward == 0.0);
        }
        let tools = sample(&r, "tool_math", &Value::Null, 1, 0).unwrap();
        assert_eq!(tools[0]["tools"][0]["function"]["name"], "calculator");
        assert_eq!(tools[0]["max_turns"], 4);
        assert!(tools[0]["seed"].as_u64().unwrap() < 1 << 53);
    }

    #[test]
    fn list_and_errors() {
        let r = Registry::builtin();
        let text = list_text(&r);
        for name in ["math", "arithmetic", "countdown", "tool_math"] {
            assert!(text.contains(&format!("{name}: ")), "{text}");
        }
        assert!(text.contains("digits (u32, default 2)"), "{text}");
        let e = build(&r, "nope", &Value::Null).err().unwrap().to_string();
        assert!(
            e.contains("registered: math, arithmetic, countdown, tool_math"),
            "{e}"
        );
        let env = build(&r, "arithmetic", &Value::Null).unwrap();
        assert!(matches!(
            score_line(env.as_ref(), "not json"),
            Err(EnvError::BadInput(_))
        ));
        assert!(matches!(
            score_line(env.as_ref(), "{\"example\": {}}"),
            Err(EnvError::BadInput(_))
        ));
    }
}
