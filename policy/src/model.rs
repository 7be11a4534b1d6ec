//! The decoder-only transformer shared by Qwen2, Qwen3 and Llama, written to match HF transformers
//! op for op (RMSNorm in f32, half-split RoPE, GQA attention, SwiGLU MLP).
//!
//! Every parameter lives in one [`VarStore`] under its HF name, so checkpoint IO and optimizers see
//! the same names as transformers. Projections go through [`ForwardHooks::linear`] and each layer's
//! input through [`ForwardHooks::layer_input`]; with [`crate::NoHooks`] this is the plain model.
use std::collections::HashMap;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::PolicyError;
use crate::hooks::{ForwardHooks, LinearKind, LinearSite, Weight};
use crate::kv_cache::KvCache;
use crate::onednn_head::OnednnLmHead;
pub use crate::params::{parameter_specs, ParamInit, ParamSpec};
use crate::precision::{Bf16Compute, Precision};
use crate::rope::Rotary;

/// RMSNorm as HF computes it: normalise in f32, cast back to the input's dtype, then scale. An f32
/// input with bf16 weights (a residual stream a hook widened, see [`Activations`]) stays f32.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// The RoPE tables of one forward in the model's dtype and in f32, and the attention bias, so that
/// each layer uses those of its activations' dtype.
///
/// Activations are in the model's dtype unless a hook widens them: ALP returns its perturbed residual
/// in f32 (noise below half a bf16 ulp would vanish if rounded back), and from there on HF's ops
/// promote to f32 (norms keep the input's dtype, `x + branch` promotes) while [`crate::hooks::linear`]
/// upcasts a bf16 weight to the f32 input. So a bf16 model's perturbed training forward computes in
/// f32 with its bf16 weights from the first perturbed layer on; a plain forward is untouched.
struct Activations {
    rope: (Tensor, Tensor),
    rope32: (Tensor, Tensor),
    bias: Tensor,
    /// `bias` in f32, made once on first use (only a widened forward of a bf16 model needs it).
    bias32: std::cell::OnceCell<Tensor>,
    /// A bf16-rounded f32 model rounds its residual stream where a bf16 model's would be bf16.
    precision: Precision,
}

impl Activations {
    fn rope(&self, kind: Kind) -> &(Tensor, Tensor) {
        if kind == Kind::Float {
            &self.rope32
        } else {
            &self.rope
        }
    }

    fn bias(&self, kind: Kind) -> Tensor {
        if self.bias.kind() == kind {
            self.bias.shallow_clone()
        } else {
            debug_assert_eq!(
                kind,
                Kind::Float,
                "activations are the model's dtype or f32"
            );
            self.bias32
                .get_or_init(|| self.bias.to_kind(Kind::Float))
                .shallow_clone()
        }
    }
}

/// A projection `x W^T + b` at a known site, routed through the hooks.
#[derive(Debug)]
struct Linear {
    site: LinearSite,
    weight: Tensor,
    bias: Option<Tensor>,
    /// A bf16-rounded f32 model rounds each projection's output, as a bf16 matmul's is.
    precision: Precision,
}

impl Linear {
    fn forward(&self, x: &Tensor, hooks: &dyn ForwardHooks) -> Tensor {
        self.forward_with(x, hooks, None)
    }

    /// [`Self::forward`], multiplying by `onednn` (a copy of this weight) where given.
    fn forward_with(
        &self,
        x: &Tensor,
        hooks: &dyn ForwardHooks,
        onednn: Option<&OnednnLmHead>,
    ) -> Tensor {
        self.precision.round_activations(hooks.linear(
            self.site,
            x,
            &Weight::with_onednn(&self.weight, onednn),
            self.bias.as_ref(),
        ))
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3's per-head norms on q and k, applied before RoPE.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// `x`: `[b, s, hidden]`; `bias`: additive mask `[b, 1, s, keys]`; with a cache, the new keys and
    /// values are written at the cache's current length and attention runs over all cached keys.
    fn forward(
        &self,
        x: &Tensor,
        act: &Activations,
        cache: Option<(&mut KvCache, usize)>,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        let (b, s, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let (rope, bias) = (act.rope(x.kind()), &act.bias(x.kind()));
        let heads = |t: Tensor, n: i64, norm: &Option<RmsNorm>| {
            let t = t.view([b, s, n, self.head_dim]);
            let t = match norm {
                Some(norm) => norm.forward(&t),
                None => t,
            };
            t.transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(x, hooks), self.num_heads, &self.q_norm);
        let k = heads(
            self.k_proj.forward(x, hooks),
            self.num_kv_heads,
            &self.k_norm,
        );
        let v = heads(self.v_proj.forward(x, hooks), self.num_kv_heads, &None);
        let (cos, sin) = rope;
        let q = Rotary::apply(&q, cos, sin);
        let k = Rotary::apply(&k, cos, sin);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v),
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if s == 1 {
            return self
                .o_proj
                .forward(&self.decode_attention(&q, &k, &v, bias, scale), hooks);
        }
        let attn = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(bias),
            0.0,
            false,
            scale,
            self.num_heads != self.num_kv_heads,
        );
        let attn = attn
            .transpose(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(&attn, hooks)
    }

    /// Attention for one query position per row (a decode step), as two batched matmuls with the
    /// query heads grouped by the KV head they share. On CPU this is 2-4x faster than
    /// `scaled_dot_product_attention` with GQA and a mask, and it never materialises repeated keys.
    /// Returns `[b, 1, heads * head_dim]`.
    fn decode_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        scale: f64,
    ) -> Tensor {
        let b = q.size()[0];
        let group = self.num_heads / self.num_kv_heads;
        let keys = k.size()[2];
        let kind = v.kind();
        // libtorch's batched bf16/f16 matmuls of these small shapes are several times slower on the
        // CPU than f32 ones: multiply in f32 and round each product to the model's dtype, as a
        // 16-bit matmul (f32 accumulation) rounds its output.
        let wide = kind != Kind::Float && q.device() == tch::Device::Cpu;
        let matmul = |a: &Tensor, b: &Tensor| {
            if wide {
                a.to_kind(Kind::Float)
                    .matmul(&b.to_kind(Kind::Float))
                    .to_kind(kind)
            } else {
                a.matmul(b)
            }
        };
        // q: [b, heads, 1, d] -> [b, kv_heads, group, d]; query head h uses KV head h / group.
        let q = q.reshape([b, self.num_kv_heads, group, self.head_dim]);
        let scores = matmul(&q, &k.transpose(2, 3)) * scale + bias.reshape([b, 1, 1, keys]);
        let probs = scores.softmax(-1, Kind::Float).to_kind(kind);
        matmul(&probs, v).reshape([b, 1, self.num_heads * self.head_dim])
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, hooks: &dyn ForwardHooks) -> Tensor {
        let gated = self.gate_proj.forward(x, hooks).silu() * self.up_proj.forward(x, hooks);
        self.down_proj.forward(&gated, hooks)
    }
}

#[derive(Debug)]
struct DecoderLayer {
    index: usize,
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn forward(
        &self,
        h: Tensor,
        act: &Activations,
        cache: Option<&mut KvCache>,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        // The layer-input hook sees the residual stream before the input norm (ALP's injection point).
        let h = hooks.layer_input(self.index, act.precision.round_activations(h));
        let attn = self.self_attn.forward(
            &self.input_layernorm.forward(&h),
            act,
            cache.map(|c| (c, self.index)),
            hooks,
        );
        let h = act.precision.round_activations(h + attn);
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h), hooks);
        h + mlp
    }
}

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
        mut tensors: HashMap<String, Tensor>,
        device: Device,
        precision: Precision,
    ) -> CausalLM {
        let vs = VarStore::new(device);
        let root = vs.root();
        // Add every parameter to the var store under its HF name, in spec order.
        let mut params = HashMap::new();
        for spec in parameter_specs(&config) {
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
        let take = |name: &str| -> Tensor {
            params
                .get(name)
                .unwrap_or_else(|| panic!("parameter {name} is in the spec"))
                .shallow_clone()
        };
        let take_opt = |name: &str| params.get(name).map(Tensor::shallow_clone);
        let eps = config.rms_norm_eps;
        let linear = |layer: usize, kind: LinearKind| {
            let site = LinearSite {
                layer: Some(layer),
                kind,
            };
            let prefix = format!("model.layers.{layer}.{}", kind.hf_name());
            Linear {
                site,
                weight: take(&format!("{prefix}.weight")),
                bias: take_opt(&format!("{prefix}.bias")),
                precision,
            }
        };
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let norm = |name: &str| {
                    take_opt(&format!("model.layers.{l}.self_attn.{name}.weight"))
                        .map(|weight| RmsNorm { weight, eps })
                };
                DecoderLayer {
                    index: l,
                    input_layernorm: RmsNorm {
                        weight: take(&format!("model.layers.{l}.input_layernorm.weight")),
                        eps,
                    },
                    self_attn: Attention {
                        q_proj: linear(l, LinearKind::Query),
                        k_proj: linear(l, LinearKind::Key),
                        v_proj: linear(l, LinearKind::Value),
                        o_proj: linear(l, LinearKind::Output),
                        q_norm: norm("q_norm"),
                        k_norm: norm("k_norm"),
                        num_heads: config.num_attention_heads,
                        num_kv_heads: config.num_key_value_heads,
                        head_dim: config.head_dim,
                    },
                    post_attention_layernorm: RmsNorm {
                        weight: take(&format!("model.layers.{l}.post_attention_layernorm.weight")),
                        eps,
                    },
                    mlp: Mlp {
                        gate_proj: linear(l, LinearKind::Gate),
                        up_proj: linear(l, LinearKind::Up),
                        down_proj: linear(l, LinearKind::Down),
                    },
                }
            })
            .collect();
        let embed_tokens = take("model.embed_tokens.weight");
        // Tied models reuse the embedding matrix as the LM head and have no `lm_head.weight`.
        let lm_head_weight = if config.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            take("lm_head.weight")
        };
        let lm_head = Linear {
            site: LinearSite {
                layer: None,
                kind: LinearKind::LmHead,
            },
            weight: lm_head_weight,
            bias: None,
            precision,
        };
        let norm = RmsNorm {
            weight: take("model.norm.weight"),
            eps,
        };
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

    /// Copies every parameter from `other` (same config), converting dtype and device: this is how the
    /// learner publishes new weights to an in-process inference copy.
    pub fn copy_weights_from(&self, other: &CausalLM) {
        let theirs = other.vs.variables();
        tch::no_grad(|| {
            for (name, mut mine) in self.vs.variables() {
                let src = theirs
                    .get(&name)
                    .unwrap_or_else(|| panic!("copy_weights_from: {name} missing in the source"));
                self.copy_into(&mut mine, src);
            }
        });
    }

    /// Copies published weights, `(HF name, tensor)` of every parameter in any dtype (converted as
    /// they are copied): how a copy on another thread receives the learner's weights. Refused, with
    /// nothing half-copied unchecked, when a name is unknown, a shape differs or a tensor is missing.
    pub fn copy_named_weights(&self, tensors: &[(String, Tensor)]) -> Result<(), PolicyError> {
        let mut params: std::collections::HashMap<String, Tensor> =
            self.vs.variables().into_iter().collect();
        let bad = |problem: String| PolicyError::WeightsMismatch { problem };
        if tensors.len() != params.len() {
            return Err(bad(format!(
                "published weights have {} tensors, the model {}",
                tensors.len(),
                params.len()
            )));
        }
        for (name, t) in tensors {
            let p = params
                .get(name)
                .ok_or_else(|| bad(format!("published weight {name} is not in the model")))?;
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
        let kind = self.kind();
        let rope = (rope32.0.to_kind(kind), rope32.1.to_kind(kind));
        let act = Activations {
            rope,
            rope32,
            bias: bias.shallow_clone(),
            bias32: std::cell::OnceCell::new(),
            precision: self.precision,
        };
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
