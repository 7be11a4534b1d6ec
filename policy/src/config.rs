//! `config.json` of an HF decoder-only checkpoint, in all the spellings transformers writes.
//!
//! transformers 4.x writes `rope_theta` and `rope_scaling` at the top level and the dtype as
//! `torch_dtype`; transformers 5 moves them under `rope_parameters` and writes `dtype`. We read both,
//! and keep the raw JSON so that a save writes back every field we do not interpret.
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

use crate::error::PolicyError;
pub use crate::family::Architecture;
use crate::family::Family;
use crate::unsupported::refuse_unsupported;

/// How rotary frequencies are scaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope_type: "linear"`).
    Linear {
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling (`rope_type: "llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The interpreted model configuration.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (always on for Qwen2).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias` puts it on o_proj too).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    /// The dtype named in the file (`torch_dtype` or `dtype`), if any.
    pub stored_dtype: Option<String>,
    /// Every field of the file, so a save round-trips what we do not interpret.
    pub raw: Map<String, Value>,
}

/// The fields as they may appear in the file; every spelling is optional here and resolved below.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<i64>,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<i64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

fn required<T>(value: Option<T>, field: &'static str, path: &str) -> Result<T, PolicyError> {
    value.ok_or_else(|| PolicyError::ConfigField {
        path: path.to_string(),
        field,
        problem: "is missing".to_string(),
    })
}

fn token_ids(value: &Option<Value>) -> Vec<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json`; `path` only names the file in errors.
    pub fn from_json_str(text: &str, path: &str) -> Result<Self, PolicyError> {
        let (raw_map, raw) = parse_raw(text, path)?;
        let family = family_of(&raw, path)?;
        refuse_unsupported(&raw_map, family, path)?;
        let heads = AttentionShape::resolve(&raw, path)?;
        let (rope_theta, rope_scaling) = rope_settings(&raw, path)?;
        let (qkv_bias, o_bias) = family.attention_biases(raw.attention_bias.unwrap_or(false));

        let config = ModelConfig {
            architecture: family.architecture,
            vocab_size: required(raw.vocab_size, "vocab_size", path)?,
            hidden_size: heads.hidden_size,
            intermediate_size: required(raw.intermediate_size, "intermediate_size", path)?,
            num_hidden_layers: required(raw.num_hidden_layers, "num_hidden_layers", path)?,
            num_attention_heads: heads.num_attention_heads,
            num_key_value_heads: heads.num_key_value_heads,
            head_dim: heads.head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(32_768),
            // transformers defaults tie_word_embeddings to True in PretrainedConfig; each family's
            // config class sets its own default.
            tie_word_embeddings: raw
                .tie_word_embeddings
                .unwrap_or(family.tie_word_embeddings_default),
            qkv_bias,
            o_bias,
            // A family without MLP biases refuses `mlp_bias: true` (unsupported.rs).
            mlp_bias: family.mlp_bias_key && raw.mlp_bias.unwrap_or(false),
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
            stored_dtype: raw.dtype.or(raw.torch_dtype),
            raw: raw_map,
        };
        config.check_values(path)?;
        Ok(config)
    }

    /// Refuses values no model can run with (they would otherwise compute NaN everywhere and sample
    /// token 0 with NaN log-probs, or fail allocating): sizes must be positive, `rms_norm_eps` and
    /// `rope_theta` positive and finite, `head_dim` even (rotary embeddings rotate pairs).
    fn check_values(&self, path: &str) -> Result<(), PolicyError> {
        let bad = |field: &'static str, problem: String| {
            Err(PolicyError::ConfigField {
                path: path.to_string(),
                field,
                problem,
            })
        };
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers as i64),
            ("num_attention_heads", self.num_attention_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in sizes {
            if v < 1 {
                return bad(field, format!("is {v}; it must be at least 1"));
            }
        }
        if self.head_dim % 2 != 0 {
            return bad(
                "head_dim",
                format!(
                    "is {}; rotary embeddings need an even head_dim",
                    self.head_dim
                ),
            );
        }
        for (field, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(
                    field,
                    format!("is {v}; it must be a positive finite number"),
                );
            }
        }
        let factors = match self.rope_scaling {
            RopeScaling::None => vec![],
            RopeScaling::Linear { factor } => vec![factor],
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => vec![
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            ],
        };
        if factors.iter().any(|f| !(*f > 0.0 && f.is_finite())) {
            return bad(
                "rope_scaling",
                format!("has {factors:?}; every factor must be a positive finite number"),
            );
        }
        Ok(())
    }

    /// The JSON written beside saved weights: the original fields with the dtype brought up to date.
    pub fn to_json(&self, dtype: &str) -> Value {
        let mut map = self.raw.clone();
        map.insert("torch_dtype".into(), Value::from(dtype));
        if map.contains_key("dtype") {
            map.insert("dtype".into(), Value::from(dtype));
        }
        Value::Object(map)
    }
}

/// The file as a JSON object (kept whole, to be written back) and its fields as we read them.
fn parse_raw(text: &str, path: &str) -> Result<(Map<String, Value>, RawConfig), PolicyError> {
    let parse_error = |message: String| PolicyError::ConfigParse {
        path: path.to_string(),
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?;
    let raw_map = match &value {
        Value::Object(map) => map.clone(),
        _ => return Err(parse_error("expected a JSON object".to_string())),
    };
    let raw: RawConfig = serde_json::from_value(value).map_err(|e| parse_error(e.to_string()))?;
    Ok((raw_map, raw))
}

/// The family named by `model_type` (or else the first of `architectures`, a transformers class).
fn family_of(raw: &RawConfig, path: &str) -> Result<&'static Family, PolicyError> {
    let name = match (&raw.model_type, &raw.architectures) {
        (Some(t), _) => t.clone(),
        (None, Some(archs)) if !archs.is_empty() => archs[0].clone(),
        _ => required(None, "model_type", path)?,
    };
    Family::named(&name).ok_or_else(|| PolicyError::UnsupportedArchitecture {
        path: path.to_string(),
        model_type: name.clone(),
        supported: Family::supported(),
    })
}

/// The attention's sizes: `head_dim` defaults to `hidden_size / num_attention_heads` and
/// `num_key_value_heads` to `num_attention_heads`, which it must divide.
struct AttentionShape {
    hidden_size: i64,
    num_attention_heads: i64,
    num_key_value_heads: i64,
    head_dim: i64,
}

impl AttentionShape {
    fn resolve(raw: &RawConfig, path: &str) -> Result<Self, PolicyError> {
        let bad = |field: &'static str, problem: String| PolicyError::ConfigField {
            path: path.to_string(),
            field,
            problem,
        };
        let hidden_size = required(raw.hidden_size, "hidden_size", path)?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads", path)?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None => {
                if num_attention_heads <= 0 || hidden_size % num_attention_heads != 0 {
                    return Err(bad(
                        "head_dim",
                        format!(
                            "is missing and hidden_size {hidden_size} is not divisible by \
                             num_attention_heads {num_attention_heads}"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if num_key_value_heads <= 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "is {num_key_value_heads}, which does not divide num_attention_heads \
                     {num_attention_heads}"
                ),
            ));
        }
        Ok(AttentionShape {
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
        })
    }
}

/// `rope_theta` (default 10000) and the scaling: transformers 5 nests both under
/// `rope_parameters`; 4.x has them top level.
fn rope_settings(raw: &RawConfig, path: &str) -> Result<(f64, RopeScaling), PolicyError> {
    let rope_params = raw.rope_parameters.as_ref().and_then(Value::as_object);
    let rope_theta = raw
        .rope_theta
        .or_else(|| {
            rope_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10_000.0);
    let scaling_source = match &raw.rope_scaling {
        Some(Value::Object(map)) => Some(map),
        _ => rope_params,
    };
    Ok((rope_theta, parse_rope_scaling(scaling_source, path)?))
}

fn parse_rope_scaling(
    params: Option<&Map<String, Value>>,
    path: &str,
) -> Result<RopeScaling, PolicyError> {
    let Some(params) = params else {
        return Ok(RopeScaling::None);
    };
    let rope_type = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |key: &'static str| -> Result<f64, PolicyError> {
        params
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| PolicyError::ConfigField {
                path: path.to_string(),
                field: "rope_scaling",
                problem: format!("rope_type {rope_type:?} needs the number {key:?}"),
            })
    };
    match rope_type {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: number("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")?,
        }),
        other => Err(PolicyError::ConfigField {
            path: path.to_string(),
            field: "rope_scaling",
            problem: format!(
                "rope_type {other:?} is not supported; supported: default, linear, llama3"
            ),
        }),
    }
}
