//! `tokenizer_config.json`: special tokens and chat templates, as transformers reads them.
//!
//! Only the fields this crate uses are typed; every other field is kept verbatim in `extra` so that
//! `save` writes back what `load` read (transformers needs e.g. `added_tokens_decoder`).

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// The special-token attributes transformers passes to chat templates (`special_tokens_map`).
pub const SPECIAL_TOKEN_FIELDS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A named chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

/// Where templates come from: one string, or several named ones (`[{name, template}, ...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplates {
    Single(String),
    Named(Vec<NamedTemplate>),
}

impl ChatTemplates {
    /// transformers' `get_chat_template` rule: a requested name, else `tool_use` when tools are
    /// given, else `default`.
    pub fn select(&self, name: Option<&str>, has_tools: bool) -> Result<(&str, &str)> {
        match self {
            ChatTemplates::Single(t) => match name {
                None | Some("default") => Ok(("default", t)),
                Some(n) => Err(Error::NoChatTemplate(format!(
                    "no template named `{n}`: this tokenizer has a single unnamed template"
                ))),
            },
            ChatTemplates::Named(list) => {
                let find = |n: &str| list.iter().find(|t| t.name == n);
                let picked = match name {
                    Some(n) => find(n),
                    None if has_tools && find("tool_use").is_some() => find("tool_use"),
                    None => find("default"),
                };
                picked
                    .map(|t| (t.name.as_str(), t.template.as_str()))
                    .ok_or_else(|| {
                        let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
                        Error::NoChatTemplate(format!(
                            "no template named `{}` (available: {names:?})",
                            name.unwrap_or("default")
                        ))
                    })
            }
        }
    }
}

/// The parts of `tokenizer_config.json` that matter here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// `bos_token`, `eos_token`, ... by field name (only those set and non-empty).
    pub special_tokens: Map<String, Value>,
    /// `additional_special_tokens`, flattened to strings.
    pub additional_special_tokens: Vec<String>,
    pub chat_template: Option<ChatTemplates>,
    /// transformers' `clean_up_tokenization_spaces` (default false).
    pub clean_up_tokenization_spaces: bool,
    /// Every other field, written back untouched by `to_json`.
    pub extra: Map<String, Value>,
}

impl TokenizerConfig {
    /// Reads and parses a `tokenizer_config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(json, path)
    }

    /// Parses the JSON object; `path` is only used in error messages.
    pub fn from_json(json: Value, path: &Path) -> Result<Self> {
        let bad = |field: &str, message: String| Error::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let Value::Object(mut obj) = json else {
            return Err(bad("<root>", "expected a JSON object".into()));
        };
        let mut cfg = TokenizerConfig::default();
        for field in SPECIAL_TOKEN_FIELDS {
            if let Some(v) = obj.remove(field) {
                if let Some(tok) = token_content(&v).map_err(|m| bad(field, m))? {
                    cfg.special_tokens
                        .insert(field.to_string(), Value::String(tok));
                }
            }
        }
        if let Some(v) = obj.remove("additional_special_tokens") {
            match v {
                Value::Null => {}
                Value::Array(items) => {
                    for item in &items {
                        if let Some(tok) =
                            token_content(item).map_err(|m| bad("additional_special_tokens", m))?
                        {
                            cfg.additional_special_tokens.push(tok);
                        }
                    }
                }
                other => {
                    return Err(bad(
                        "additional_special_tokens",
                        format!("expected a list, got {other}"),
                    ))
                }
            }
        }
        if let Some(v) = obj.remove("chat_template") {
            cfg.chat_template = parse_chat_template(v).map_err(|m| bad("chat_template", m))?;
        }
        if let Some(v) = obj.remove("clean_up_tokenization_spaces") {
            cfg.clean_up_tokenization_spaces = match v {
                Value::Bool(b) => b,
                Value::Null => false,
                other => {
                    return Err(bad(
                        "clean_up_tokenization_spaces",
                        format!("expected a boolean, got {other}"),
                    ))
                }
            };
        }
        cfg.extra = obj;
        Ok(cfg)
    }

    /// The JSON object for `tokenizer_config.json` (fields in transformers' usual order).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        for field in SPECIAL_TOKEN_FIELDS {
            if let Some(v) = self.special_tokens.get(field) {
                obj.insert(field.to_string(), v.clone());
            }
        }
        if !self.additional_special_tokens.is_empty() {
            obj.insert(
                "additional_special_tokens".into(),
                self.additional_special_tokens.clone().into(),
            );
        }
        obj.insert(
            "clean_up_tokenization_spaces".into(),
            self.clean_up_tokenization_spaces.into(),
        );
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        match &self.chat_template {
            Some(ChatTemplates::Single(t)) => {
                obj.insert("chat_template".into(), Value::String(t.clone()));
            }
            Some(ChatTemplates::Named(list)) => {
                let items = list
                    .iter()
                    .map(|t| serde_json::json!({"name": t.name, "template": t.template}))
                    .collect();
                obj.insert("chat_template".into(), Value::Array(items));
            }
            None => {}
        }
        Value::Object(obj)
    }

    /// A special token by field name, e.g. `token("eos_token")`.
    pub fn token(&self, field: &str) -> Option<&str> {
        self.special_tokens.get(field).and_then(Value::as_str)
    }

    /// Sets (or clears with `None`) a special token by field name.
    pub fn set_token(&mut self, field: &str, token: Option<&str>) {
        match token {
            Some(t) if !t.is_empty() => {
                self.special_tokens
                    .insert(field.to_string(), Value::String(t.to_string()));
            }
            _ => {
                self.special_tokens.remove(field);
            }
        }
    }
}

/// A token given as a string or as a serialised `AddedToken` (`{"content": ..., ...}`).
/// Empty and null mean "not set", as transformers treats them falsy.
fn token_content(v: &Value) -> std::result::Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok((!s.is_empty()).then(|| s.clone())),
        Value::Object(o) => match o.get("content") {
            Some(Value::String(s)) => Ok((!s.is_empty()).then(|| s.clone())),
            _ => Err(format!("token object without a string `content`: {v}")),
        },
        other => Err(format!(
            "expected a string or {{\"content\": ...}}, got {other}"
        )),
    }
}

fn parse_chat_template(v: Value) -> std::result::Result<Option<ChatTemplates>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(ChatTemplates::Single(s))),
        Value::Array(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => list.push(NamedTemplate {
                        name: n.to_string(),
                        template: t.to_string(),
                    }),
                    _ => {
                        return Err(format!(
                            "each entry needs string `name` and `template`, got {item}"
                        ))
                    }
                }
            }
            Ok(Some(ChatTemplates::Named(list)))
        }
        other => Err(format!(
            "expected a string or a list of {{name, template}}, got {other}"
        )),
    }
}

/// Loads `chat_template.jinja` and `additional_chat_templates/*.jinja` from a model directory.
/// transformers gives these files priority over `chat_template` in the config.
pub fn load_template_files(dir: &Path) -> Result<Option<ChatTemplates>> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut named = Vec::new();
    let main = dir.join("chat_template.jinja");
    if main.is_file() {
        named.push(NamedTemplate {
            name: "default".into(),
            template: read(&main)?,
        });
    }
    let extra_dir = dir.join("additional_chat_templates");
    if extra_dir.is_dir() {
        let entries = std::fs::read_dir(&extra_dir).map_err(|source| Error::Io {
            path: extra_dir.clone(),
            source,
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jinja"))
            .collect();
        paths.sort();
        for p in paths {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            named.push(NamedTemplate {
                name,
                template: read(&p)?,
            });
        }
    }
    Ok(match named.len() {
        0 => None,
        1 if named[0].name == "default" => named.pop().map(|t| ChatTemplates::Single(t.template)),
        _ => Some(ChatTemplates::Named(named)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn added_token_objects_and_named_templates() {
        let cfg = TokenizerConfig::from_json(
            json!({
                "bos_token": {"content": "<s>", "lstrip": false},
                "eos_token": "</s>",
                "pad_token": null,
                "unk_token": "",
                "chat_template": [
                    {"name": "default", "template": "D"},
                    {"name": "tool_use", "template": "T"}
                ],
                "model_max_length": 42
            }),
            Path::new("cfg.json"),
        )
        .unwrap();
        assert_eq!(cfg.token("bos_token"), Some("<s>"));
        assert_eq!(cfg.token("eos_token"), Some("</s>"));
        assert_eq!(cfg.token("pad_token"), None);
        assert_eq!(cfg.token("unk_token"), None);
        let t = cfg.chat_template.as_ref().unwrap();
        assert_eq!(t.select(None, false).unwrap().1, "D");
        assert_eq!(t.select(None, true).unwrap().1, "T");
        assert!(t.select(Some("nope"), false).is_err());
        assert_eq!(cfg.extra["model_max_length"], 42);
        let back = TokenizerConfig::from_json(cfg.to_json(), Path::new("x")).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_fields_name_the_file_and_field() {
        let err = TokenizerConfig::from_json(json!({"eos_token": 3}), Path::new("dir/tc.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dir/tc.json") && err.contains("eos_token"),
            "{err}"
        );
        let err = TokenizerConfig::from_json(json!({"chat_template": 5}), Path::new("tc.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat_template"), "{err}");
    }
}
