//! The `convert` tool: what the chat template shows the model, and how one call is run.
use alp_envs::{ToolCall, ToolSpec};
use serde_json::{json, Value};

use crate::units::convert;

pub const TOOL_NAME: &str = "convert";

/// The tool as the chat template lists it (OpenAI function schema).
pub fn spec() -> ToolSpec {
    json!({
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Convert a whole quantity between units of length (mm, cm, m, km), mass (g, kg) or time (s, min, h).",
            "parameters": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "from": {"type": "string", "description": "unit symbol, e.g. km"},
                    "to": {"type": "string", "description": "unit symbol, e.g. m"}
                },
                "required": ["value", "from", "to"]
            }
        }
    })
}

/// An assistant message calling the tool, in the Qwen3/Hermes `<tool_call>` layout that the chat
/// templates render and `alp_envs::tool_call::parse_tool_calls` reads, spaced as the templates'
/// `tojson` prints the call (so a warm start imitates exactly what a re-rendered turn looks like).
pub fn call_text(value: u64, from: &str, to: &str) -> String {
    let (from, to) = (Value::from(from), Value::from(to));
    format!(
        "<tool_call>\n{{\"name\": \"{TOOL_NAME}\", \"arguments\": {{\"value\": {value}, \"from\": {from}, \"to\": {to}}}}}\n</tool_call>"
    )
}

/// Runs one call. Every problem (a wrong tool name, missing arguments, an unknown unit) becomes the
/// reply, for the model to read, rather than an error of the episode.
pub fn run(call: &ToolCall) -> String {
    if call.function.name != TOOL_NAME {
        return format!(
            "error: unknown tool {:?}; the only tool is {TOOL_NAME:?}",
            call.function.name
        );
    }
    let args = &call.function.arguments;
    let value = args.get("value").and_then(Value::as_u64);
    let from = args.get("from").and_then(Value::as_str);
    let to = args.get("to").and_then(Value::as_str);
    match (value, from, to) {
        (Some(v), Some(f), Some(t)) => match convert(v, f, t) {
            Ok(r) => format!("{r} {t}"),
            Err(e) => format!("error: {e}"),
        },
        _ => "error: convert needs {\"value\": whole number, \"from\": unit, \"to\": unit}".into(),
    }
}
