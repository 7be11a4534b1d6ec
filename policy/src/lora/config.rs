//! A LoRA adapter's settings ([`LoraConfig`]) as PEFT spells them, the projections they select
//! ([`LoraConfig::sites`]), and their `adapter_config.json` form, read ([`LoraConfig::from_peft_json`],
//! which refuses by name every key that would change the computation) and written
//! ([`LoraConfig::to_peft_json`]).
use serde_json::{json, Map, Value};

use super::error::LoraError;
use crate::config::ModelConfig;
use crate::names::{LinearKind, LinearSite};

/// Which projections an adapter adapts, as PEFT's `target_modules` says it.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// `"all-linear"`: every attention and MLP projection of every layer (PEFT's `all-linear`, which
    /// leaves out the LM head).
    AllLinear,
    /// Module names, each matching the projections whose path is it or ends in `.` + it: `q_proj`
    /// (every layer's), `model.layers.3.mlp.up_proj` (one), `lm_head`.
    Names(Vec<String>),
}

impl std::fmt::Display for TargetModules {
    /// As `adapter_config.json` spells it: `"all-linear"` or `["q_proj", "v_proj"]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetModules::AllLinear => write!(f, "\"all-linear\""),
            TargetModules::Names(names) => write!(f, "{names:?}"),
        }
    }
}

/// A LoRA adapter's settings: `W x` becomes `W x + scale * B A x` on each targeted projection, with
/// `scale = lora_alpha / r` (or `lora_alpha / sqrt(r)` with `use_rslora`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// The rank: A is `[r, in]`, B `[out, r]`.
    pub r: i64,
    pub lora_alpha: f64,
    pub target_modules: TargetModules,
    /// Rank-stabilised scaling: `lora_alpha / sqrt(r)` instead of `lora_alpha / r`.
    pub use_rslora: bool,
    /// Must be 0: the adapter applies no dropout.
    pub lora_dropout: f64,
    /// The base model the adapter belongs to (a hub id or a directory), written to and checked
    /// against `adapter_config.json`'s `base_model_name_or_path` (see [`same_base_model`]).
    pub base_model_name_or_path: Option<String>,
}

/// Keys of `adapter_config.json` that do not change what the adapter computes (bookkeeping, or how
/// PEFT initialised a trained adapter); read elsewhere: the ones [`LoraConfig::from_peft_json`] reads.
const IGNORED_KEYS: &[&str] = &[
    "auto_mapping",
    "revision",
    "inference_mode",
    "peft_version",
    "megatron_core",
    "qalora_group_size",
    "runtime_config",
];

/// Keys read by [`LoraConfig::from_peft_json`] itself.
const READ_KEYS: &[&str] = &[
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "target_modules",
    "use_rslora",
    "lora_dropout",
    "bias",
    "base_model_name_or_path",
    "init_lora_weights",
];

/// `init_lora_weights` values that leave the base weights as they are (the others, PiSSA, OLoRA,
/// CorDA, LoftQ, move part of the base into the adapter at initialisation).
const BASE_PRESERVING_INITS: &[&str] = &["gaussian", "orthogonal", "eva"];

impl LoraConfig {
    /// Rank `r`, `lora_alpha` and targets; no rslora, no dropout, no base model name.
    pub fn new(r: i64, lora_alpha: f64, target_modules: TargetModules) -> Self {
        LoraConfig {
            r,
            lora_alpha,
            target_modules,
            use_rslora: false,
            lora_dropout: 0.0,
            base_model_name_or_path: None,
        }
    }

    /// The factor on `B A x`: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rslora (as PEFT).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Checks the values alone (positive rank, finite alpha, no dropout); `source` names where they
    /// came from in the error (a file, a settings section).
    pub fn validate(&self, source: &str) -> Result<(), LoraError> {
        if self.r < 1 {
            return Err(LoraError::invalid(
                source,
                "r",
                format!("is {}: the rank must be at least 1", self.r),
                "set r to a positive integer (1 to 64 is usual)",
            ));
        }
        if !self.lora_alpha.is_finite() {
            return Err(LoraError::invalid(
                source,
                "lora_alpha",
                format!("is {}: it must be a finite number", self.lora_alpha),
                "set lora_alpha to a number (often r or 2 r)",
            ));
        }
        if self.lora_dropout != 0.0 {
            return Err(LoraError::invalid(
                source,
                "lora_dropout",
                format!(
                    "is {}: only 0 is supported (alp-rl's adapter applies no dropout, so training \
                     with it would not be what the setting says)",
                    self.lora_dropout
                ),
                "set lora_dropout to 0 (an adapter trained with dropout loads unchanged with 0: \
                 dropout is off at inference)",
            ));
        }
        Ok(())
    }

    /// The projections of a model with config `model` that this adapter adapts, in the model's
    /// order. Refused, naming the entry, when `target_modules` is empty or an entry names no
    /// projection of the model.
    pub fn sites(&self, model: &ModelConfig, source: &str) -> Result<Vec<LinearSite>, LoraError> {
        let all = model_sites(model);
        let entries = match &self.target_modules {
            TargetModules::AllLinear => {
                return Ok(all.into_iter().filter(|s| s.layer.is_some()).collect())
            }
            TargetModules::Names(entries) => entries,
        };
        if entries.is_empty() {
            return Err(LoraError::invalid(
                source,
                "target_modules",
                "is empty: the adapter adapts nothing",
                "list projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) \
                 or use \"all-linear\"",
            ));
        }
        let mut chosen = vec![false; all.len()];
        for entry in entries {
            let mut any = false;
            for (i, site) in all.iter().enumerate() {
                if module_matches(site.path().as_str(), entry) {
                    chosen[i] = true;
                    any = true;
                }
            }
            if !any {
                return Err(unknown_target(source, entry, model));
            }
        }
        Ok(all
            .into_iter()
            .zip(chosen)
            .filter_map(|(site, on)| on.then_some(site))
            .collect())
    }

    /// `adapter_config.json` as PEFT writes it for this adapter on `model` (`all-linear` spelled as
    /// the seven projection names, which every reader understands).
    pub fn to_peft_json(&self) -> Value {
        let targets: Vec<String> = match &self.target_modules {
            TargetModules::AllLinear => LinearKind::IN_LAYER
                .iter()
                .map(|k| k.module_name().to_string())
                .collect(),
            TargetModules::Names(names) => names.clone(),
        };
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.r,
            "lora_alpha": alpha,
            "target_modules": targets,
            "use_rslora": self.use_rslora,
            "lora_dropout": self.lora_dropout,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_dora": false,
            "lora_bias": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "exclude_modules": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        })
    }

    /// Reads `adapter_config.json`'s content (`source` names the file in errors), refusing what this
    /// adapter does not compute: another `peft_type` or `task_type`, a bias, dropout, a regex
    /// `target_modules`, an initialisation that changed the base weights, and any other key set to a
    /// non-default value (DoRA, per-module ranks or alphas, layer selections, extra trained modules,
    /// keys this reader does not know).
    pub fn from_peft_json(value: &Value, source: &str) -> Result<Self, LoraError> {
        let obj = value.as_object().ok_or_else(|| {
            LoraError::invalid(
                source,
                "(top level)",
                "is not a JSON object",
                "write the adapter with PEFT's save_pretrained",
            )
        })?;
        let field = Field { obj, source };
        field.expect_str("peft_type", &["LORA"], "only LoRA adapters load here")?;
        field.expect_str("task_type", &["CAUSAL_LM"], "the policy is a causal LM")?;
        field.expect_str(
            "bias",
            &["none"],
            "adapters with trained biases are not supported",
        )?;
        field.check_init()?;
        refuse_other_keys(obj, source)?;
        let config = LoraConfig {
            r: field.integer("r")?,
            lora_alpha: field.number("lora_alpha")?,
            target_modules: field.targets()?,
            use_rslora: field.boolean("use_rslora")?,
            lora_dropout: field.optional_number("lora_dropout")?.unwrap_or(0.0),
            base_model_name_or_path: obj
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        };
        config.validate(source)?;
        Ok(config)
    }
}

/// Every projection of a model with config `model`: each layer's seven in HF order, then the LM head.
pub fn model_sites(model: &ModelConfig) -> Vec<LinearSite> {
    (0..model.num_hidden_layers)
        .flat_map(|l| {
            LinearKind::IN_LAYER
                .iter()
                .map(move |&k| LinearSite::in_layer(l, k))
        })
        .chain(std::iter::once(LinearSite::lm_head()))
        .collect()
}

/// PEFT's rule for a `target_modules` list entry: the module's path is it, or ends in `.` + it.
fn module_matches(path: &str, entry: &str) -> bool {
    path == entry
        || path
            .strip_suffix(entry)
            .is_some_and(|head| head.ends_with('.'))
}

fn unknown_target(source: &str, entry: &str, model: &ModelConfig) -> LoraError {
    let leaf = entry.rsplit('.').next().unwrap_or(entry);
    let problem = if leaf == "embed_tokens" {
        "names the token embedding, which alp-rl does not adapt (LoRA here adapts projections)"
            .to_string()
    } else {
        format!(
            "entry {entry:?} names no projection of this {} with {} layers",
            model.architecture.hf_class(),
            model.num_hidden_layers
        )
    };
    LoraError::invalid(
        source,
        "target_modules",
        problem,
        "name projections the model has: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, \
         down_proj, lm_head (or \"all-linear\")",
    )
}

/// Whether `value` is a key's "off" value: null, false, 0, an empty string, list or map, or a map of
/// such values.
fn is_off(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.values().all(is_off),
    }
}

/// Refuses any key outside [`READ_KEYS`] and [`IGNORED_KEYS`] whose value is not off.
fn refuse_other_keys(obj: &Map<String, Value>, source: &str) -> Result<(), LoraError> {
    for (key, value) in obj {
        let known = READ_KEYS.contains(&key.as_str()) || IGNORED_KEYS.contains(&key.as_str());
        if !known && !is_off(value) {
            return Err(LoraError::invalid(
                source,
                key.clone(),
                format!(
                    "is {value}: alp-rl loads plain LoRA only (no DoRA, fan_in_fan_out, per-module \
                     ranks or alphas, layer selections, biases or extra trained modules), and this \
                     key would change what the adapter computes"
                ),
                "save a plain LoRA adapter, or remove the key if its PEFT default applies",
            ));
        }
    }
    Ok(())
}

/// Typed access to the keys of one `adapter_config.json`, with errors that name the file and key.
struct Field<'a> {
    obj: &'a Map<String, Value>,
    source: &'a str,
}

impl Field<'_> {
    fn bad(&self, key: &str, problem: String, fix: &str) -> LoraError {
        LoraError::invalid(self.source, key, problem, fix)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&Value, LoraError> {
        self.get(key).ok_or_else(|| {
            self.bad(
                key,
                "is missing".into(),
                "write the adapter with PEFT's save_pretrained",
            )
        })
    }

    /// A string key that is absent, null, or one of `allowed`.
    fn expect_str(&self, key: &str, allowed: &[&str], why: &str) -> Result<(), LoraError> {
        match self.get(key) {
            None if key == "peft_type" => Err(self.bad(
                key,
                "is missing".into(),
                "write the adapter with PEFT's save_pretrained",
            )),
            None => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(other) => Err(self.bad(
                key,
                format!("is {other}: {why}"),
                &format!("use {key} = {:?}", allowed[0]),
            )),
        }
    }

    fn integer(&self, key: &str) -> Result<i64, LoraError> {
        let v = self.required(key)?;
        v.as_i64().ok_or_else(|| {
            self.bad(
                key,
                format!("is {v}: not an integer"),
                "write the rank as an integer",
            )
        })
    }

    fn optional_number(&self, key: &str) -> Result<Option<f64>, LoraError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.bad(key, format!("is {v}: not a number"), "write it as a number")
            }),
        }
    }

    fn number(&self, key: &str) -> Result<f64, LoraError> {
        self.required(key)?;
        Ok(self.optional_number(key)?.expect("present"))
    }

    fn boolean(&self, key: &str) -> Result<bool, LoraError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.bad(key, format!("is {v}: not a boolean"), "use true or false")),
        }
    }

    fn targets(&self) -> Result<TargetModules, LoraError> {
        let fix =
            "list the projections by name ([\"q_proj\", \"v_proj\", ...]) or use \"all-linear\"";
        match self.required("target_modules")? {
            Value::String(s) if s.eq_ignore_ascii_case("all-linear") => {
                Ok(TargetModules::AllLinear)
            }
            Value::String(s) => Err(self.bad(
                "target_modules",
                format!("is the regular expression {s:?}, which this reader does not match"),
                fix,
            )),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(TargetModules::Names)
                .ok_or_else(|| self.bad("target_modules", "holds a non-string entry".into(), fix)),
            v => Err(self.bad("target_modules", format!("is {v}"), fix)),
        }
    }

    /// `init_lora_weights`: a boolean or an initialisation that left the base weights unchanged.
    fn check_init(&self) -> Result<(), LoraError> {
        match self.get("init_lora_weights") {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(Value::String(s)) if BASE_PRESERVING_INITS.contains(&s.as_str()) => Ok(()),
            Some(v) => Err(self.bad(
                "init_lora_weights",
                format!(
                    "is {v}: that initialisation also changed the base model's weights, so the \
                     adapter does not apply to the original base"
                ),
                "convert it with PEFT (save_pretrained(path_initial_model_for_weight_conversion=...)) \
                 into an adapter on the unchanged base",
            )),
        }
    }
}

/// Whether two `base_model_name_or_path` values name the same model: their last path components
/// (the repository name of a hub id `Org/Name`, the directory of a local path, `Name` of a hub cache
/// snapshot `.../models--Org--Name/snapshots/<hash>`) are equal ignoring ASCII case. So
/// `Qwen/Qwen2.5-0.5B` and `/models/qwen2.5-0.5b/` match and `Qwen/Qwen2.5-1.5B` does not; the
/// organisation is ignored because re-uploads of one model under another organisation are common.
pub fn same_base_model(a: &str, b: &str) -> bool {
    base_model_key(a) == base_model_key(b)
}

fn base_model_key(name: &str) -> String {
    let parts: Vec<&str> = name
        .trim()
        .trim_end_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let leaf = match parts.iter().rposition(|p| p.starts_with("models--")) {
        Some(i) => parts[i].rsplit("--").next().unwrap_or(parts[i]),
        None => parts.last().copied().unwrap_or(""),
    };
    leaf.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_model_names_compare_by_their_last_component() {
        assert!(same_base_model(
            "Qwen/Qwen2.5-0.5B",
            "/models/qwen2.5-0.5b/"
        ));
        assert!(same_base_model(
            "/root/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B/snapshots/abc123",
            "Qwen/Qwen2.5-0.5B"
        ));
        assert!(!same_base_model("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B"));
    }

    #[test]
    fn peft_module_matching_is_a_dotted_suffix() {
        assert!(module_matches("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(module_matches(
            "model.layers.0.self_attn.q_proj",
            "self_attn.q_proj"
        ));
        assert!(!module_matches("model.layers.0.self_attn.q_proj", "proj"));
        assert!(module_matches("lm_head", "lm_head"));
    }
}
