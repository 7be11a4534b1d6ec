//! The decoder's blocks, one struct each, written to match HF transformers op for op: RMSNorm in f32,
//! hooked projections, GQA attention with half-split RoPE, the SwiGLU MLP, and the decoder layer that
//! joins them on the residual stream. [`crate::model::CausalLM`] builds them from its parameters
//! ([`DecoderLayer::from_params`]) and runs them in order.
use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::hooks::{ForwardHooks, LinearKind, LinearSite, Weight};
use crate::kv_cache::KvCache;
use crate::names::{self, ParamPath};
use crate::onednn_head::OnednnLmHead;
use crate::precision::Precision;
use crate::rope::Rotary;

/// RMSNorm as HF computes it: normalise in f32, cast back to the input's dtype, then scale. An f32
/// input with bf16 weights (a residual stream a hook widened, see [`Activations`]) stays f32.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
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
pub(crate) struct Activations {
    rope: (Tensor, Tensor),
    rope32: (Tensor, Tensor),
    bias: Tensor,
    /// `bias` in f32, made once on first use (only a widened forward of a bf16 model needs it).
    bias32: std::cell::OnceCell<Tensor>,
    /// A bf16-rounded f32 model rounds its residual stream where a bf16 model's would be bf16.
    precision: Precision,
}

impl Activations {
    /// The tables of one forward: `rope32` computed in f32 (the model-dtype ones are that, cast, as
    /// HF does) and the additive attention `bias` in the model's dtype `kind`.
    pub(crate) fn new(
        rope32: (Tensor, Tensor),
        kind: Kind,
        bias: &Tensor,
        precision: Precision,
    ) -> Self {
        let rope = (rope32.0.to_kind(kind), rope32.1.to_kind(kind));
        Activations {
            rope,
            rope32,
            bias: bias.shallow_clone(),
            bias32: std::cell::OnceCell::new(),
            precision,
        }
    }

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
pub(crate) struct Linear {
    site: LinearSite,
    pub(crate) weight: Tensor,
    bias: Option<Tensor>,
    /// A bf16-rounded f32 model rounds each projection's output, as a bf16 matmul's is.
    precision: Precision,
}

impl Linear {
    fn forward(&self, x: &Tensor, hooks: &dyn ForwardHooks) -> Tensor {
        self.forward_with(x, hooks, None)
    }

    /// [`Self::forward`], multiplying by `onednn` (a copy of this weight) where given.
    pub(crate) fn forward_with(
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
        // One path for prefill and decode steps (s == 1) alike: libtorch's fused attention. A decode
        // step used to multiply two batched matmuls in f32 instead, faster at batch 16 on the 8x512
        // benchmark model; on SmolLM2 at batch 64 that took 20-87 ms per layer in bf16 where fused
        // attention takes 4-11 (docs/benchmarks.md, issue 27).
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
pub(crate) struct DecoderLayer {
    index: usize,
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub(crate) fn forward(
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

/// The model's parameters by HF name, as its var store holds them: what the blocks are built from.
pub(crate) struct NamedParams(pub(crate) HashMap<String, Tensor>);

impl NamedParams {
    /// The parameter `name` (sharing storage with the var store's).
    pub(crate) fn take(&self, name: &str) -> Tensor {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("parameter {name} is in the spec"))
            .shallow_clone()
    }

    /// The parameter `name` if the config has it (biases, Qwen3's q/k norms).
    pub(crate) fn take_opt(&self, name: &str) -> Option<Tensor> {
        self.0.get(name).map(Tensor::shallow_clone)
    }
}

impl Linear {
    /// The projection at `site` with weight `weight` and no bias (the LM head).
    pub(crate) fn new(site: LinearSite, weight: Tensor, precision: Precision) -> Self {
        Linear {
            site,
            weight,
            bias: None,
            precision,
        }
    }

    /// Decoder layer `layer`'s projection `kind`, with its bias where the config has one.
    fn from_params(
        params: &NamedParams,
        layer: usize,
        kind: LinearKind,
        precision: Precision,
    ) -> Self {
        let site = LinearSite::in_layer(layer, kind);
        let path = site.path();
        Linear {
            site,
            weight: params.take(&path.weight()),
            bias: params.take_opt(&path.bias()),
            precision,
        }
    }
}

impl DecoderLayer {
    /// Decoder layer `l` of a model with this config, around its parameters.
    pub(crate) fn from_params(
        params: &NamedParams,
        config: &ModelConfig,
        l: usize,
        precision: Precision,
    ) -> Self {
        let eps = config.rms_norm_eps;
        let linear = |kind| Linear::from_params(params, l, kind, precision);
        let norm = |path: ParamPath| {
            params
                .take_opt(&path.weight())
                .map(|weight| RmsNorm { weight, eps })
        };
        DecoderLayer {
            index: l,
            input_layernorm: RmsNorm {
                weight: params.take(&names::input_layernorm(l).weight()),
                eps,
            },
            self_attn: Attention {
                q_proj: linear(LinearKind::Query),
                k_proj: linear(LinearKind::Key),
                v_proj: linear(LinearKind::Value),
                o_proj: linear(LinearKind::Output),
                q_norm: norm(names::q_norm(l)),
                k_norm: norm(names::k_norm(l)),
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
            },
            post_attention_layernorm: RmsNorm {
                weight: params.take(&names::post_attention_layernorm(l).weight()),
                eps,
            },
            mlp: Mlp {
                gate_proj: linear(LinearKind::Gate),
                up_proj: linear(LinearKind::Up),
                down_proj: linear(LinearKind::Down),
            },
        }
    }
}
