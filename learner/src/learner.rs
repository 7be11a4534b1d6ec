//! The policy-gradient learner: owns the policy, its optimizer, the ALP scales and the gradient-sync
//! seam, and runs one learner step as the phases of [`crate::step`]: plan (advantages, mini- and
//! micro-batches), prepare (the no-grad forwards `lp_old` and reference, correction weights, mismatch
//! statistics, global loss denominators), then per mini-batch the training forwards with gradient
//! accumulation over micro-batches, the gradient sync, the clip and one optimizer step; then metrics.
//!
//! The training forward's hooks are a [`Stack`](alp_policy::Stack) holding ALP's perturbation
//! ([`AlpHooks`](crate::alp::AlpHooks)) when ALP is on, and nothing (the plain model) otherwise; forward
//! number `k` of step `s` draws noise keyed by (seed, s, k, layer), so every micro-batch and epoch
//! gets fresh noise that a recompute would reproduce.
//!
//! [`PgLearner::with_adapter`] trains a LoRA adapter instead of the policy's weights (see
//! [`crate::adapter`]): the adapter joins every forward of the trained policy and the optimizer holds
//! only its factors.
use std::path::Path;
use std::time::Instant;

use alp_policy::{ForwardHooks, LoraAdapter, Stack};
use tch::Tensor;

use crate::adapter::{self, ADAPTER_DIR};
use crate::alp::AlpPerturbation;
use crate::batch::{Entropy, Group, PackedBatch, Sample};
use crate::error::{LearnerError, Result};
use crate::loss::{AggregationScale, LossConfig};
use crate::memory::PeakRss;
use crate::metrics::Metrics;
pub use crate::optimizer::MODEL_GROUP;
use crate::optimizer::{AdamW, ParamGroup};
use crate::settings::{AlpTarget, CorrectionKind, LearnerSettings, SettingsError};
use crate::step::gather::{gather_step_sums, SampleSums};
use crate::step::micro::{forward_backward, training_hooks, MicroStep, StepTotals};
use crate::step::prepare::{global_layout, prepare_micro_batches, Micro, MismatchSource};
use crate::step::report::StepReport;
use crate::step::split::SplitOptions;
use crate::step::update::clip_and_step;
use crate::step::{GradientSync, LocalSync, StepPlan};
use crate::trainable::TrainablePolicy;

/// Name of the ALP `log_sigma` optimizer group (no weight decay).
pub const ALP_GROUP: &str = "alp";

/// The policy-gradient learner: owns the policy being trained, its optimizer, the ALP scales and the
/// [`GradientSync`] its gradients and loss denominators are summed through.
pub struct PgLearner<P: TrainablePolicy> {
    settings: LearnerSettings,
    loss_cfg: LossConfig,
    policy: P,
    reference: Option<Box<dyn TrainablePolicy>>,
    alp: Option<AlpPerturbation>,
    /// The LoRA adapter trained instead of the policy's weights (which are then frozen), if any.
    adapter: Option<LoraAdapter>,
    optimizer: AdamW,
    /// Every parameter the optimizer updates, in its order (shallow clones): what `sync` reduces.
    synced_params: Vec<Tensor>,
    sync: Box<dyn GradientSync>,
    step: u64,
}

impl<P: TrainablePolicy> PgLearner<P> {
    /// Validates the settings against the model and builds the optimizer (model group with weight
    /// decay; ALP group with `perturb_lr` and none). Create it after loading the policy's weights:
    /// non-f32 parameters get their f32 master copy here. The learner is one process ([`LocalSync`]);
    /// [`PgLearner::with_gradient_sync`] makes it one of several.
    pub fn new(
        settings: LearnerSettings,
        policy: P,
        reference: Option<Box<dyn TrainablePolicy>>,
    ) -> Result<Self> {
        Self::build(settings, policy, reference, None)
    }

    /// A learner that trains `adapter` (a LoRA adapter made for `policy`: [`LoraAdapter::init`] or
    /// [`LoraAdapter::load`]) instead of the policy's weights. The policy's parameters are frozen
    /// (`requires_grad` false) and never change; the optimizer's model group holds only the adapter's
    /// A and B (under their PEFT names), plus ALP's `log_sigma` when ALP is on; the adapter acts as
    /// a hook on every forward of the trained policy (training, `lp_old`, mismatch,
    /// [`PgLearner::log_probs`]); [`PgLearner::save_state`] saves it. The policy must apply
    /// [`ForwardHooks::linear_delta`] to its projections, as [`alp_policy::CausalLM`] does.
    pub fn with_adapter(
        settings: LearnerSettings,
        policy: P,
        reference: Option<Box<dyn TrainablePolicy>>,
        adapter: LoraAdapter,
    ) -> Result<Self> {
        adapter::freeze(&policy);
        Self::build(settings, policy, reference, Some(adapter))
    }

    fn build(
        settings: LearnerSettings,
        policy: P,
        reference: Option<Box<dyn TrainablePolicy>>,
        adapter: Option<LoraAdapter>,
    ) -> Result<Self> {
        settings.validate()?;
        if settings.loss.kl_coef > 0.0 && reference.is_none() {
            return Err(SettingsError::new(
                "loss.kl_coef",
                "is > 0 but the learner has no reference policy",
            )
            .into());
        }
        if settings.gradient_checkpointing && policy.as_causal_lm().is_none() {
            return Err(SettingsError::new(
                "gradient_checkpointing",
                "needs a policy that runs a layer at a time (alp_policy::CausalLM)",
            )
            .into());
        }
        let alp = match settings.correction.kind {
            CorrectionKind::Alp => Some(AlpPerturbation::new(
                &settings.alp,
                policy.num_layers(),
                settings.seed,
                policy.device(),
            )?),
            _ => None,
        };
        let mut groups = vec![match &adapter {
            Some(a) => adapter::param_group(a, &settings.optimizer),
            None => ParamGroup::model(policy.trainable_parameters(), &settings.optimizer),
        }];
        if let Some(a) = &alp {
            groups.push(ParamGroup {
                name: ALP_GROUP.into(),
                params: vec![("log_sigma".into(), a.log_sigma().shallow_clone())],
                lr: settings.alp.perturb_lr,
                weight_decay: 0.0,
            });
        }
        let synced_params = groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, p)| p.shallow_clone()))
            .collect();
        let optimizer = AdamW::from_settings(groups, &settings.optimizer);
        Ok(Self {
            loss_cfg: LossConfig::from_settings(&settings),
            settings,
            policy,
            reference,
            alp,
            adapter,
            optimizer,
            synced_params,
            sync: Box::new(LocalSync),
            step: 0,
        })
    }

    /// The learner as one of several processes that each train on a shard of every batch: gradients
    /// and loss denominators are summed through `sync`.
    pub fn with_gradient_sync(mut self, sync: Box<dyn GradientSync>) -> Self {
        self.sync = sync;
        self
    }

    pub fn settings(&self) -> &LearnerSettings {
        &self.settings
    }

    pub fn policy(&self) -> &P {
        &self.policy
    }

    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    pub fn into_policy(self) -> P {
        self.policy
    }

    pub fn alp(&self) -> Option<&AlpPerturbation> {
        self.alp.as_ref()
    }

    /// The LoRA adapter being trained ([`PgLearner::with_adapter`]), if any.
    pub fn adapter(&self) -> Option<&LoraAdapter> {
        self.adapter.as_ref()
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Learner steps (batches) completed; keys the ALP noise of the next step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Per-token log-probs `[b, t]` of the samples' completions under the policy with `hooks`, no grad
    /// (with the trained adapter too, when there is one).
    pub fn log_probs(&self, samples: &[&Sample], hooks: &dyn ForwardHooks) -> Result<Tensor> {
        let packed = PackedBatch::pack(samples, &vec![0.0; samples.len()], self.policy.device())?
            .at_temperature(self.settings.score_temperature)
            .with_head_chunk_bytes(self.settings.head_chunk_bytes);
        let with_adapter;
        let hooks = match &self.adapter {
            Some(a) => {
                with_adapter = Stack(vec![a as &dyn ForwardHooks, hooks]);
                &with_adapter as &dyn ForwardHooks
            }
            None => hooks,
        };
        Ok(tch::no_grad(|| {
            packed.log_probs(&self.policy, hooks, Entropy::Skip).0
        }))
    }

    /// The plan of a step on `groups` (advantages within each group, mini- and micro-batches); the
    /// train loop logs its advantages and hands it to [`PgLearner::train_planned`].
    pub fn plan<'a>(&self, groups: &'a [Group]) -> Result<StepPlan<'a>> {
        StepPlan::new(groups, &self.settings)
    }

    /// One learner step on a batch of groups; returns the step's metrics.
    pub fn train_step(&mut self, groups: &[Group]) -> Result<Metrics> {
        let started = Instant::now();
        let plan = self.plan(groups)?;
        self.run_step(&plan, started)
    }

    /// One learner step on a plan made by [`PgLearner::plan`]; returns the step's metrics.
    pub fn train_planned(&mut self, plan: &StepPlan) -> Result<Metrics> {
        self.run_step(plan, Instant::now())
    }

    /// Prepare, then per epoch and mini-batch: forward and backward of its micro-batches, gradient
    /// sync, clip and optimizer step; then the metrics.
    fn run_step(&mut self, plan: &StepPlan, started: Instant) -> Result<Metrics> {
        let peak = PeakRss::start();
        crate::memory::trace("step start");
        let layout = plan.layout()?;
        let source = MismatchSource::new(&self.settings, self.alp.is_some(), self.step);
        let (micros, mismatch) = prepare_micro_batches(
            &self.settings,
            &self.policy,
            adapter::scoring_hooks(self.adapter.as_ref()),
            self.reference.as_deref(),
            plan,
            layout,
            source,
        )?;
        crate::memory::trace("prepare (lp_old, reference)");
        let global = global_layout(&micros, layout, self.sync.as_mut())?;
        let adapter_before = self.adapter.as_ref().map(adapter::snapshot);
        let mut totals = StepTotals {
            mismatch,
            rejection: crate::step::prepare::rejection_totals(&micros),
            ..Default::default()
        };
        for epoch in 0..self.settings.epochs as u64 {
            for (m, mini) in layout.mini_batches.iter().enumerate() {
                // This process's first forward among every process's forwards of the step.
                let first = epoch * global.forwards_per_epoch + global.first_forward[m];
                let micros = &micros[mini.clone()];
                self.train_mini_batch(micros, global.scales[m], first, source, &mut totals)?;
            }
        }
        let mut samples = SampleSums {
            rewards: plan.samples().iter().map(|x| x.reward).collect(),
            lengths: plan
                .samples()
                .iter()
                .map(|x| x.completion_ids.len())
                .collect(),
        };
        gather_step_sums(&mut totals, &mut samples, self.sync.as_mut())?;
        let mut metrics = StepReport {
            totals: &totals,
            optimizer: &self.optimizer,
            alp: self.alp.as_ref(),
            samples: &samples,
            optimizer_steps: self.settings.mini_batches * self.settings.epochs,
            mismatch_skipped: source.skipped(),
            with_kl: self.reference.is_some() && self.settings.loss.kl_coef > 0.0,
            started,
            peak,
        }
        .metrics();
        if let (Some(a), Some(before)) = (&self.adapter, &adapter_before) {
            metrics.extend(
                adapter::metrics(a, before)
                    .into_iter()
                    .map(|(k, v)| (k.into(), v)),
            );
        }
        self.step += 1;
        Ok(metrics)
    }

    /// One optimizer step: forward and backward of each micro-batch (gradients accumulate), the
    /// gradient sync, then clip and step on the summed gradients. The micro-batches are training
    /// forwards `first_forward..` of the step (they key ALP's noise).
    fn train_mini_batch(
        &mut self,
        micros: &[Micro],
        scale: AggregationScale,
        first_forward: u64,
        source: MismatchSource,
        totals: &mut StepTotals,
    ) -> Result<()> {
        let ctx = MicroStep {
            policy: &self.policy,
            loss_cfg: &self.loss_cfg,
            kind: self.settings.correction.kind,
            mismatch_from_training: source.training_forward(),
            scale,
            split: SplitOptions {
                checkpointing: self.settings.gradient_checkpointing,
                chunk_head: self.alp.as_ref().map(|a| a.target()) != Some(AlpTarget::Logits),
            },
        };
        self.optimizer.zero_grad();
        for (j, micro) in micros.iter().enumerate() {
            let alp_hooks = self
                .alp
                .as_ref()
                .map(|a| a.hooks(self.step, first_forward + j as u64));
            let adapter = self.adapter.as_ref().map(|a| a as &dyn ForwardHooks);
            let hooks = training_hooks(alp_hooks.as_ref(), adapter);
            forward_backward(&ctx, micro, &hooks, totals);
        }
        self.sync.sum_gradients(&self.synced_params)?;
        let (norm, stepped) = clip_and_step(&mut self.optimizer, self.settings.max_grad_norm);
        crate::memory::trace("clip and optimizer step");
        totals.norm_sum += norm;
        totals.skipped += usize::from(!stepped);
        Ok(())
    }

    /// Saves the optimizer (`optimizer.safetensors`) and the learner's own state (`learner.safetensors`:
    /// step counter and ALP `log_sigma`) into `dir`, and a trained adapter in PEFT's format into
    /// `dir/adapter/`. The policy's weights are the caller's checkpoint (with an adapter they never
    /// change).
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| LearnerError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        if let Some(a) = &self.adapter {
            adapter::save(a, &dir.join(ADAPTER_DIR))?;
        }
        self.optimizer.save(&dir.join("optimizer.safetensors"))?;
        let mut own = vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        if let Some(a) = &self.alp {
            own.push((
                "alp.log_sigma".into(),
                a.log_sigma()
                    .detach()
                    .to_device(tch::Device::Cpu)
                    .contiguous(),
            ));
        }
        Tensor::write_safetensors(&own, dir.join("learner.safetensors"))?;
        Ok(())
    }

    /// Restores what [`PgLearner::save_state`] wrote (the adapter's factors too, into this learner's
    /// adapter); the policy's weights must be restored separately.
    pub fn load_state(&mut self, dir: &Path) -> Result<()> {
        let adapter_dir = dir.join(ADAPTER_DIR);
        match (&self.adapter, adapter_dir.is_dir()) {
            (Some(a), true) => adapter::load(a, &adapter_dir)?,
            (None, false) => {}
            (Some(_), false) => {
                return Err(LearnerError::State(format!(
                    "{} holds no adapter, but this learner trains one",
                    dir.display()
                )))
            }
            (None, true) => {
                return Err(LearnerError::State(format!(
                    "{} holds a trained adapter, but this learner trains the full weights \
                     (build it with PgLearner::with_adapter)",
                    dir.display()
                )))
            }
        }
        self.optimizer.load(&dir.join("optimizer.safetensors"))?;
        let own: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("learner.safetensors"))?
                .into_iter()
                .collect();
        let step = own
            .get("step")
            .ok_or_else(|| LearnerError::State("learner.safetensors has no step".into()))?;
        self.step = step.int64_value(&[0]) as u64;
        match (&self.alp, own.get("alp.log_sigma")) {
            (Some(a), Some(saved)) => {
                if saved.size() != a.log_sigma().size() {
                    return Err(LearnerError::State(format!(
                        "saved log_sigma has shape {:?}, this learner {:?}",
                        saved.size(),
                        a.log_sigma().size()
                    )));
                }
                tch::no_grad(|| a.log_sigma().shallow_clone().copy_(saved));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(LearnerError::State(
                    "saved state has no ALP log_sigma".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(LearnerError::State(
                    "saved state has ALP log_sigma but ALP is off".into(),
                ))
            }
        }
        Ok(())
    }
}
