//! The seam between the learner and a model: what the learner needs from a policy.
use alp_policy::ForwardHooks;
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

    /// Number of decoder layers (the ALP layer range is checked against it).
    fn num_layers(&self) -> usize;

    /// Named parameters the optimizer updates, in a deterministic order. The tensors share storage with
    /// the model (shallow clones), so in-place updates change the model.
    fn trainable_parameters(&self) -> Vec<(String, Tensor)>;

    /// Where the parameters live; packed batches go there.
    fn device(&self) -> Device;
}
