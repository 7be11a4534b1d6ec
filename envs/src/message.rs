//! Chat messages in the shape Hugging Face chat templates expect (`role`, `content`, optional `tool_calls`), so the
//! rollout can hand them straight to the template renderer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

alp_macros::string_enum! {
    /// Who speaks a message.
    pub enum Role: "role" {
        System => "system",
        User => "user",
        Assistant => "assistant",
        /// A tool's answer; the Qwen3 template wraps it in `<tool_response>` inside a user turn.
        Tool => "tool",
    }
}

/// One call of a tool, as the template renders it: `{"type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON object; templates serialise it with `tojson`.
    pub arguments: Value,
}

impl ToolCall {
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        ToolCall {
            kind: function_kind(),
            function: FunctionCall {
                name: name.into(),
                arguments,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For tool messages: which tool answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    fn plain(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            name: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::plain(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::plain(Role::Assistant, content)
    }

    pub fn tool(name: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            name: Some(name.into()),
            ..Self::plain(Role::Tool, content)
        }
    }
}

/// A tool offered to the model, as a JSON-schema function spec (`{"type": "function", "function": {...}}`), the
/// form chat templates print into the system prompt.
pub type ToolSpec = Value;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serialises_to_template_shape() {
        let m = Message::user("hi");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"role": "user", "content": "hi"})
        );
        let t = Message::tool("calculator", "4");
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"role": "tool", "content": "4", "name": "calculator"})
        );
        let mut a = Message::assistant("");
        a.tool_calls
            .push(ToolCall::new("calculator", json!({"expression": "2+2"})));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["tool_calls"][0]["type"], "function");
        assert_eq!(
            v["tool_calls"][0]["function"]["arguments"]["expression"],
            "2+2"
        );
        let back: Message = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }
}
