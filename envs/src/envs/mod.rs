//! The built-in environments, one per module.

pub mod arithmetic;
pub mod countdown;
pub mod math;
pub mod tool_math;

use crate::message::Message;
use crate::registry::{EnvSpec, Registry};

impl Registry {
    /// The built-in environments: `math`, `arithmetic`, `countdown`, `tool_math`.
    pub fn builtin() -> Self {
        let mut r = Registry::empty();
        for spec in [
            EnvSpec::of::<math::Math>(),
            EnvSpec::of::<arithmetic::Arithmetic>(),
            EnvSpec::of::<countdown::Countdown>(),
            EnvSpec::of::<tool_math::ToolMath>(),
        ] {
            r.register(spec)
                .expect("the built-in environments have distinct names");
        }
        r
    }
}

/// Fills `{question}` in a prompt template.
pub(crate) fn render(template: &str, question: &str) -> String {
    template.replace("{question}", question)
}

/// A template must show the question somewhere.
pub(crate) fn check_template(template: &str) -> Result<(), (&'static str, String)> {
    if template.contains("{question}") {
        Ok(())
    } else {
        Err(("prompt_template", "must contain `{question}`".to_string()))
    }
}

/// The prompt messages: an optional system message, then the user message.
pub(crate) fn prompt(system: Option<&str>, user: String) -> Vec<Message> {
    let mut m = Vec::with_capacity(2);
    if let Some(s) = system {
        m.push(Message::system(s));
    }
    m.push(Message::user(user));
    m
}

/// `value[key]` as text: strings as they are, numbers printed.
pub(crate) fn text_field(value: &serde_json::Value, key: &str) -> Option<String> {
    match value.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
