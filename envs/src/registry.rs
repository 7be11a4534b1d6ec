//! Names to constructors: how a run config's `[env]` table or `alp-rl env ...` becomes an environment.
//! It knows no environment by name: the built-in ones register themselves in `crate::envs`
//! ([`Registry::builtin`]), a user's crate adds its own with [`Registry::register`].

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::env::Environment;
use crate::error::EnvError;
use crate::settings::{parse_settings, SettingDoc, Settings};

/// An environment type that can be built from its settings. Implement it, then register with
/// `registry.register(EnvSpec::of::<MyEnv>())`.
pub trait EnvDef: Environment + Sized + 'static {
    const NAME: &'static str;
    /// One line for `env list`.
    const SUMMARY: &'static str;
    type Settings: Settings;
    fn from_settings(settings: Self::Settings) -> Result<Self, EnvError>;
}

pub type BuildFn = fn(&Value) -> Result<Arc<dyn Environment>, EnvError>;

/// A registered environment.
#[derive(Clone)]
pub struct EnvSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub settings: fn() -> Vec<SettingDoc>,
    pub build: BuildFn,
}

impl EnvSpec {
    pub fn of<E: EnvDef>() -> Self {
        EnvSpec {
            name: E::NAME,
            summary: E::SUMMARY,
            settings: E::Settings::docs,
            build: build_def::<E>,
        }
    }
}

fn build_def<E: EnvDef>(settings: &Value) -> Result<Arc<dyn Environment>, EnvError> {
    let s = parse_settings::<E::Settings>(E::NAME, settings)?;
    Ok(Arc::new(E::from_settings(s)?))
}

/// What `env list` prints for one environment.
#[derive(Debug, Clone, Serialize)]
pub struct EnvDoc {
    pub name: &'static str,
    pub summary: &'static str,
    pub settings: Vec<SettingDoc>,
}

#[derive(Clone, Default)]
pub struct Registry {
    specs: Vec<EnvSpec>,
}

impl Registry {
    pub fn empty() -> Self {
        Registry::default()
    }

    /// Adds an environment; a name already registered is refused.
    pub fn register(&mut self, spec: EnvSpec) -> Result<(), EnvError> {
        if self.specs.iter().any(|s| s.name == spec.name) {
            return Err(EnvError::DuplicateEnv(spec.name.to_string()));
        }
        self.specs.push(spec);
        Ok(())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.specs.iter().map(|s| s.name).collect()
    }

    pub fn get(&self, name: &str) -> Result<&EnvSpec, EnvError> {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| EnvError::UnknownEnv {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// Builds `name` from its settings table (`null` for all defaults).
    pub fn build(&self, name: &str, settings: &Value) -> Result<Arc<dyn Environment>, EnvError> {
        (self.get(name)?.build)(settings)
    }

    /// Builds from a config table that names the environment in its `name` key, the other keys being its
    /// settings: the `[env]` table of a run config.
    pub fn build_from_table(&self, table: &Value) -> Result<Arc<dyn Environment>, EnvError> {
        let Value::Object(map) = table else {
            return Err(EnvError::SettingsNotTable {
                env: "?".into(),
                got: "not a table".into(),
            });
        };
        let mut map = map.clone();
        let name = match map.remove("name") {
            Some(Value::String(n)) => n,
            _ => {
                return Err(EnvError::Setting {
                    env: "?".into(),
                    field: "name".into(),
                    message: format!(
                        "the [env] table needs `name`, one of: {}",
                        self.names().join(", ")
                    ),
                })
            }
        };
        self.build(&name, &Value::Object(map))
    }

    /// Every environment with its settings, for `env list`.
    pub fn docs(&self) -> Vec<EnvDoc> {
        self.specs
            .iter()
            .map(|s| EnvDoc {
                name: s.name,
                summary: s.summary,
                settings: (s.settings)(),
            })
            .collect()
    }
}
