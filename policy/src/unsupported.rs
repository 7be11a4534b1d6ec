//! `config.json` keys that would change the computation in ways this decoder does not implement: each
//! is refused with its name and the file, so a model never runs silently different from transformers.
//!
//! What is implemented is read in `config.rs` (sizes, RoPE with default / linear / llama3 scaling,
//! biases and q/k norms per [`Family`]); keys transformers ignores for a family are ignored here too,
//! except where a value would say the checkpoint was made for something else (an MLP bias on Qwen).
use serde_json::{Map, Value};

use crate::error::PolicyError;
use crate::family::{AttentionBias, Family};

/// Refuses every key of `raw` (the whole file) that this decoder cannot honour for `family`.
pub(crate) fn refuse_unsupported(
    raw: &Map<String, Value>,
    family: &Family,
    path: &str,
) -> Result<(), PolicyError> {
    let refuse = |field: &'static str, problem: String| {
        Err(PolicyError::ConfigField {
            path: path.to_string(),
            field,
            problem,
        })
    };
    if let Some(act) = raw.get("hidden_act").filter(|v| !v.is_null()) {
        if act.as_str() != Some("silu") {
            return refuse(
                "hidden_act",
                format!("is {act}; only \"silu\" is supported"),
            );
        }
    }
    if let Some(problem) = sliding_window(raw, family) {
        return refuse("use_sliding_window", problem);
    }
    if is_true(raw.get("mlp_bias")) && !family.mlp_bias_key {
        return refuse(
            "mlp_bias",
            format!(
                "is true, but {} has no MLP biases; set it to false",
                family.architecture
            ),
        );
    }
    if is_true(raw.get("attention_bias")) && family.attention_bias == AttentionBias::QkvAlways {
        return refuse(
            "attention_bias",
            format!(
                "is true, but {} has biases on q, k and v only (never on o_proj) whatever it \
                 says; remove it",
                family.architecture
            ),
        );
    }
    let rope_parameters = raw.get("rope_parameters").and_then(Value::as_object);
    let partial_rotary = raw
        .get("partial_rotary_factor")
        .or_else(|| rope_parameters.and_then(|p| p.get("partial_rotary_factor")));
    if let Some(factor) = partial_rotary.filter(|v| !v.is_null()) {
        if factor.as_f64() != Some(1.0) {
            return refuse(
                "partial_rotary_factor",
                format!(
                    "is {factor}; only rotary embeddings over the whole head (1.0) are supported"
                ),
            );
        }
    }
    for field in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(cap) = raw.get(field).filter(|v| !v.is_null()) {
            return refuse(
                field,
                format!(
                    "is {cap}; logit soft-capping is not supported (remove it or set it to null)"
                ),
            );
        }
    }
    if let Some(p) = raw.get("attention_dropout").and_then(Value::as_f64) {
        if p != 0.0 {
            return refuse(
                "attention_dropout",
                format!("is {p}; attention dropout is not implemented, set it to 0.0"),
            );
        }
    }
    if raw.get("quantization_config").is_some_and(|v| !v.is_null()) {
        return refuse(
            "quantization_config",
            "is set; quantized checkpoints are not supported, use the unquantized weights"
                .to_string(),
        );
    }
    Ok(())
}

fn is_true(value: Option<&Value>) -> bool {
    value.and_then(Value::as_bool) == Some(true)
}

/// Why the file asks for sliding-window attention, if it does, as transformers' Qwen2/Qwen3
/// configs decide it: with `use_sliding_window` true, a window of `sliding_window` tokens (4096 when
/// absent, none when null) on the layers `layer_types` marks `sliding_attention`, or else on every
/// layer from `max_window_layers` (default 28) on.
fn sliding_window(raw: &Map<String, Value>, family: &Family) -> Option<String> {
    if !family.sliding_window_keys || !is_true(raw.get("use_sliding_window")) {
        return None;
    }
    let window = match raw.get("sliding_window") {
        None => 4096,
        Some(Value::Null) => return None,
        Some(v) => v.as_i64().unwrap_or(0),
    };
    let layers = raw
        .get("num_hidden_layers")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let sliding: Vec<i64> = match raw.get("layer_types").and_then(Value::as_array) {
        Some(types) => (0..types.len() as i64)
            .filter(|&i| types[i as usize].as_str() == Some("sliding_attention"))
            .collect(),
        None => {
            let from = raw
                .get("max_window_layers")
                .and_then(Value::as_i64)
                .unwrap_or(28);
            (from.max(0)..layers).collect()
        }
    };
    let first = sliding.first()?;
    Some(format!(
        "is true: layers {first}.. would attend through a window of {window} tokens \
         (sliding_window), and sliding-window attention is not supported; set it to false"
    ))
}
