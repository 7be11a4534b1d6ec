//! The phases of one policy-gradient learner step, each its own module: [`plan`] (advantages and the
//! mini-/micro-batch layout), [`prepare`] (the no-grad forwards at the pre-update weights and the
//! global loss denominators), [`micro`] (forward and backward of one micro-batch, through [`split`]
//! and [`checkpoint`] for a `CausalLM`: LM head over row chunks, activation checkpointing), [`sync`] (the seam
//! that sums gradients and counts over processes), [`gather`] (the step's metric sums of every process), [`update`] (clip and optimizer step) and [`report`]
//! (the metrics). [`crate::learner::PgLearner::train_step`] strings them together.
pub(crate) mod checkpoint;
pub(crate) mod gather;
pub(crate) mod micro;
pub mod plan;
pub(crate) mod prepare;
pub(crate) mod report;
pub(crate) mod split;
pub mod sync;
pub(crate) mod update;

pub use plan::{BatchLayout, StepPlan};
pub use sync::{GradientSync, LocalSync};
