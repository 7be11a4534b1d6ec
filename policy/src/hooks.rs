//! Forward hooks: the seam that keeps algorithms model-agnostic (design section 2), built so that
//! several of them act on one forward.
//!
//! The decoder computes every weight product once, itself, and asks the hooks only for what they
//! change:
//! - [`ForwardHooks::linear_delta`]: an additive term on a projection's `x W^T + b` (EGGROLL's
//!   per-member low-rank term, a LoRA adapter's `scale * x A^T B^T`); [`ForwardHooks::embedding_delta`]
//!   the same for the token lookup. The decoder adds it, cast to the product's dtype, to the one base
//!   product ([`linear`], which keeps its fast CPU paths: few-rows kernel, oneDNN LM head).
//! - [`ForwardHooks::layer_input`]: the hidden state entering each decoder layer, before its input norm
//!   (ALP adds its noise here, so the noise also rides the residual stream), and
//!   [`ForwardHooks::logits`]: the final logits (the logits-only ALP ablation). Both return the new
//!   value.
//!
//! The default methods give the plain model, which must match HF transformers. [`Stack`] composes
//! hooks: its `layer_input` and `logits` apply each part's in order (each sees the previous one's
//! output), and its deltas are the sum of the parts' deltas, in order, added to the base product
//! once. So ALP's noise and an adapter's low-rank terms act on one forward, each written as if alone.
//! Decoders call the hooks through [`ForwardHooks`] trait objects: `hooks.linear(site, x, w, b)` and
//! `hooks.embedding(ids, weight)` (inherent methods of `dyn ForwardHooks`) are the base product plus
//! the deltas.
use tch::Tensor;

pub use crate::linear::{linear, Weight};
pub use crate::names::{LinearKind, LinearSite};

/// Callbacks the decoder makes during a forward pass. Every method has the plain-model default; see
/// the module doc for how they compose.
pub trait ForwardHooks {
    /// A term added to the token embedding lookup: rows `ids` (`[batch, seq]` int64) of `weight`
    /// (`[vocab, hidden]`, `model.embed_tokens.weight`); `[batch, seq, hidden]`, or `None` for none. A
    /// hook site so that an evolution-strategies learner or an adapter can perturb the embedding like
    /// any other matrix.
    fn embedding_delta(&self, ids: &Tensor, weight: &Tensor) -> Option<Tensor> {
        let _ = (ids, weight);
        None
    }

    /// The hidden state `h` (`[batch, seq, hidden]`) entering decoder layer `layer`, before its input norm.
    fn layer_input(&self, layer: usize, h: Tensor) -> Tensor {
        let _ = layer;
        h
    }

    /// A term added to `x W^T + b` for the projection at `site`: the shape of that product (`x`'s
    /// leading dimensions, then `out`), any float dtype (cast to the product's before the addition),
    /// or `None` for none. `w` is the parameter, `[out, in]` as stored in HF checkpoints (see
    /// [`Weight`]).
    fn linear_delta(&self, site: LinearSite, x: &Tensor, w: &Weight) -> Option<Tensor> {
        let _ = (site, x, w);
        None
    }

    /// The final logits (`[batch, seq, vocab]`), after the LM head.
    fn logits(&self, logits: Tensor) -> Tensor {
        logits
    }
}

impl dyn ForwardHooks + '_ {
    /// The token embedding as the decoder computes it: the lookup, plus the hooks' delta.
    pub fn embedding(&self, ids: &Tensor, weight: &Tensor) -> Tensor {
        let e = Tensor::embedding(weight, ids, -1, false, false);
        match self.embedding_delta(ids, weight) {
            Some(delta) => add_delta(e, delta),
            None => e,
        }
    }

    /// The projection at `site` as the decoder computes it: `x W^T + b` ([`linear`]), plus the hooks'
    /// delta.
    pub fn linear(&self, site: LinearSite, x: &Tensor, w: &Weight, b: Option<&Tensor>) -> Tensor {
        let y = linear(x, w, b);
        match self.linear_delta(site, x, w) {
            Some(delta) => add_delta(y, delta),
            None => y,
        }
    }
}

/// `base + delta`, the delta cast to the base's dtype first (a no-op when they agree).
fn add_delta(base: Tensor, delta: Tensor) -> Tensor {
    debug_assert_eq!(
        base.size(),
        delta.size(),
        "a hook's delta has the product's shape"
    );
    let kind = base.kind();
    base + delta.to_kind(kind)
}

/// Several hooks acting on one forward, in order: `Stack(vec![&alp, &adapter])`. `layer_input` and
/// `logits` chain through the parts; the deltas are summed in order (`None` when no part has one).
#[derive(Clone, Default)]
pub struct Stack<'a>(pub Vec<&'a dyn ForwardHooks>);

impl Stack<'_> {
    fn sum(deltas: impl Iterator<Item = Tensor>) -> Option<Tensor> {
        deltas.reduce(|sum, delta| sum + delta)
    }
}

impl ForwardHooks for Stack<'_> {
    fn embedding_delta(&self, ids: &Tensor, weight: &Tensor) -> Option<Tensor> {
        Self::sum(self.0.iter().filter_map(|h| h.embedding_delta(ids, weight)))
    }

    fn layer_input(&self, layer: usize, h: Tensor) -> Tensor {
        self.0
            .iter()
            .fold(h, |h, hooks| hooks.layer_input(layer, h))
    }

    fn linear_delta(&self, site: LinearSite, x: &Tensor, w: &Weight) -> Option<Tensor> {
        Self::sum(self.0.iter().filter_map(|h| h.linear_delta(site, x, w)))
    }

    fn logits(&self, logits: Tensor) -> Tensor {
        self.0.iter().fold(logits, |l, hooks| hooks.logits(l))
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

    /// Member `member` as a LoRA adapter for servers that apply adapters themselves (vLLM): its A
    /// (`[r, in]`) and B (`[out, r]`) under PEFT's names, with the scale folded into B so that the
    /// adapter's `lora_alpha` is its rank. `None`: the members are not low-rank adapters.
    fn member_adapter(&self, _member: usize) -> Option<Vec<(String, Tensor)>> {
        None
    }
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
