//! Reading a config file: TOML with key spans (toml_edit), `--set KEY=VALUE` overrides, and the
//! position (`FILE:LINE:COL` or the `--set` argument) of every refusal, with a suggestion for a
//! misspelt key.
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alp_envs::{Environment, Registry};
use serde::Deserialize;
use thiserror::Error;

use super::schema::TrainConfig;

/// A refused config: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigError {
    /// `FILE:LINE:COL`, `--set KEY=VALUE`, or the file alone when no position is known.
    pub location: String,
    /// Dotted key path (`learner.alp.sigma0`); empty when the error is not about one key.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.location, self.key, self.message)
        }
    }
}

/// A loaded config and what it came from.
#[derive(Clone)]
pub struct LoadedConfig {
    pub config: TrainConfig,
    /// The `[env]` environment, built by validation from the registry `load` was given.
    pub env: Arc<dyn Environment>,
    pub path: PathBuf,
}

/// Reads, overrides, deserialises and validates a config file.
pub fn load(
    path: &Path,
    overrides: &[String],
    registry: &Registry,
) -> Result<LoadedConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        location: file.clone(),
        key: String::new(),
        message: format!("cannot read the config: {e}"),
    })?;
    let doc = toml_edit::Document::parse(text.as_str()).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigError {
            location: position(&file, &text, span.start),
            key: String::new(),
            message: format!("not valid TOML: {}", e.message()),
        }
    })?;
    let spans = KeySpans::of(&doc);

    // The file alone first, so its errors point into the file.
    let config: TrainConfig = toml::from_str(&text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let key = spans.key_at(span.start).unwrap_or_default();
        ConfigError {
            location: position(&file, &text, span.start),
            message: with_suggestion(e.message(), &key),
            key,
        }
    })?;

    let mut config = config;
    let mut table: toml::Table = toml::from_str(&text).expect("parsed above");
    let mut overridden: Vec<(String, String)> = Vec::new();
    for arg in overrides {
        let location = format!("--set {arg}");
        let (key, value) = parse_override(arg).map_err(|message| ConfigError {
            location: location.clone(),
            key: String::new(),
            message,
        })?;
        set_path(&mut table, &key, value).map_err(|message| ConfigError {
            location: location.clone(),
            key: key.clone(),
            message,
        })?;
        config = TrainConfig::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            ConfigError {
                location: location.clone(),
                key: key.clone(),
                message: with_suggestion(e.message(), &key),
            }
        })?;
        overridden.push((key, location));
    }

    inherit_run_seed(&mut config, &table);
    expand_home(&mut config);
    // A refusal points at the last `--set` of the key (or of a key inside it, or of a table holding
    // it), else at the key in the file, else says the value is a default.
    let located = |(key, message): (String, String)| {
        let location = overridden
            .iter()
            .rev()
            .find(|(k, _)| {
                key == *k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
            })
            .map(|(_, loc)| loc.clone())
            .or_else(|| spans.find(&key).map(|start| position(&file, &text, start)))
            .unwrap_or_else(|| format!("{file} (default value)"));
        ConfigError {
            location,
            key,
            message,
        }
    };
    config.check_learner_tables(&table).map_err(located)?;
    let env = config.validate(registry).map_err(located)?;
    Ok(LoadedConfig {
        config,
        env,
        path: path.to_path_buf(),
    })
}

/// Where `key` is set in the config file at `path` (`FILE:LINE:COL`), or the file alone when the file
/// does not set it (a default, or a `--set`): for refusals after loading, such as the checks of the
/// config against the model.
pub fn key_location(path: &Path, key: &str) -> String {
    let file = path.display().to_string();
    let Ok(text) = std::fs::read_to_string(path) else {
        return file;
    };
    let Ok(doc) = toml_edit::Document::parse(text.as_str()) else {
        return file;
    };
    match KeySpans::of(&doc).find(key) {
        Some(start) => position(&file, &text, start),
        None => file,
    }
}

/// `run.seed` seeds the whole run: the new model's weights, the SFT data order and the learner's ALP
/// noise take it unless the config (or a `--set`) gives their own seed, so `--set run.seed=1` is a
/// different run throughout. The resolved seeds are what `config.toml` in the run directory records.
fn inherit_run_seed(config: &mut TrainConfig, table: &toml::Table) {
    let given = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key)).is_some();
    let seed = config.run.seed;
    if !given("model", "init_seed") {
        config.model.init_seed = seed;
    }
    if !given("learner", "seed") {
        config.learner.seed = seed;
    }
    if let Some(sft) = config.sft.as_mut() {
        if !given("sft", "seed") {
            sft.seed = seed;
        }
    }
}

/// `a.b.c=value`: the value is read as a TOML value when it parses (`3`, `true`, `"x"`, `[1, 2]`) and
/// as a plain string otherwise.
pub fn parse_override(arg: &str) -> Result<(String, toml::Value), String> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {arg:?}"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        return Err(format!(
            "bad key {key:?}: use a dotted path like rollout.group_size"
        ));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((key.to_string(), value))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let (last, parents) = parts.split_last().expect("non-empty key");
    let mut t = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a table", parts[..=i].join(".")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Appends "did you mean `x`?" to serde's unknown-field message (which lists the expected keys).
fn with_suggestion(message: &str, _key: &str) -> String {
    let message = message.trim_end().to_string();
    let Some(unknown) = between(&message, "unknown field `", "`") else {
        return message;
    };
    let Some((_, expected)) = message.split_once("expected ") else {
        return message;
    };
    let candidates = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s);
    match closest(unknown, candidates) {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message,
    }
}

/// The candidate most similar to `word`, if any is similar enough to be a likely typo.
pub use alp_macros::closest;

pub(super) fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// `FILE:LINE:COL` (1-based, columns in characters) of a byte offset.
fn position(file: &str, text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{file}:{line}:{col}")
}

/// A dotted key path with the spans of the key and of its value.
type KeySpan = (String, Option<Range<usize>>, Option<Range<usize>>);

/// Every key of the document with its spans.
struct KeySpans(Vec<KeySpan>);

impl KeySpans {
    fn of(doc: &toml_edit::Document<&str>) -> Self {
        let mut out = Vec::new();
        walk(doc.as_table(), "", &mut out);
        KeySpans(out)
    }

    /// The deepest key whose key or value span holds `offset`.
    fn key_at(&self, offset: usize) -> Option<String> {
        let holds = |r: &Option<Range<usize>>| r.as_ref().is_some_and(|r| r.contains(&offset));
        self.0
            .iter()
            .filter(|(_, k, v)| holds(k) || holds(v))
            .max_by_key(|(path, _, _)| path.matches('.').count())
            .map(|(path, _, _)| path.clone())
    }

    /// Start of a key's span in the file.
    fn find(&self, key: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(path, _, _)| path == key)
            .and_then(|(_, k, v)| k.clone().or_else(|| v.clone()))
            .map(|r| r.start)
    }
}

fn walk(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut Vec<KeySpan>) {
    for (name, item) in table.iter() {
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        let key_span = table.key(name).and_then(|k| k.span());
        out.push((path.clone(), key_span, item.span()));
        if let Some(t) = item.as_table_like() {
            walk(t, &path, out);
        }
    }
}

/// A leading `~/` in `model.path` is the home folder (where scripts/get-smollm2.sh caches models), so a
/// config naming a cached model works for every user.
fn expand_home(config: &mut TrainConfig) {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    if let Some(path) = &config.model.path {
        if let Ok(rest) = path.strip_prefix("~") {
            config.model.path = Some(Path::new(&home).join(rest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_as_toml_or_text() {
        let (k, v) = parse_override("rollout.group_size=8").unwrap();
        assert_eq!(
            (k.as_str(), v),
            ("rollout.group_size", toml::Value::Integer(8))
        );
        let (_, v) = parse_override("env.operators=+-").unwrap();
        assert_eq!(v, toml::Value::String("+-".into()));
        assert!(parse_override("nokey").is_err());
        assert!(parse_override("a..b=1").is_err());
    }

    #[test]
    fn run_seed_is_the_default_of_every_other_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seeds.toml");
        let text =
            "[model]\nnew_model = \"tiny\"\n[env]\nname = \"arithmetic\"\n[sft]\nsteps = 1\n\
                    [run]\nseed = 5\n";
        std::fs::write(&path, text).unwrap();
        let seeds = |c: &TrainConfig| {
            (
                c.model.init_seed,
                c.learner.seed,
                c.sft.as_ref().unwrap().seed,
            )
        };
        assert_eq!(
            seeds(&load(&path, &[], &Registry::builtin()).unwrap().config),
            (5, 5, 5)
        );
        let over = ["run.seed=7".to_string(), "learner.seed=3".to_string()];
        assert_eq!(
            seeds(&load(&path, &over, &Registry::builtin()).unwrap().config),
            (7, 3, 7)
        );
        std::fs::write(&path, text.replace("steps = 1", "steps = 1\nseed = 9")).unwrap();
        assert_eq!(
            seeds(&load(&path, &[], &Registry::builtin()).unwrap().config),
            (5, 5, 9)
        );
    }

    #[test]
    fn positions_are_one_based() {
        assert_eq!(position("f", "ab\ncd", 4), "f:2:2");
        assert_eq!(position("f", "ab", 0), "f:1:1");
    }

    #[test]
    fn suggestion_picks_the_closest_key() {
        let m = with_suggestion(
            "unknown field `grup_size`, expected one of `group_size`, `top_p`",
            "",
        );
        assert!(m.ends_with("did you mean `group_size`?"), "{m}");
        assert_eq!(closest("zzz", ["group_size"].into_iter()), None);
    }
}
