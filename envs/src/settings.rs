//! Typed per-environment settings: deserialised from the `[env]` table of a run config (or `--set k=v` overrides),
//! unknown keys refused, and self-describing so `alp-rl env list` can print them.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::EnvError;

/// One setting as `env list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingDoc {
    pub name: &'static str,
    /// The Rust type, e.g. `u32`, `String`, `Option<String>`.
    #[serde(rename = "type")]
    pub ty: String,
    pub default: Value,
    pub doc: String,
}

/// Settings of one environment. Implement it with [`crate::settings!`], which also derives serde with
/// `deny_unknown_fields` and fills every missing key from `Default`.
pub trait Settings: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static {
    fn docs() -> Vec<SettingDoc>;

    /// Checks that need several fields at once (e.g. `min <= max`): `Err((field, why))`.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
}

/// Declares a settings struct: each field with a doc comment, a type and a default. Generates the struct (serde,
/// `deny_unknown_fields`, missing keys default), its `Default`, and its [`Settings`] impl; an optional trailing
/// `validate = path;` names a `fn(&Self) -> Result<(), (&'static str, String)>` for checks across fields.
/// The calling crate needs `serde` (with `derive`) among its dependencies.
///
/// ```
/// alp_envs::settings! {
///     /// Settings of a toy environment.
///     pub struct ToySettings {
///         /// How many apples.
///         apples: u32 = 3,
///         /// What to call them.
///         word: String = "apple".to_string(),
///     }
/// }
/// use alp_envs::settings::Settings;
/// assert_eq!(ToySettings::default().apples, 3);
/// assert_eq!(ToySettings::docs()[1].name, "word");
/// ```
#[macro_export]
macro_rules! settings {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
        $(validate = $validate:path;)?
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl ::core::default::Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::settings::Settings for $name {
            fn docs() -> ::std::vec::Vec<$crate::settings::SettingDoc> {
                let d = <Self as ::core::default::Default>::default();
                ::std::vec![
                    $( $crate::settings::SettingDoc {
                        name: stringify!($field),
                        ty: stringify!($ty).replace(' ', ""),
                        default: $crate::__private::serde_json::to_value(&d.$field).unwrap_or($crate::__private::serde_json::Value::Null),
                        doc: [$($doc),+].iter().map(|l| l.trim()).collect::<::std::vec::Vec<_>>().join(" "),
                    }, )*
                ]
            }

            fn validate(&self) -> ::core::result::Result<(), (&'static str, ::std::string::String)> {
                $( return $validate(self); )?
                #[allow(unreachable_code)]
                Ok(())
            }
        }
    };
}

/// Deserialises settings for `env` from a table, naming the offending key and what it allows on failure. `null`
/// means all defaults.
pub fn parse_settings<S: Settings>(env: &str, value: &Value) -> Result<S, EnvError> {
    let table = match value {
        Value::Null => return Ok(S::default()),
        Value::Object(m) => m,
        other => {
            return Err(EnvError::SettingsNotTable {
                env: env.to_string(),
                got: kind_of(other).to_string(),
            })
        }
    };
    let docs = S::docs();
    let err = |field: &str, message: String| EnvError::Setting {
        env: env.into(),
        field: field.into(),
        message,
    };
    for key in table.keys() {
        if !docs.iter().any(|d| d.name == key) {
            let allowed: Vec<&str> = docs.iter().map(|d| d.name).collect();
            return Err(err(
                key,
                format!("unknown setting; allowed: {}", allowed.join(", ")),
            ));
        }
    }
    let settings: S = match serde_json::from_value(value.clone()) {
        Ok(s) => s,
        Err(whole) => {
            // serde's message does not say which key failed: retry key by key (the others default) to find it.
            for (key, v) in table {
                let mut one = Map::new();
                one.insert(key.clone(), v.clone());
                if let Err(e) = serde_json::from_value::<S>(Value::Object(one)) {
                    let doc = docs.iter().find(|d| d.name == key);
                    let expected = doc
                        .map(|d| format!(" (type {}, default {})", d.ty, d.default))
                        .unwrap_or_default();
                    return Err(err(key, format!("{e}{expected}")));
                }
            }
            return Err(err("?", whole.to_string()));
        }
    };
    settings
        .validate()
        .map_err(|(field, why)| err(field, why))?;
    Ok(settings)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// Turns `--set k=v` overrides into a settings table. Values are read as JSON when they parse as JSON (numbers,
/// `true`/`false`, `"quoted text"`, `{...}`, `[...]`), and as plain text otherwise; dotted keys (`a.b=1`) build
/// nested tables. Later overrides win.
pub fn parse_overrides<S: AsRef<str>>(overrides: &[S]) -> Result<Value, EnvError> {
    let mut root = Map::new();
    for raw in overrides {
        let raw = raw.as_ref();
        let (key, val) = raw
            .split_once('=')
            .ok_or_else(|| EnvError::BadOverride(raw.to_string()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(EnvError::BadOverride(raw.to_string()));
        }
        let value = match serde_json::from_str::<Value>(val.trim()) {
            Ok(v) if !val.trim().is_empty() => v,
            _ => Value::String(val.to_string()),
        };
        let parts: Vec<&str> = key.split('.').collect();
        let mut table = &mut root;
        for part in &parts[..parts.len() - 1] {
            let slot = table
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            table = match slot {
                Value::Object(m) => m,
                _ => return Err(EnvError::BadOverride(raw.to_string())),
            };
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(Value::Object(root))
}

/// Merges `overrides` into `base` (tables merge key by key, anything else is replaced).
pub fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    crate::settings! {
        /// Test settings.
        pub struct Demo {
            /// A count.
            /// Second line.
            count: u32 = 2,
            /// A name.
            label: Option<String> = None,
            /// A flag.
            on: bool = false,
        }
        validate = Demo::check;
    }
    impl Demo {
        fn check(&self) -> Result<(), (&'static str, String)> {
            if self.count > 10 {
                return Err(("count", format!("must be at most 10, got {}", self.count)));
            }
            Ok(())
        }
    }

    #[test]
    fn docs_list_fields() {
        let d = Demo::docs();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].name, "count");
        assert_eq!(d[0].ty, "u32");
        assert_eq!(d[0].default, json!(2));
        assert_eq!(d[0].doc, "A count. Second line.");
        assert_eq!(d[1].ty, "Option<String>");
        assert_eq!(d[1].default, Value::Null);
    }

    #[test]
    fn parses_and_refuses_with_field_names() {
        let s: Demo = parse_settings("demo", &json!({"count": 5})).unwrap();
        assert_eq!(
            s,
            Demo {
                count: 5,
                label: None,
                on: false
            }
        );
        assert_eq!(
            parse_settings::<Demo>("demo", &Value::Null).unwrap(),
            Demo::default()
        );

        let e = parse_settings::<Demo>("demo", &json!({"cuont": 5}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`cuont`") && e.contains("allowed: count, label, on"),
            "{e}"
        );

        let e = parse_settings::<Demo>("demo", &json!({"on": true, "count": "five"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("setting `count`") && e.contains("type u32"),
            "{e}"
        );

        let e = parse_settings::<Demo>("demo", &json!({"count": 11}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("setting `count`: must be at most 10"), "{e}");

        let e = parse_settings::<Demo>("demo", &json!([1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a table, got an array"), "{e}");
    }

    #[test]
    fn overrides_become_a_table() {
        let v = parse_overrides(&[
            "count=3",
            "on=true",
            "label=hello world",
            "quoted=\"7\"",
            "a.b=1",
            "a.c=x",
            "e=",
        ])
        .unwrap();
        assert_eq!(
            v,
            json!({"count": 3, "on": true, "label": "hello world", "quoted": "7", "a": {"b": 1, "c": "x"}, "e": ""})
        );
        assert!(parse_overrides(&["novalue"]).is_err());
        assert!(parse_overrides(&["=3"]).is_err());
        assert!(parse_overrides(&["a..b=3"]).is_err());
        let mut base = json!({"a": {"b": 0, "d": 4}, "count": 1});
        merge(&mut base, v);
        assert_eq!(base["a"], json!({"b": 1, "c": "x", "d": 4}));
        assert_eq!(base["count"], 3);
    }
}
