//! The memory estimate a policy-gradient run prints before it starts (weights, gradients, optimizer
//! state, activations per micro-batch, the LM head's logits chunk, inference copy, reference): what
//! `alp_learner::memory::estimate` computes for the config's model and batch shapes. The measured
//! peak of each step is the `memory/peak_rss_gb` metric.
use alp_learner::memory::{estimate, MemoryEstimate, MemoryPlan, Trained};
use alp_policy::ModelConfig;

use crate::config::{BackendKind, TrainConfig};

/// The estimate of one RL step of `config` on a model of `model`'s shape, training every weight or
/// an adapter of `adapter_params` parameters.
pub(super) fn run_estimate(
    config: &TrainConfig,
    model: &ModelConfig,
    adapter_params: Option<u64>,
) -> MemoryEstimate {
    let bytes = |d: alp_policy::Dtype| d.kind().elt_size_in_bytes() as u64;
    let plan = MemoryPlan {
        weight_bytes: bytes(config.model.train_dtype),
        trained: adapter_params.map_or(Trained::Full, Trained::Adapter),
        micro_batch_rows: config.learner.micro_batch_size as u64,
        seq_len: config.rollout.max_total_tokens as u64,
        completion_len: config
            .rollout
            .max_new_tokens
            .min(config.rollout.max_total_tokens) as u64,
        checkpointing: config.learner.gradient_checkpointing,
        head_chunk_bytes: alp_learner::batch::HEAD_CHUNK_BYTES as u64,
        // vLLM servers hold their copy in their own processes.
        inference_bytes: match config.rollout.backend {
            BackendKind::Local => bytes(config.model.inference_dtype),
            BackendKind::Vllm => 0,
        },
        reference: config.learner.loss.kl_coef > 0.0,
    };
    estimate(model, &plan)
}
