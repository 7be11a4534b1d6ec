//! The decoder-only transformer shared by Qwen2, Qwen3 and Llama: [`CausalLM`] holds the parameters and
//! runs the blocks of `blocks.rs` (written to match HF transformers op for op) in order.
//!
//! Every parameter lives in one [`VarStore`] under its HF name, so checkpoint IO and optimizers see
//! the same names as transformers. Projections add the hooks' [`ForwardHooks::linear_delta`] and each
//! layer's input goes through [`ForwardHooks::layer_input`]; with [`crate::NoHooks`] this is the plain model.
use std::collections::HashMap;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::blocks::{Activations, DecoderLayer, Linear, NamedParams, RmsNorm};
use crate::config::ModelConfig;
use crate::error::PolicyError;
use crate::hooks::{ForwardHooks, LinearSite};
use crate::kv_cache::KvCache;
use crate::names;
use crate::onednn_head::OnednnLmHead;
pub use crate::params::{parameter_specs, ParamInit, ParamSpec};
use crate::precision::{Bf16Compute, Precision};
use crate::rope::Rotary;

/// Options for loading or creating a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Compute (and storage) dtype of the parameters; the file's dtype is converted at load.
    pub kind: Kind,
    pub device: Device,
    /// How a `kind = BFloat16` model computes ([`Bf16Compute`]); `Native` unless asked otherwise.
    pub bf16: Bf16Compute,
}

impl LoadOptions {
    /// The precision these options give a model.
    pub fn precision(&self) -> Precision {
        Precision::new(self.kind, self.bf16, self.device)
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            kind: Kind::Float,
            device: Device::Cpu,
            bf16: Bf16Compute::Native,
        }
    }
}

/// A decoder-only causal language model with HF parameter names.
pub struct CausalLM {
    config: ModelConfig,
    vs: VarStore,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    precision: Precision,
}

impl std::fmt::Debug for CausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLM")
            .field("architecture", &self.config.architecture)
            .field("layers", &self.layers.len())
            .field("kind", &self.kind())
            .finish()
    }
}

impl CausalLM {
    /// Builds the model around already-checked tensors keyed by HF name (one per [`parameter_specs`]),
    /// already in `precision`.
    pub(crate) fn from_tensors(
        config: ModelConfig,
        tensors: HashMap<String, Tensor>,
        device: Device,
        precision: Precision,
    ) -> CausalLM {
        let vs = VarStore::new(device);
        let params = register_parameters(&vs, &config, tensors);
        let eps = config.rms_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|l| DecoderLayer::from_params(&params, &config, l, precision))
            .collect();
        let embed_tokens = params.take(&names::embed_tokens().weight());
        // Tied models reuse the embedding matrix as the LM head and have no `lm_head.weight`.
        let lm_head_weight = if config.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            params.take(&names::lm_head().weight())
        };
        let lm_head = Linear::new(LinearSite::lm_head(), lm_head_weight, precision);
        let norm = RmsNorm::new(params.take(&names::final_norm().weight()), eps);
        let rotary = Rotary::new(&config, device);
        CausalLM {
            config,
            vs,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            precision,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The parameters' dtype.
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// The parameters' dtype and the rounding applied to them and to the residual stream.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The var store holding every parameter under its HF name (trainable, group 0).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Parameters by HF name, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    /// Copies every parameter from `other` (same config), converting dtype and device, through the
    /// same checked copy as [`Self::copy_named_weights`]; panics if the configs differ.
    pub fn copy_weights_from(&self, other: &CausalLM) {
        if let Err(e) = self.copy_named_weights(&other.named_parameters()) {
            panic!("copy_weights_from: {e}");
        }
    }

    /// Copies published weights, `(HF name, tensor)` of every parameter in any dtype (converted as
    /// they are copied): how a copy on another thread receives the learner's weights. Refused, with
    /// nothing copied, when a name is unknown or repeated, a shape differs or a tensor is missing.
    pub fn copy_named_weights(&self, tensors: &[(String, Tensor)]) -> Result<(), PolicyError> {
        self.copy_checked(tensors, true)
    }

    /// Like [`Self::copy_named_weights`] for some of the parameters: the others keep their values.
    /// Refused, with nothing copied, when a name is unknown or repeated or a shape differs.
    pub fn copy_named_weights_subset(
        &self,
        tensors: &[(String, Tensor)],
    ) -> Result<(), PolicyError> {
        self.copy_checked(tensors, false)
    }

    /// Checks every `(name, tensor)` against the model (known name, named once, same shape; with
    /// `every`, each parameter named), then copies them all.
    fn copy_checked(&self, tensors: &[(String, Tensor)], every: bool) -> Result<(), PolicyError> {
        let mut params: std::collections::HashMap<String, Tensor> =
            self.vs.variables().into_iter().collect();
        let bad = |problem: String| PolicyError::WeightsMismatch { problem };
        if every && tensors.len() != params.len() {
            return Err(bad(format!(
                "published weights have {} tensors, the model {}",
                tensors.len(),
                params.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, t) in tensors {
            let p = params
                .get(name)
                .ok_or_else(|| bad(format!("published weight {name} is not in the model")))?;
            if !seen.insert(name.as_str()) {
                return Err(bad(format!("published weight {name} is named twice")));
            }
            if p.size() != t.size() {
                return Err(bad(format!(
                    "published weight {name} is {:?}, the model's {:?}",
                    t.size(),
                    p.size()
                )));
            }
        }
        tch::no_grad(|| {
            for (name, t) in tensors {
                self.copy_into(params.get_mut(name).expect("checked above"), t);
            }
        });
        Ok(())
    }

    /// Copies `src` into parameter `param`, rounded first if this model rounds its weights.
    fn copy_into(&self, param: &mut Tensor, src: &Tensor) {
        match self.precision.rounding {
            Some(rounded) => param.copy_(&src.to_kind(rounded)),
            None => param.copy_(src),
        }
    }

    /// Final-normed hidden states `[b, s, hidden]` for a whole sequence (training and scoring).
    ///
    /// `attention_mask` (`[b, s]`, 1 for tokens and 0 for padding) masks padded keys; positions count
    /// only real tokens, so left- and right-padded rows get the same positions as unpadded ones.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        let (b, s) = input_ids.size2().expect("input_ids are [batch, seq]");
        let device = input_ids.device();
        let valid = match attention_mask {
            Some(mask) => mask.to_kind(Kind::Bool),
            None => Tensor::ones([b, s], (Kind::Bool, device)),
        };
        let positions = positions_from_mask(&valid);
        let bias = attention_bias(&valid, 0, s, self.kind());
        self.run(input_ids, &positions, &bias, None, hooks)
    }

    /// Logits `[b, s, vocab]` for a whole sequence: [`Self::hidden_states`] then the LM head.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        let h = self.hidden_states(input_ids, attention_mask, hooks);
        self.logits(&h, hooks)
    }

    /// The LM head on (a selection of) final hidden states.
    pub fn logits(&self, hidden: &Tensor, hooks: &dyn ForwardHooks) -> Tensor {
        self.logits_with(hidden, hooks, None)
    }

    /// The LM head's weight (`[vocab, hidden]`; the embedding matrix in a tied model).
    pub fn lm_head_weight(&self) -> &Tensor {
        &self.lm_head.weight
    }

    /// A copy of the LM head's weight for oneDNN where that multiplies faster (an f32 model on the
    /// CPU with a large vocabulary, see [`OnednnLmHead`]), made from the current weights; `None`
    /// elsewhere. For generation: make it again after the weights change.
    pub fn onednn_lm_head(&self) -> Option<OnednnLmHead> {
        OnednnLmHead::for_weight(&self.lm_head.weight)
    }

    /// [`Self::logits`], the LM head multiplied by `onednn` (from [`Self::onednn_lm_head`] of the
    /// current weights) where given.
    pub fn logits_with(
        &self,
        hidden: &Tensor,
        hooks: &dyn ForwardHooks,
        onednn: Option<&OnednnLmHead>,
    ) -> Tensor {
        hooks.logits(self.lm_head.forward_with(hidden, hooks, onednn))
    }

    /// Incremental forward with a KV cache: `input_ids` (`[b, s]`) sit at `positions` (`[b, s]`) and
    /// attend to every cached key plus themselves; `key_valid` (`[b, cache.len() + s]`, bool) marks
    /// which cached and new keys are real tokens. Returns final-normed hidden states `[b, s, hidden]`.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        cache: &mut KvCache,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        let (_, s) = input_ids.size2().expect("input_ids are [batch, seq]");
        let bias = attention_bias(key_valid, cache.len(), s, self.kind());
        self.run(input_ids, positions, &bias, Some(cache), hooks)
    }

    fn run(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        bias: &Tensor,
        mut cache: Option<&mut KvCache>,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        // The tables are computed in f32 once; the model-dtype ones are that, cast (as HF does).
        let rope32 = self.rotary.cos_sin(positions, Kind::Float);
        let act = Activations::new(rope32, self.kind(), bias, self.precision);
        let mut h = hooks.embedding(input_ids, &self.embed_tokens);
        for layer in &self.layers {
            h = layer.forward(h, &act, cache.as_deref_mut(), hooks);
        }
        if let Some(cache) = cache {
            cache.advance(input_ids.size()[1]);
        }
        let h = self.precision.round_activations(h);
        self.precision.round_activations(self.norm.forward(&h))
    }

    /// What every decoder layer of one whole-sequence forward shares (RoPE tables, attention bias), as
    /// [`Self::hidden_states`] builds it: for running the decoder a layer at a time ([`Self::layer`]),
    /// e.g. to recompute one layer for activation checkpointing.
    pub fn layer_context(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> LayerContext {
        let (b, s) = input_ids.size2().expect("input_ids are [batch, seq]");
        let valid = match attention_mask {
            Some(mask) => mask.to_kind(Kind::Bool),
            None => Tensor::ones([b, s], (Kind::Bool, input_ids.device())),
        };
        let positions = positions_from_mask(&valid);
        let bias = attention_bias(&valid, 0, s, self.kind());
        let rope32 = self.rotary.cos_sin(&positions, Kind::Float);
        LayerContext(Activations::new(rope32, self.kind(), &bias, self.precision))
    }

    /// The hidden state entering layer 0: the token embedding with the hooks' delta.
    pub fn embed(&self, input_ids: &Tensor, hooks: &dyn ForwardHooks) -> Tensor {
        hooks.embedding(input_ids, &self.embed_tokens)
    }

    /// Decoder layer `layer` on its input `h` (the hidden state before `hooks.layer_input`), as
    /// [`Self::hidden_states`] runs it: `layer(embed)`, `layer(layer(embed))`, ... then
    /// [`Self::final_norm`] equal the hidden states bit for bit.
    pub fn layer(
        &self,
        layer: usize,
        h: Tensor,
        ctx: &LayerContext,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        self.layers[layer].forward(h, &ctx.0, None, hooks)
    }

    /// The final norm on the last layer's output: the final hidden states the LM head reads.
    pub fn final_norm(&self, h: Tensor) -> Tensor {
        let h = self.precision.round_activations(h);
        self.precision.round_activations(self.norm.forward(&h))
    }

    /// An empty KV cache for `batch` rows of up to `capacity` positions, in the model's dtype.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        KvCache::new(
            self.layers.len(),
            batch,
            self.config.num_key_value_heads,
            self.config.head_dim,
            capacity,
            self.kind(),
            self.device(),
        )
    }
}

/// The tables one whole-sequence forward shares across its decoder layers ([`CausalLM::layer_context`]).
pub struct LayerContext(Activations);

/// Adds every parameter to the var store under its HF name, in spec order (trainable, group 0).
fn register_parameters(
    vs: &VarStore,
    config: &ModelConfig,
    mut tensors: HashMap<String, Tensor>,
) -> NamedParams {
    let root = vs.root();
    let mut params = HashMap::new();
    for spec in parameter_specs(config) {
        let tensor = tensors
            .remove(&spec.name)
            .expect("from_tensors is given every parameter of the spec");
        let mut path = root.clone();
        let mut parts: Vec<&str> = spec.name.split('.').collect();
        let leaf = parts.pop().expect("parameter names have a leaf");
        for part in parts {
            path = path.sub(part);
        }
        params.insert(spec.name.clone(), path.add(leaf, tensor, true));
    }
    NamedParams(params)
}

/// Position of each token among the real (unpadded) tokens of its row; padding gets position 0.
pub fn positions_from_mask(valid: &Tensor) -> Tensor {
    (valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

/// Additive attention bias `[b, 1, q_len, k_len]`: 0 where query `i` (at absolute index
/// `q_offset + i`) may attend to key `j` (causal and `key_valid[b, j]`), the dtype's minimum elsewhere,
/// as HF does, so that fully masked (padding) rows stay finite.
pub fn attention_bias(key_valid: &Tensor, q_offset: i64, q_len: i64, kind: Kind) -> Tensor {
    let (b, k_len) = key_valid.size2().expect("key_valid is [batch, keys]");
    let device = key_valid.device();
    let key_pos = Tensor::arange(k_len, (Kind::Int64, device)).view([1, k_len]);
    let query_pos = (Tensor::arange(q_len, (Kind::Int64, device)) + q_offset).view([q_len, 1]);
    let causal = key_pos.le_tensor(&query_pos);
    let allowed = causal
        .unsqueeze(0)
        .logical_and(&key_valid.to_kind(Kind::Bool).unsqueeze(1));
    let min = match kind {
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    };
    Tensor::zeros([b, q_len, k_len], (kind, device))
        .masked_fill(&allowed.logical_not(), min)
        .unsqueeze(1)
}
