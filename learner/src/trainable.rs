//! The seam between the learner and a model: what the learner needs from a policy, and its
//! implementation for the shared decoder [`alp_policy::CausalLM`].
use alp_policy::{CausalLM, ForwardHooks};
use tch::{Device, Tensor};

/// A causal language model the learner can train.
pub trait TrainablePolicy {
    /// `[b, s]` int64 ids and an optional `[b, s]` mask (1 valid, 0 padding) to `[b, s, vocab]` logits.
    /// The model calls `hooks.layer_input(l, h)` before each decoder layer's input norm and
    /// `hooks.logits` on the final logits.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hooks: &dyn ForwardHooks,
    ) -> Tensor;

    /// Logits `[n, vocab]` at the flat positions `rows` (`[n]` int64 indices into `b * s`) only. The
    /// default runs [`TrainablePolicy::forward`] and selects; a model that can apply its LM head to a
    /// selection of hidden states should override it, since the head and the vocabulary-wide softmax
    /// are the largest tensors of a training step and prompt positions need neither.
    fn selected_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        rows: &Tensor,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        let logits = self.forward(input_ids, attention_mask, hooks);
        let (b, s, v) = logits.size3().expect("logits are [batch, seq, vocab]");
        logits.reshape([b * s, v]).index_select(0, rows)
    }

    /// Number of decoder layers (the ALP layer range is checked against it).
    fn num_layers(&self) -> usize;

    /// Named parameters the optimizer updates, in a deterministic order. The tensors share storage with
    /// the model (shallow clones), so in-place updates change the model.
    fn trainable_parameters(&self) -> Vec<(String, Tensor)>;

    /// Where the parameters live; packed batches go there.
    fn device(&self) -> Device;

    /// The shared decoder behind this policy, if it is one: the learner then runs it a layer at a
    /// time where it saves memory (the LM head over row chunks, activation checkpointing). `None`
    /// (the default): every forward goes through [`TrainablePolicy::selected_logits`] whole.
    fn as_causal_lm(&self) -> Option<&CausalLM> {
        None
    }
}

impl TrainablePolicy for CausalLM {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        CausalLM::forward(self, input_ids, attention_mask, hooks)
    }

    fn selected_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        rows: &Tensor,
        hooks: &dyn ForwardHooks,
    ) -> Tensor {
        let h = self.hidden_states(input_ids, attention_mask, hooks);
        let (b, s, d) = h.size3().expect("hidden states are [batch, seq, hidden]");
        // The LM head (and `hooks.logits`) sees `[n, hidden]` rows: only completion positions.
        self.logits(&h.reshape([b * s, d]).index_select(0, rows), hooks)
    }

    fn num_layers(&self) -> usize {
        CausalLM::num_layers(self)
    }

    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_parameters()
    }

    fn device(&self) -> Device {
        CausalLM::device(self)
    }

    fn as_causal_lm(&self) -> Option<&CausalLM> {
        Some(self)
    }
}
