//! The SFT learner: the policy, its AdamW (the RL learner's model group and schedule), one step per
//! batch with the RL learner's gradient clipping.
use super::example::SftExample;
use alp_policy::LoraAdapter;

use super::loss::sft_loss_with;
use crate::adapter;
use crate::error::Result;
use crate::optimizer::{AdamW, AdamWConfig, ParamGroup, MODEL_GROUP};
use crate::settings::{LrSchedule, OptimizerSettings};
use crate::trainable::TrainablePolicy;

/// What shapes a supervised phase: AdamW (PyTorch's betas and eps) with linear warmup, then cosine
/// decay to `min_lr_ratio * lr` at `steps`, and a gradient-norm clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftSettings {
    /// Optimizer steps of the phase (where the cosine decay ends).
    pub steps: u64,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    /// Gradient-norm clip; 0 disables.
    pub max_grad_norm: f64,
}

impl SftSettings {
    /// The optimizer these settings describe, in the RL learner's terms.
    pub fn optimizer(&self) -> OptimizerSettings {
        let adam = AdamWConfig::default();
        OptimizerSettings {
            lr: self.lr,
            beta1: adam.beta1,
            beta2: adam.beta2,
            eps: adam.eps,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            schedule: LrSchedule::Cosine,
            total_steps: Some(self.steps),
            min_lr_ratio: self.min_lr_ratio,
        }
    }
}

/// What one SFT step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftStep {
    /// The batch's mean negative log-likelihood per trained token, before the update.
    pub loss: f64,
    /// Trained (assistant) tokens in the batch.
    pub tokens: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// False when the loss or the gradient was not finite: then the weights were not updated.
    pub applied: bool,
}

/// Trains a policy (or a LoRA adapter on it) on tokenised conversations.
pub struct SftLearner<P: TrainablePolicy> {
    policy: P,
    /// The LoRA adapter trained instead of the policy's weights (then frozen), if any.
    adapter: Option<LoraAdapter>,
    optimizer: AdamW,
    max_grad_norm: f64,
}

impl<P: TrainablePolicy> SftLearner<P> {
    /// Builds the optimizer over the policy's trainable parameters (create it after loading the
    /// weights: non-f32 parameters get their f32 master copy here).
    pub fn new(settings: &SftSettings, policy: P) -> Self {
        let opt = settings.optimizer();
        let optimizer = AdamW::from_settings(
            vec![ParamGroup::model(policy.trainable_parameters(), &opt)],
            &opt,
        );
        SftLearner {
            policy,
            adapter: None,
            optimizer,
            max_grad_norm: settings.max_grad_norm,
        }
    }

    /// A learner that trains `adapter` (made for `policy`) with the policy's weights frozen, as
    /// [`crate::PgLearner::with_adapter`] does: the optimizer holds only the adapter's A and B.
    pub fn with_adapter(settings: &SftSettings, policy: P, adapter: LoraAdapter) -> Self {
        adapter::freeze(&policy);
        let opt = settings.optimizer();
        let optimizer = AdamW::from_settings(vec![adapter::param_group(&adapter, &opt)], &opt);
        SftLearner {
            policy,
            adapter: Some(adapter),
            optimizer,
            max_grad_norm: settings.max_grad_norm,
        }
    }

    /// The adapter being trained ([`SftLearner::with_adapter`]), if any.
    pub fn adapter(&self) -> Option<&LoraAdapter> {
        self.adapter.as_ref()
    }

    pub fn policy(&self) -> &P {
        &self.policy
    }

    pub fn into_policy(self) -> P {
        self.policy
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// One optimizer step on `batch` (one forward: the batch is its own micro-batch). A non-finite
    /// loss or gradient leaves the weights as they were and says so in [`SftStep::applied`].
    pub fn train_step(&mut self, batch: &[SftExample]) -> Result<SftStep> {
        let lr = self
            .optimizer
            .lr_at(MODEL_GROUP, self.optimizer.steps_taken())
            .expect("the optimizer has the model group");
        self.optimizer.zero_grad();
        let hooks = adapter::scoring_hooks(self.adapter.as_ref());
        let (loss, tokens) = sft_loss_with(&self.policy, hooks, batch)?;
        loss.backward();
        let grad_norm = self.optimizer.clip_grad_norm(self.max_grad_norm);
        let loss = f64::try_from(&loss)?;
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            self.optimizer.step();
        }
        Ok(SftStep {
            loss,
            tokens,
            grad_norm,
            lr,
            applied,
        })
    }
}
