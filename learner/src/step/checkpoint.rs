//! The decoder trunk of a training forward (embedding and decoder layers, up to the final norm), run
//! whole with autograd or with activation checkpointing per decoder layer.
//!
//! libtorch's C++ API has no `torch.utils.checkpoint` and tch exposes no custom autograd function, so
//! checkpointing is done by hand: the forward runs every layer without grad and keeps only each
//! layer's input hidden state; the top (final norm) runs with grad from the detached last hidden
//! state. The backward then goes down a layer at a time: recompute the layer with grad from its
//! detached input (a leaf that requires grad), backpropagate the surrogate `sum(y * dL/dy)` (tch's
//! `backward` takes no output gradient), and read the input's gradient for the layer below. The
//! parameter gradients accumulate as one backward would have accumulated them. The hooks are those
//! of the forward, so ALP's noise on a layer's input is regenerated bit for bit: it is a pure function
//! of (seed, step, forward index, layer), not of how many times a hook was called. After each layer
//! the free memory of glibc's heaps goes back to the system ([`release_free_memory`]), so that the
//! recomputed activations of one layer do not pile up as fragmented heap.
use alp_policy::{CausalLM, ForwardHooks, LayerContext};

use crate::memory::release_free_memory;
use tch::{Kind, Tensor};

/// A trunk forward, holding what its backward needs.
pub(crate) enum Trunk {
    /// The whole trunk's autograd graph; `hidden` are the final hidden states.
    Full { hidden: Tensor },
    /// Each layer's input (no grad), the detached last layer output `last` (a leaf with grad) and
    /// the final hidden states computed from it with grad.
    Checkpointed {
        ctx: LayerContext,
        inputs: Vec<Tensor>,
        last: Tensor,
        hidden: Tensor,
    },
}

impl Trunk {
    /// The final hidden states `[b, s, hidden]` of `input_ids` under `hooks`.
    pub(crate) fn forward(
        model: &CausalLM,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &dyn ForwardHooks,
        checkpointing: bool,
    ) -> Self {
        if !checkpointing {
            let hidden = model.hidden_states(input_ids, Some(attention_mask), hooks);
            return Trunk::Full { hidden };
        }
        let ctx = model.layer_context(input_ids, Some(attention_mask));
        let (inputs, last) = tch::no_grad(|| {
            let mut h = model.embed(input_ids, hooks);
            let mut inputs = Vec::with_capacity(model.num_layers());
            for l in 0..model.num_layers() {
                inputs.push(h.shallow_clone());
                h = model.layer(l, h, &ctx, hooks);
                release_free_memory();
            }
            (inputs, h)
        });
        let last = last.detach().set_requires_grad(true);
        let hidden = model.final_norm(last.shallow_clone());
        Trunk::Checkpointed {
            ctx,
            inputs,
            last,
            hidden,
        }
    }

    /// The final hidden states.
    pub(crate) fn hidden(&self) -> &Tensor {
        match self {
            Trunk::Full { hidden } | Trunk::Checkpointed { hidden, .. } => hidden,
        }
    }

    /// Backpropagates `grad` (`dL/d hidden`) through the trunk into the parameters' gradients.
    pub(crate) fn backward(
        self,
        model: &CausalLM,
        input_ids: &Tensor,
        hooks: &dyn ForwardHooks,
        grad: &Tensor,
    ) {
        match self {
            Trunk::Full { hidden } => surrogate_backward(&hidden, grad),
            Trunk::Checkpointed {
                ctx,
                mut inputs,
                last,
                hidden,
            } => {
                surrogate_backward(&hidden, grad);
                drop(hidden);
                let mut g = last.grad();
                drop(last);
                // The LM head's chunks are freed by now: give their pages back before the first
                // recomputed layer takes fresh ones.
                release_free_memory();
                while let Some(input) = inputs.pop() {
                    let l = inputs.len();
                    let x = input.detach().set_requires_grad(true);
                    drop(input);
                    let y = model.layer(l, x.shallow_clone(), &ctx, hooks);
                    surrogate_backward(&y, &g);
                    drop(y);
                    g = x.grad();
                    // glibc keeps the freed activations of the layer in heaps it fragments: without
                    // this a SmolLM2 step peaked at 5.0 GB instead of 3.1 (memory_step bench).
                    release_free_memory();
                }
                let embedded = model.embed(input_ids, hooks);
                surrogate_backward(&embedded, &g);
            }
        }
    }
}

/// Accumulates `d/dp sum(y * grad)` into every parameter `p` that `y` depends on, i.e. backpropagates
/// the output gradient `grad` from `y`; nothing when `y` has no graph or `grad` is undefined.
fn surrogate_backward(y: &Tensor, grad: &Tensor) {
    if y.requires_grad() && grad.defined() {
        (y * grad.to_kind(y.kind())).sum(Kind::Float).backward();
    }
}
