//! The training forward and backward of one micro-batch through a [`CausalLM`] a part at a time, so
//! that neither the f32 logits of the whole micro-batch nor (with checkpointing) every layer's
//! activations are alive at once:
//! 1. the trunk ([`Trunk`]) gives the final hidden states `h`, whole or checkpointed;
//! 2. `h` is detached into a leaf `h'`, and per row chunk ([`crate::batch::PackedBatch::head_chunks`]) the LM head,
//!    the log-softmax and the chunk's rows of the loss run and are backpropagated to `h'` (and the
//!    head's parameters) at once, so each chunk's logits die before the next chunk's exist;
//! 3. `dL/dh'` is backpropagated once through the trunk.
//!
//! The loss is a sum over rows with the mini-batch's global denominators ([`AggregationScale`]): the
//! per-token surrogate, the sequence-level ratio (whole rows are chunked), the entropy and KL terms
//! and every aggregation mode add up over row chunks, so the gradient is that of the whole
//! micro-batch's loss.
use alp_policy::{CausalLM, ForwardHooks};
use tch::{Kind, Tensor};

use crate::batch::{flatten_rows, Entropy};
use crate::loss::{policy_loss, AggregationScale, LossConfig, LossInputs, LossOutput};
use crate::memory::trace;
use crate::step::checkpoint::Trunk;
use crate::step::prepare::Micro;

/// How a micro-batch goes through the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitOptions {
    /// Activation checkpointing per decoder layer.
    pub checkpointing: bool,
    /// Run the LM head over row chunks; off when a hook on the logits depends on their shape (ALP's
    /// logits-only noise is indexed by element of the whole `[rows * t, vocab]` logits).
    pub chunk_head: bool,
}

/// What one micro-batch's forward gives the metrics (all detached).
pub(crate) struct SplitOutput {
    /// `[b, t]` log-probs of the training forward.
    pub lp: Tensor,
    /// `[b, t]` entropy.
    pub entropy: Tensor,
    /// The loss output of the whole micro-batch: scalars summed, per-token tensors concatenated.
    pub loss: LossOutput,
}

/// Forward, loss and backward of `micro` through `model`; `base` is what the ratio is taken against.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_forward_backward(
    model: &CausalLM,
    micro: &Micro,
    base: &Tensor,
    hooks: &dyn ForwardHooks,
    loss_cfg: &LossConfig,
    scale: AggregationScale,
    entropy: Entropy,
    opts: SplitOptions,
) -> SplitOutput {
    let p = &micro.packed;
    let trunk = Trunk::forward(
        model,
        &p.input_ids,
        &p.attention_mask,
        hooks,
        opts.checkpointing,
    );
    trace("trunk forward");
    let leaf = trunk.hidden().detach().set_requires_grad(true);
    let flat = flatten_rows(&leaf);
    let chunks = if opts.chunk_head {
        p.head_chunks(model.lm_head_weight().size()[0])
    } else {
        std::iter::once(0..p.num_rows()).collect()
    };
    let mut parts = Vec::with_capacity(chunks.len());
    for rows in chunks {
        let (lp, ent) = p.head_log_probs(model, &flat, rows.clone(), hooks, entropy);
        let ent = ent.expect("entropy was requested");
        let (lo, n) = (rows.start as i64, rows.len() as i64);
        let part = |t: &Tensor| t.narrow(0, lo, n);
        let weights = micro.correction.as_ref().map(|c| part(&c.weights));
        let ref_lp = micro.ref_lp.as_ref().map(part);
        let out = policy_loss(
            &LossInputs {
                lp: &lp,
                base: &part(base),
                mask: &part(&p.mask),
                advantages: &part(&p.advantages),
                weights: weights.as_ref(),
                entropy: Some(&ent),
                ref_lp: ref_lp.as_ref(),
            },
            loss_cfg,
            scale,
        );
        out.total.backward();
        parts.push((lp.detach(), ent.detach(), detach_output(out)));
    }
    drop(flat);
    trace("LM head chunks, forward and backward");
    let grad = leaf.grad();
    drop(leaf);
    trunk.backward(model, &p.input_ids, hooks, &grad);
    trace("trunk backward");
    join(parts)
}

fn detach_output(o: LossOutput) -> LossOutput {
    LossOutput {
        total: o.total.detach(),
        pg: o.pg.detach(),
        entropy: o.entropy.map(|e| e.detach()),
        kl: o.kl.map(|k| k.detach()),
        ..o
    }
}

/// The chunks' outputs as one micro-batch's: per-row tensors concatenated, scalars summed.
fn join(parts: Vec<(Tensor, Tensor, LossOutput)>) -> SplitOutput {
    let cat = |f: &dyn Fn(&(Tensor, Tensor, LossOutput)) -> &Tensor| {
        Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)
    };
    let sum = |f: &dyn Fn(&LossOutput) -> Option<&Tensor>| {
        parts
            .iter()
            .map(|x| f(&x.2).map(Tensor::shallow_clone))
            .collect::<Option<Vec<Tensor>>>()
            .map(|v| Tensor::stack(&v, 0).sum(Kind::Float))
    };
    let loss = LossOutput {
        total: sum(&|o| Some(&o.total)).expect("every chunk has a total"),
        pg: sum(&|o| Some(&o.pg)).expect("every chunk has a pg loss"),
        entropy: sum(&|o| o.entropy.as_ref()),
        kl: sum(&|o| o.kl.as_ref()),
        log_ratio: cat(&|x| &x.2.log_ratio),
        seq_log_ratio: cat(&|x| &x.2.seq_log_ratio),
        clip_high: cat(&|x| &x.2.clip_high),
        clip_low: cat(&|x| &x.2.clip_low),
        clip_dual: cat(&|x| &x.2.clip_dual),
    };
    SplitOutput {
        lp: cat(&|x| &x.0),
        entropy: cat(&|x| &x.1),
        loss,
    }
}
