//! Forward hooks: the seam that keeps algorithms model-agnostic (design section 2).
//!
//! The decoder calls [`ForwardHooks::layer_input`] with the hidden state entering each decoder layer,
//! before that layer's input norm (ALP adds its noise here, so the noise also rides the residual), and
//! routes every projection through [`ForwardHooks::linear`] (EGGROLL adds its per-member low-rank term
//! here). [`ForwardHooks::embedding`] does the token lookup and [`ForwardHooks::logits`] sees the final
//! logits (the logits-only ALP ablation). The default methods give the plain model, which must match
//! HF transformers.
use std::ops::Deref;

use tch::Tensor;

use crate::onednn_head::OnednnLmHead;

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

/// A projection's weight as [`ForwardHooks::linear`] receives it: the parameter (what it dereferences
/// to) and, for the LM head in a generation call that made one, a copy for oneDNN
/// ([`OnednnLmHead`]) that [`linear`] multiplies by instead of the parameter.
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    tensor: &'a Tensor,
    onednn: Option<&'a OnednnLmHead>,
}

impl<'a> Weight<'a> {
    /// A plain parameter.
    pub fn new(tensor: &'a Tensor) -> Self {
        Weight {
            tensor,
            onednn: None,
        }
    }

    /// `tensor` with its oneDNN copy (made from `tensor`'s current values).
    pub fn with_onednn(tensor: &'a Tensor, onednn: Option<&'a OnednnLmHead>) -> Self {
        Weight { tensor, onednn }
    }
}

impl Deref for Weight<'_> {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        self.tensor
    }
}

/// Rows of `x` up to which [`linear`] multiplies weight-first on CPU.
const FEW_ROWS: i64 = 64;

/// `x W^T + b`. On CPU in f32 with few rows (a decode step), MKL runs `W x^T` 25-50% faster than
/// `x W^T` with a transposed weight (measured for every projection shape of a 512-wide model, batch
/// 16; bf16 goes through oneDNN and gains nothing), so that is what we compute there; the result is
/// the same product up to float reassociation.
///
/// Inside the rollout engine's generation (see [`crate::few_rows_gemm::enable`]), where no gradient is
/// wanted, f32 products of up to [`crate::few_rows_gemm::MAX_ROWS`] rows on an x86 CPU go through
/// the few-rows kernel, which streams the weight once instead of repacking it.
///
/// A weight with a oneDNN copy is multiplied by that copy (no gradient flows through it: it exists
/// only in generation calls). An f32 `x` with a lower-precision weight (a residual stream ALP widened
/// to f32) multiplies by the weight upcast to f32, so the activations keep their precision (and the
/// gradient flows to the weight).
pub fn linear(x: &Tensor, w: &Weight, b: Option<&Tensor>) -> Tensor {
    let with_bias = |y: Tensor| match b {
        Some(b) => y + b,
        None => y,
    };
    if crate::few_rows_gemm::enabled() && !wants_gradient(x, w.tensor) {
        if let Some(y) = crate::few_rows_gemm::linear(x, w.tensor) {
            return with_bias(y);
        }
    }
    if let Some(onednn) = w.onednn {
        if x.kind() == tch::Kind::Float && x.device() == tch::Device::Cpu {
            return with_bias(onednn.forward(x));
        }
    }
    let w = w.tensor;
    if x.kind() != w.kind() {
        let kind = x.kind();
        return linear(
            x,
            &Weight::new(&w.to_kind(kind)),
            b.map(|b| b.to_kind(kind)).as_ref(),
        );
    }
    let size = x.size();
    let in_features = *size.last().expect("x has a feature dimension");
    let rows = x.numel() as i64 / in_features.max(1);
    if x.device() != tch::Device::Cpu
        || x.kind() != tch::Kind::Float
        || rows > FEW_ROWS
        || size.len() < 2
    {
        return x.linear(w, b);
    }
    let y = w.mm(&x.reshape([rows, in_features]).tr()).tr();
    let y = match b {
        Some(b) => y + b,
        None => y.contiguous(),
    };
    let mut out_size = size;
    *out_size.last_mut().expect("non-empty") = w.size()[0];
    y.reshape(out_size.as_slice())
}

/// Whether autograd would record `x W^T`: gradient mode is on and either operand requires a gradient.
fn wants_gradient(x: &Tensor, w: &Tensor) -> bool {
    (x.requires_grad() || w.requires_grad()) && grad_enabled()
}

/// libtorch's gradient mode (set to itself again: libtorch has no getter that tch exposes).
fn grad_enabled() -> bool {
    // SAFETY: sets and restores a thread-local flag.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(1);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
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
