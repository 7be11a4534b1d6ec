//! The parameters a config implies: their HF names, shapes and initialisation (the layout that
//! checkpoints, fresh random models and the model's `VarStore` share).
use crate::config::{Architecture, ModelConfig};

/// How a parameter is initialised in a fresh random model (HF `_init_weights` conventions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// N(0, std^2), for matrices and embeddings.
    Normal(f64),
    Ones,
    Zeros,
}

/// One parameter the config implies: its HF name, shape and initialisation.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub init: ParamInit,
}

/// Every parameter of a model with this config, in HF order.
pub fn parameter_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let std = cfg
        .raw
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.02);
    let mut specs = Vec::new();
    let mut push = |name: String, shape: Vec<i64>, init: ParamInit| {
        specs.push(ParamSpec { name, shape, init })
    };
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    push(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, h],
        ParamInit::Normal(std),
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        push(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            ParamInit::Ones,
        );
        for (proj, out) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
            push(
                format!("{p}.self_attn.{proj}.weight"),
                vec![out, h],
                ParamInit::Normal(std),
            );
            if cfg.qkv_bias {
                push(
                    format!("{p}.self_attn.{proj}.bias"),
                    vec![out],
                    ParamInit::Zeros,
                );
            }
        }
        push(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q_out],
            ParamInit::Normal(std),
        );
        if cfg.o_bias {
            push(
                format!("{p}.self_attn.o_proj.bias"),
                vec![h],
                ParamInit::Zeros,
            );
        }
        if cfg.architecture == Architecture::Qwen3 {
            push(
                format!("{p}.self_attn.q_norm.weight"),
                vec![d],
                ParamInit::Ones,
            );
            push(
                format!("{p}.self_attn.k_norm.weight"),
                vec![d],
                ParamInit::Ones,
            );
        }
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            ParamInit::Ones,
        );
        for (proj, shape) in [
            ("gate_proj", [i, h]),
            ("up_proj", [i, h]),
            ("down_proj", [h, i]),
        ] {
            push(
                format!("{p}.mlp.{proj}.weight"),
                shape.to_vec(),
                ParamInit::Normal(std),
            );
            if cfg.mlp_bias {
                push(
                    format!("{p}.mlp.{proj}.bias"),
                    vec![shape[0]],
                    ParamInit::Zeros,
                );
            }
        }
    }
    push("model.norm.weight".into(), vec![h], ParamInit::Ones);
    if !cfg.tie_word_embeddings {
        push(
            "lm_head.weight".into(),
            vec![cfg.vocab_size, h],
            ParamInit::Normal(std),
        );
    }
    specs
}
