//! The parameters a config implies: their HF names, shapes and initialisation (the layout that
//! checkpoints, fresh random models and the model's `VarStore` share).
use crate::config::ModelConfig;
use crate::names::{self, LinearKind, LinearSite};

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
    let matrix = ParamInit::Normal(std);
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let mut specs = vec![spec(
        names::embed_tokens().weight(),
        vec![cfg.vocab_size, h],
        matrix,
    )];
    for l in 0..cfg.num_hidden_layers {
        // A projection's weight, then its bias if it has one.
        let projection = |kind: LinearKind, out: i64, inp: i64, bias: bool| {
            let path = LinearSite::in_layer(l, kind).path();
            let mut specs = vec![spec(path.weight(), vec![out, inp], matrix)];
            if bias {
                specs.push(spec(path.bias(), vec![out], ParamInit::Zeros));
            }
            specs
        };
        specs.push(spec(
            names::input_layernorm(l).weight(),
            vec![h],
            ParamInit::Ones,
        ));
        specs.extend(projection(LinearKind::Query, q_out, h, cfg.qkv_bias));
        specs.extend(projection(LinearKind::Key, kv_out, h, cfg.qkv_bias));
        specs.extend(projection(LinearKind::Value, kv_out, h, cfg.qkv_bias));
        specs.extend(projection(LinearKind::Output, h, q_out, cfg.o_bias));
        if cfg.architecture.family().qk_norm {
            specs.push(spec(names::q_norm(l).weight(), vec![d], ParamInit::Ones));
            specs.push(spec(names::k_norm(l).weight(), vec![d], ParamInit::Ones));
        }
        specs.push(spec(
            names::post_attention_layernorm(l).weight(),
            vec![h],
            ParamInit::Ones,
        ));
        specs.extend(projection(LinearKind::Gate, i, h, cfg.mlp_bias));
        specs.extend(projection(LinearKind::Up, i, h, cfg.mlp_bias));
        specs.extend(projection(LinearKind::Down, h, i, cfg.mlp_bias));
    }
    specs.push(spec(names::final_norm().weight(), vec![h], ParamInit::Ones));
    if !cfg.tie_word_embeddings {
        specs.push(spec(
            names::lm_head().weight(),
            vec![cfg.vocab_size, h],
            matrix,
        ));
    }
    specs
}

fn spec(name: String, shape: Vec<i64>, init: ParamInit) -> ParamSpec {
    ParamSpec { name, shape, init }
}
