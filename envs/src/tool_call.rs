//! Parsing tool calls out of an assistant message in the Qwen3/Hermes format:
//! `<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>`.
//! The text is untrusted: every malformed call becomes an error value with a message meant for the model, and
//! the work is linear in the text length.

use serde_json::Value;

use crate::message::{Message, ToolCall};
use crate::rational::abbreviate;

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";
/// Longest JSON body accepted inside one `<tool_call>` block.
pub const MAX_CALL_CHARS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolCallError {
    #[error("<tool_call> is never closed with </tool_call>")]
    Unterminated,
    #[error("the tool call is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "the tool call is not valid JSON ({0}); write {{\"name\": ..., \"arguments\": {{...}}}}"
    )]
    InvalidJson(String),
    #[error("the tool call must be a JSON object with \"name\" and \"arguments\"")]
    NotAnObject,
    #[error("the tool call has no \"name\" string")]
    MissingName,
    #[error("\"arguments\" must be a JSON object")]
    BadArguments,
    #[error("too many tool calls in one message; at most {0} are run")]
    TooMany(usize),
}

/// One assistant message split into its text and its tool calls (each parsed or refused).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTurn {
    /// The text outside the `<tool_call>` blocks, trimmed.
    pub content: String,
    pub calls: Vec<Result<ToolCall, ToolCallError>>,
}

impl ParsedTurn {
    /// The assistant message as a chat template wants it (only the well-formed calls).
    pub fn to_message(&self) -> Message {
        let mut m = Message::assistant(self.content.clone());
        m.tool_calls = self
            .calls
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        m
    }
}

/// Whether the text tries to call a tool at all (even malformed).
pub fn mentions_tool_call(text: &str) -> bool {
    text.contains(OPEN)
}

/// Splits `text` into content and calls. At most `max_calls` calls are parsed; one more yields
/// [`ToolCallError::TooMany`] and the rest are dropped.
pub fn parse_tool_calls(text: &str, max_calls: usize) -> ParsedTurn {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        content.push_str(&rest[..i]);
        let body_start = &rest[i + OPEN.len()..];
        let (body, after) = match body_start.find(CLOSE) {
            Some(j) => (Some(&body_start[..j]), &body_start[j + CLOSE.len()..]),
            None => (None, ""),
        };
        if calls.len() == max_calls {
            calls.push(Err(ToolCallError::TooMany(max_calls)));
            rest = "";
            break;
        }
        calls.push(match body {
            Some(b) => parse_call(b),
            None => Err(ToolCallError::Unterminated),
        });
        rest = after;
    }
    content.push_str(rest);
    ParsedTurn {
        content: content.trim().to_string(),
        calls,
    }
}

/// Parses the JSON body of one call.
pub fn parse_call(body: &str) -> Result<ToolCall, ToolCallError> {
    let body = body.trim();
    let len = body.chars().count();
    if len > MAX_CALL_CHARS {
        return Err(ToolCallError::TooLong {
            len,
            max: MAX_CALL_CHARS,
        });
    }
    // serde_json refuses nesting deeper than 128 levels, so hostile JSON cannot overflow the stack.
    let v: Value = serde_json::from_str(body)
        .map_err(|e| ToolCallError::InvalidJson(abbreviate(&e.to_string(), 200)))?;
    let Value::Object(mut obj) = v else {
        return Err(ToolCallError::NotAnObject);
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) => n,
        _ => return Err(ToolCallError::MissingName),
    };
    let arguments = match obj.remove("arguments").or_else(|| obj.remove("parameters")) {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::Object(m)) => Value::Object(m),
        // Some models send the arguments as a JSON string.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => Value::Object(m),
            _ => return Err(ToolCallError::BadArguments),
        },
        Some(_) => return Err(ToolCallError::BadArguments),
    };
    Ok(ToolCall::new(name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_hermes_calls() {
        let t = "Let me compute.\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}\n</tool_call>";
        let p = parse_tool_calls(t, 4);
        assert_eq!(p.content, "Let me compute.");
        assert_eq!(p.calls.len(), 1);
        let call = p.calls[0].as_ref().unwrap();
        assert_eq!(call.function.name, "calculator");
        assert_eq!(call.function.arguments, json!({"expression": "2+2"}));
        assert_eq!(p.to_message().tool_calls.len(), 1);

        let s = r#"<tool_call>{"name": "calculator", "arguments": "{\"expression\": \"1\"}"}</tool_call>"#;
        assert_eq!(
            parse_tool_calls(s, 4).calls[0]
                .as_ref()
                .unwrap()
                .function
                .arguments["expression"],
            "1"
        );
    }

    #[test]
    fn malformed_calls_are_errors() {
        let p = parse_tool_calls("<tool_call>{oops}</tool_call> x <tool_call>[1]</tool_call><tool_call>{\"arguments\": {}}</tool_call>", 4);
        assert!(matches!(p.calls[0], Err(ToolCallError::InvalidJson(_))));
        assert_eq!(p.calls[1], Err(ToolCallError::NotAnObject));
        assert_eq!(p.calls[2], Err(ToolCallError::MissingName));
        assert_eq!(p.content, "x");
        assert_eq!(
            parse_tool_calls("<tool_call>{\"name\":\"c\"", 4).calls[0],
            Err(ToolCallError::Unterminated)
        );
        let bad_args =
            parse_tool_calls("<tool_call>{\"name\":\"c\",\"arguments\":3}</tool_call>", 4);
        assert_eq!(bad_args.calls[0], Err(ToolCallError::BadArguments));
        let many = "<tool_call>{\"name\":\"c\"}</tool_call>".repeat(5);
        let p = parse_tool_calls(&many, 2);
        assert_eq!(p.calls.len(), 3);
        assert_eq!(p.calls[2], Err(ToolCallError::TooMany(2)));
        let deep = format!("<tool_call>{}</tool_call>", "[".repeat(5000));
        assert!(matches!(
            parse_tool_calls(&deep, 1).calls[0],
            Err(ToolCallError::InvalidJson(_))
        ));
        assert!(!mentions_tool_call("plain answer"));
    }
}
