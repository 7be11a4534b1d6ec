//! Forward hooks: the seam that keeps algorithms model-agnostic (design section 2).
//!
//! The decoder calls [`ForwardHooks::layer_input`] with the hidden state entering each decoder layer,
//! before that layer's input norm (ALP adds its noise here, so the noise also rides the residual), and
//! routes every projection through [`ForwardHooks::linear`] (EGGROLL adds its per-member low-rank term
//! here). [`ForwardHooks::embedding`] does the token lookup and [`ForwardHooks::logits`] sees the final
//! logits (the logits-only ALP ablation). The default methods give the plain model, which must match
//! HF transformers.
use tch::Tensor;

pub use crate::linear::{linear, Weight};

/// Which projection a [`ForwardHooks::linear`] call computes.
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
    /// The HF parameter-name suffix of this projection, e.g. `self_attn.q_proj`.
    pub fn hf_name(self) -> &'static str {
        match self {
            LinearKind::Query => "self_attn.q_proj",
            LinearKind::Key => "self_attn.k_proj",
            LinearKind::Value => "self_attn.v_proj",
            LinearKind::Output => "self_attn.o_proj",
            LinearKind::Gate => "mlp.gate_proj",
            LinearKind::Up => "mlp.up_proj",
            LinearKind::Down => "mlp.down_proj",
            LinearKind::LmHead => "lm_head",
        }
    }
}

/// Where a projection sits: its decoder layer (`None` for the LM head) and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearSite {
    pub layer: Option<usize>,
    pub kind: LinearKind,
}

impl LinearSite {
    /// The HF name of the weight this site multiplies, e.g. `model.layers.3.mlp.up_proj.weight`.
    pub fn weight_name(&self) -> String {
        match self.layer {
            Some(l) => format!("model.layers.{l}.{}.weight", self.kind.hf_name()),
            None => format!("{}.weight", self.kind.hf_name()),
        }
    }
}

/// Callbacks the decoder makes during a forward pass. Every method has the plain-model default.
pub trait ForwardHooks {
    /// The token embedding lookup: rows `ids` (`[batch, seq]` int64) of `weight` (`[vocab, hidden]`,
    /// `model.embed_tokens.weight`). A hook site so that an evolution-strategies learner can perturb the
    /// embedding like any other matrix.
    fn embedding(&self, ids: &Tensor, weight: &Tensor) -> Tensor {
        Tensor::embedding(weight, ids, -1, false, false)
    }

    /// The hidden state `h` (`[batch, seq, hidden]`) entering decoder layer `layer`, before its input norm.
    fn layer_input(&self, layer: usize, h: Tensor) -> Tensor {
        let _ = layer;
        h
    }

    /// `x W^T + b` for the projection at `site`; `w` is the parameter, `[out, in]` as stored in HF
    /// checkpoints (see [`Weight`]).
    fn linear(&self, site: LinearSite, x: &Tensor, w: &Weight, b: Option<&Tensor>) -> Tensor {
        let _ = site;
        linear(x, w, b)
    }

    /// The final logits (`[batch, seq, vocab]`), after the LM head.
    fn logits(&self, logits: Tensor) -> Tensor {
        logits
    }
}

/// Hooks that depend on which request each batch row serves, for a batch whose rows change between
/// forwards (continuous batching): the evolution-strategies learner gives every request its own
/// population member, i.e. its own low-rank weight perturbation.
pub trait RowHooks {
    /// The hooks of one forward over batch rows serving `requests` (row `k` serves `requests[k]`, an
    /// index into the generation call's requests).
    fn for_rows<'a>(&'a self, requests: &[usize]) -> Box<dyn ForwardHooks + 'a>;
}

/// Weights per population member, for generation calls in which every request names the member
/// that serves it (an evolution-strategies population: member `i` is the policy with its own
/// low-rank perturbation). The engine asks for the row hooks of each call.
pub trait MemberHooks: Send + Sync {
    /// Row hooks for a call whose request `j` is served by member `members[j]`.
    fn for_requests<'a>(&'a self, members: &[usize]) -> Box<dyn RowHooks + 'a>;
}

/// The plain model: every hook is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl ForwardHooks for NoHooks {}

impl RowHooks for NoHooks {
    fn for_rows<'a>(&'a self, _requests: &[usize]) -> Box<dyn ForwardHooks + 'a> {
        Box::new(NoHooks)
    }
}
