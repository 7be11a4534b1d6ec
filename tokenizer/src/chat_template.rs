//! Jinja chat templates rendered the way transformers renders them.
//!
//! transformers compiles templates in a Jinja2 `ImmutableSandboxedEnvironment` with
//! `trim_blocks=True, lstrip_blocks=True` (and Jinja2's default `keep_trailing_newline=False`),
//! a `tojson` filter that is `json.dumps(ensure_ascii=False, ...)`, and the globals
//! `raise_exception` and `strftime_now`. It calls
//! `render(messages=..., tools=..., documents=..., add_generation_prompt=..., **special_tokens_map, **kwargs)`.
//! Everything here mirrors that; Python string methods come from minijinja-contrib's pycompat.

use crate::config::{TokenizerConfig, SPECIAL_TOKEN_FIELDS};
use crate::error::{Error, Result};
use crate::python::{json_dumps, py_str, JsonOptions};
use crate::strftime::Civil;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value as JValue, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

const TEMPLATE_KEY: &str = "chat_template";
/// Names `render` sets itself; Python raises "got multiple values" if kwargs repeat them.
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// A compiled chat template plus the special tokens it sees as variables.
pub struct ChatTemplate {
    env: Environment<'static>,
    name: String,
    source: String,
    /// `bos_token`, `eos_token`, ..., `additional_special_tokens`: transformers'
    /// `special_tokens_map`, which is passed to every render.
    special_tokens: BTreeMap<String, JValue>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `name` only labels errors (e.g. the file the template came from).
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let source = source.into();
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| Error::TemplateSyntax {
                name: name.clone(),
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Jinja2 prints Python's str(): `True`, `None`, `['a']`.
        env.set_formatter(|out, _state, value| {
            out.write_str(&py_str(value))
                .map_err(minijinja::Error::from)
        });
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<JValue, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| Civil::now().format(&fmt));
        env.add_template_owned(TEMPLATE_KEY, source.clone())
            .map_err(|e| Error::TemplateSyntax {
                name: name.clone(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            name,
            source,
            special_tokens: BTreeMap::new(),
        })
    }

    /// Sets the special-token variables from a tokenizer config, as transformers'
    /// `special_tokens_map` does (only tokens that are set).
    pub fn with_special_tokens(mut self, config: &TokenizerConfig) -> Self {
        self.special_tokens.clear();
        for field in SPECIAL_TOKEN_FIELDS {
            if let Some(tok) = config.token(field) {
                self.special_tokens
                    .insert(field.to_string(), JValue::from(tok.to_string()));
            }
        }
        if !config.additional_special_tokens.is_empty() {
            self.special_tokens.insert(
                "additional_special_tokens".into(),
                JValue::from(Serde(&config.additional_special_tokens)),
            );
        }
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. `messages` are JSON objects (or [`Message`]s); `tools` are JSON
    /// schemas; `extra` holds further template variables such as `enable_thinking`, which override
    /// the special tokens as Python's `{**special_tokens_map, **kwargs}` does.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String> {
        let mut ctx = self.special_tokens.clone();
        for (k, v) in extra {
            if RESERVED.contains(&k.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "extra template variable `{k}` clashes with an argument of render()"
                )));
            }
            ctx.insert(k.clone(), JValue::from(Serde(v)));
        }
        ctx.insert("messages".into(), JValue::from(Serde(messages)));
        ctx.insert(
            "tools".into(),
            tools.map_or(JValue::from(()), |t| JValue::from(Serde(t))),
        );
        ctx.insert("documents".into(), JValue::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );
        let render_err = |e: minijinja::Error| Error::Render {
            name: self.name.clone(),
            message: describe(&e),
        };
        let tmpl = self.env.get_template(TEMPLATE_KEY).map_err(render_err)?;
        tmpl.render(JValue::from(ctx)).map_err(render_err)
    }
}

/// A minijinja error with the template line it is at and its cause chain, which holds e.g. a failing
/// filter's own message. (minijinja's own text names the internal template key, not the file.)
fn describe(e: &minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg = format!("line {line} of the template: {msg}");
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// transformers' filter: `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(args: &[JValue], kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let (value, positional) = args
        .split_first()
        .ok_or_else(|| minijinja::Error::new(ErrorKind::MissingArgument, "tojson needs a value"))?;
    if positional.len() > NAMES.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 5 positional arguments",
        ));
    }
    let mut params: [Option<JValue>; 4] = Default::default();
    for (slot, v) in params.iter_mut().zip(positional) {
        *slot = Some(v.clone());
    }
    for (slot, name) in params.iter_mut().zip(NAMES) {
        if let Some(v) = kwargs.get::<Option<JValue>>(name)? {
            *slot = Some(v);
        }
    }
    // Python raises TypeError on unknown keyword arguments.
    kwargs.assert_all_used()?;
    let bad = |m: String| minijinja::Error::new(ErrorKind::InvalidOperation, m);
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => {
            Some(v.as_str().unwrap_or_default().to_string())
        }
        Some(v) => {
            let n = v
                .as_i64()
                .ok_or_else(|| bad(format!("tojson indent must be an int or str, got {v}")))?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let separators = match separators {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("tojson separators must be two strings".into()))?;
            match <[String; 2]>::try_from(parts) {
                Ok([a, b]) => Some((a, b)),
                Err(_) => return Err(bad("tojson separators must be two strings".into())),
            }
        }
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        separators,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    // Plain (unsafe) string, as Python returns a str: our formatter prints it verbatim.
    json_dumps(value, &opts)
        .map(JValue::from)
        .map_err(|m| minijinja::Error::new(ErrorKind::InvalidOperation, m))
}

/// One chat message in the OpenAI/transformers shape. Optional fields are omitted when unset so
/// templates see them as undefined, exactly like a Python dict without the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            reasoning_content: None,
            tool_calls: Vec::new(),
            name: None,
            tool_call_id: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
    /// A tool result (rendered by Qwen-style templates as `<tool_response>` in a user turn).
    pub fn tool(content: impl Into<String>) -> Self {
        Self::new("tool", content)
    }
    pub fn with_tool_calls(mut self, calls: Vec<ToolCall>) -> Self {
        self.tool_calls = calls;
        self
    }
}

/// An assistant's function call; `arguments` is usually a JSON object (rendered with `tojson`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

fn function_type() -> String {
    "function".into()
}

impl ToolCall {
    pub fn function(name: impl Into<String>, arguments: Value) -> Self {
        ToolCall {
            kind: function_type(),
            function: FunctionCall {
                name: name.into(),
                arguments,
            },
            id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, extra: Value) -> Result<String> {
        let t = ChatTemplate::new("test", src)?;
        let Value::Object(extra) = extra else {
            unreachable!()
        };
        t.render(&[Message::user("hi")], None, true, &extra)
    }

    #[test]
    fn raise_exception_message_reaches_the_error() {
        let err = render("{{ raise_exception('roles must alternate') }}", json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("roles must alternate") && err.contains("test"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_the_template() {
        let err = ChatTemplate::new("my.jinja", "{% if %}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("my.jinja") && err.contains("does not compile"),
            "{err}"
        );
        let err = ChatTemplate::new("two.jinja", "ok\n{% if %}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("two.jinja") && err.contains("line 2 of the template"),
            "{err}"
        );
        assert!(!err.contains("(in chat_template:"), "{err}");
    }

    #[test]
    fn python_printing_and_tojson_options() {
        let out = render(
            "{{ flag }} {{ nothing }} {{ xs }} {{ xs | tojson(indent=2) }}|{{ xs | tojson(separators=(',', ':')) }}|{{ 'é' | tojson(ensure_ascii=true) }}",
            json!({"flag": true, "nothing": null, "xs": [1, 0.5, "a"]}),
        )
        .unwrap();
        assert_eq!(
            out,
            "True None [1, 0.5, 'a'] [\n  1,\n  0.5,\n  \"a\"\n]|[1,0.5,\"a\"]|\"\\u00e9\""
        );
    }

    #[test]
    fn whitespace_control_and_trailing_newline_match_jinja2() {
        let out = render(
            "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() }}]\n  {% endif %}\n{% endfor %}\n",
            json!({}),
        )
        .unwrap();
        assert_eq!(out, "[hi]\n");
    }

    #[test]
    fn reserved_extra_names_are_rejected() {
        let err = render("x", json!({"messages": []}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("messages"), "{err}");
    }
}
