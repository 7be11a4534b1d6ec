//! Where every parameter sits in the HF layout, and its name: the one place parameter names are
//! spelled (the parameter list, the model's construction, the hook sites, checkpoints, adapters).
//!
//! A [`ParamPath`] is built part by part, as candle's `VarBuilder::pp` does:
//! `ParamPath::root().pp("model").pp("layers").pp(3)` is `model.layers.3`, and
//! [`ParamPath::weight`] ends it in `.weight`. The functions below name each place of the decoder
//! (`layer(3).pp("mlp")`, [`embed_tokens`], [`lm_head`], ...); [`LinearSite::path`] names a
//! projection. A PEFT adapter saves its tensors under the base model's names wrapped in
//! `base_model.model.` ([`peft`]), so [`lora_a`] of layer 3's `q_proj` is
//! `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`.
use std::fmt;

/// A dotted parameter path (`model.layers.3.mlp.up_proj`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ParamPath(String);

impl ParamPath {
    /// The empty path, above every name.
    pub fn root() -> Self {
        ParamPath(String::new())
    }

    /// This path with `part` appended (`model` + `layers` = `model.layers`).
    pub fn pp(&self, part: impl fmt::Display) -> Self {
        if self.0.is_empty() {
            ParamPath(part.to_string())
        } else {
            ParamPath(format!("{}.{part}", self.0))
        }
    }

    /// This path followed by every part of `tail`.
    pub fn join(&self, tail: &ParamPath) -> Self {
        if tail.0.is_empty() {
            self.clone()
        } else {
            self.pp(&tail.0)
        }
    }

    /// The name of this module's weight (`<path>.weight`).
    pub fn weight(&self) -> String {
        self.pp("weight").0
    }

    /// The name of this module's bias (`<path>.bias`).
    pub fn bias(&self) -> String {
        self.pp("bias").0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParamPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `model`: the decoder under the causal-LM wrapper (HF `*ForCausalLM.model`).
pub fn decoder() -> ParamPath {
    ParamPath::root().pp("model")
}

/// `model.embed_tokens`: the token embedding.
pub fn embed_tokens() -> ParamPath {
    decoder().pp("embed_tokens")
}

/// `model.layers.{l}`: decoder layer `l`.
pub fn layer(l: usize) -> ParamPath {
    decoder().pp("layers").pp(l)
}

/// `model.layers.{l}.input_layernorm`: the norm before attention.
pub fn input_layernorm(l: usize) -> ParamPath {
    layer(l).pp("input_layernorm")
}

/// `model.layers.{l}.post_attention_layernorm`: the norm before the MLP.
pub fn post_attention_layernorm(l: usize) -> ParamPath {
    layer(l).pp("post_attention_layernorm")
}

/// `model.layers.{l}.self_attn.q_norm`: Qwen3's per-head norm on the queries.
pub fn q_norm(l: usize) -> ParamPath {
    layer(l).pp("self_attn").pp("q_norm")
}

/// `model.layers.{l}.self_attn.k_norm`: Qwen3's per-head norm on the keys.
pub fn k_norm(l: usize) -> ParamPath {
    layer(l).pp("self_attn").pp("k_norm")
}

/// `model.norm`: the final norm.
pub fn final_norm() -> ParamPath {
    decoder().pp("norm")
}

/// `lm_head`: the LM head (absent from a tied model, which multiplies by the embedding).
pub fn lm_head() -> ParamPath {
    ParamPath::root().pp("lm_head")
}

/// `path` as a PEFT adapter file names it: under `base_model.model`.
pub fn peft(path: &ParamPath) -> ParamPath {
    ParamPath::root().pp("base_model").pp("model").join(path)
}

/// The PEFT name of the LoRA `A` factor (`[r, in]`) adapting `site`'s weight.
pub fn lora_a(site: LinearSite) -> String {
    peft(&site.path()).pp("lora_A").weight()
}

/// The PEFT name of the LoRA `B` factor (`[out, r]`) adapting `site`'s weight.
pub fn lora_b(site: LinearSite) -> String {
    peft(&site.path()).pp("lora_B").weight()
}

/// Which projection a site computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearKind {
    Query,
    Key,
    Value,
    Output,
    Gate,
    Up,
    Down,
    LmHead,
}

impl LinearKind {
    /// The seven projections of a decoder layer, in HF order.
    pub const IN_LAYER: [LinearKind; 7] = [
        LinearKind::Query,
        LinearKind::Key,
        LinearKind::Value,
        LinearKind::Output,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// The module holding this projection in a layer (`self_attn`, `mlp`) and its own name.
    fn module_and_name(self) -> (&'static str, &'static str) {
        match self {
            LinearKind::Query => ("self_attn", "q_proj"),
            LinearKind::Key => ("self_attn", "k_proj"),
            LinearKind::Value => ("self_attn", "v_proj"),
            LinearKind::Output => ("self_attn", "o_proj"),
            LinearKind::Gate => ("mlp", "gate_proj"),
            LinearKind::Up => ("mlp", "up_proj"),
            LinearKind::Down => ("mlp", "down_proj"),
            LinearKind::LmHead => ("", "lm_head"),
        }
    }

    /// The projection's own name (`q_proj`, ..., `lm_head`): what PEFT's `target_modules` lists.
    pub fn module_name(self) -> &'static str {
        self.module_and_name().1
    }
}

/// Where a projection sits: its decoder layer (`None` for the LM head) and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearSite {
    pub layer: Option<usize>,
    pub kind: LinearKind,
}

impl LinearSite {
    /// Projection `kind` of decoder layer `l`.
    pub fn in_layer(l: usize, kind: LinearKind) -> Self {
        LinearSite {
            layer: Some(l),
            kind,
        }
    }

    /// The LM head.
    pub fn lm_head() -> Self {
        LinearSite {
            layer: None,
            kind: LinearKind::LmHead,
        }
    }

    /// The module path of this projection, e.g. `model.layers.3.mlp.up_proj` or `lm_head`.
    pub fn path(&self) -> ParamPath {
        match self.layer {
            None => lm_head(),
            Some(l) => {
                let (module, name) = self.kind.module_and_name();
                layer(l).pp(module).pp(name)
            }
        }
    }

    /// The HF name of the weight this site multiplies, e.g. `model.layers.3.mlp.up_proj.weight`.
    pub fn weight_name(&self) -> String {
        self.path().weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_hf_and_peft_spellings() {
        let up = LinearSite::in_layer(3, LinearKind::Up);
        assert_eq!(up.weight_name(), "model.layers.3.mlp.up_proj.weight");
        assert_eq!(LinearSite::lm_head().weight_name(), "lm_head.weight");
        assert_eq!(q_norm(0).weight(), "model.layers.0.self_attn.q_norm.weight");
        assert_eq!(embed_tokens().weight(), "model.embed_tokens.weight");
        assert_eq!(final_norm().weight(), "model.norm.weight");
        assert_eq!(
            LinearSite::in_layer(1, LinearKind::Value).path().bias(),
            "model.layers.1.self_attn.v_proj.bias"
        );
        assert_eq!(
            lora_a(LinearSite::in_layer(2, LinearKind::Query)),
            "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            lora_b(LinearSite::lm_head()),
            "base_model.model.lm_head.lora_B.weight"
        );
    }
}
