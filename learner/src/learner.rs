//! One learner step: advantages, the no-grad forwards (`lp_old`, reference), then per mini-batch the
//! training forwards with gradient accumulation over micro-batches and one optimizer step.
//!
//! Which forwards run, and why:
//! - `lp_old` (plain model, no grad, pre-update weights) runs when the correction needs it (TIS, MIS,
//!   none), and also whenever the training forward cannot double as the unperturbed pre-update forward
//!   the mismatch metrics need: with ALP (the training forward is perturbed) and with more than one
//!   optimizer step per batch (later mini-batches see updated weights). For bypass with one optimizer
//!   step the detached training log-probs *are* that forward, so no extra forward is spent on metrics.
//! - the reference forward (no grad) runs only with `kl_coef > 0`.
//! - the training forward uses [`AlpHooks`] with ALP and the plain model otherwise; forward number `k`
//!   of step `s` draws noise keyed by (seed, s, k, layer), so every micro-batch and epoch gets fresh
//!   noise that a recompute would reproduce.
//!
//! Mini-batches are contiguous slices of the batch in the order given (no shuffling), split into
//! micro-batches of `micro_batch_size` samples; aggregation denominators count the whole mini-batch.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use alp_policy::{ForwardHooks, NoHooks};
use tch::{Kind, Tensor};

use crate::advantage::group_advantages;
use crate::alp::AlpPerturbation;
use crate::batch::{Entropy, Group, PackedBatch, Sample};
use crate::correction::{correction_weights, CorrectionWeights};
use crate::error::{LearnerError, Result};
use crate::loss::{
    masked_diff, policy_loss, sequence_log_ratio, AggregationScale, LossConfig, LossInputs,
    LOG_RATIO_CLAMP,
};
use crate::metric_names as names;
use crate::metrics::{batch_metrics, to_vec, Metrics, MismatchStats, RatioEval, RatioStats};
pub use crate::optimizer::MODEL_GROUP;
use crate::optimizer::{AdamW, ParamGroup};
use crate::settings::{CorrectionKind, LearnerSettings, RatioLevel, SettingsError};
use crate::trainable::TrainablePolicy;

/// Name of the ALP `log_sigma` optimizer group (no weight decay).
pub const ALP_GROUP: &str = "alp";

/// A micro-batch with everything computed once per step.
struct Micro {
    packed: PackedBatch,
    lp_old: Option<Tensor>,
    ref_lp: Option<Tensor>,
    correction: Option<CorrectionWeights>,
}

/// The learner: owns the policy being trained, its optimizer and the ALP scales.
pub struct Learner<P: TrainablePolicy> {
    settings: LearnerSettings,
    loss_cfg: LossConfig,
    policy: P,
    reference: Option<Box<dyn TrainablePolicy>>,
    alp: Option<AlpPerturbation>,
    optimizer: AdamW,
    step: u64,
}

impl<P: TrainablePolicy> Learner<P> {
    /// Validates the settings against the model and builds the optimizer (model group with weight
    /// decay; ALP group with `perturb_lr` and none). Create it after loading the policy's weights:
    /// non-f32 parameters get their f32 master copy here.
    pub fn new(
        settings: LearnerSettings,
        policy: P,
        reference: Option<Box<dyn TrainablePolicy>>,
    ) -> Result<Self> {
        settings.validate()?;
        if settings.loss.kl_coef > 0.0 && reference.is_none() {
            return Err(SettingsError::new(
                "loss.kl_coef",
                "is > 0 but the learner has no reference policy",
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
        let mut groups = vec![ParamGroup::model(
            policy.trainable_parameters(),
            &settings.optimizer,
        )];
        if let Some(a) = &alp {
            groups.push(ParamGroup {
                name: ALP_GROUP.into(),
                params: vec![("log_sigma".into(), a.log_sigma().shallow_clone())],
                lr: settings.alp.perturb_lr,
                weight_decay: 0.0,
            });
        }
        let optimizer = AdamW::from_settings(groups, &settings.optimizer);
        Ok(Self {
            loss_cfg: LossConfig::from_settings(&settings),
            settings,
            policy,
            reference,
            alp,
            optimizer,
            step: 0,
        })
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

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Learner steps (batches) completed; keys the ALP noise of the next step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Per-token log-probs `[b, t]` of the samples' completions under the policy with `hooks`, no grad.
    pub fn log_probs(&self, samples: &[&Sample], hooks: &dyn ForwardHooks) -> Result<Tensor> {
        let packed = PackedBatch::pack(samples, &vec![0.0; samples.len()], self.policy.device())?
            .at_temperature(self.settings.score_temperature);
        Ok(tch::no_grad(|| {
            packed.log_probs(&self.policy, hooks, Entropy::Skip).0
        }))
    }

    /// One learner step on a batch of groups; returns the step's metrics.
    pub fn train_step(&mut self, groups: &[Group]) -> Result<Metrics> {
        let started = Instant::now();
        let s = &self.settings;
        let mut samples: Vec<&Sample> = Vec::new();
        let mut advantages = Vec::new();
        for g in groups {
            if g.samples.is_empty() {
                return Err(LearnerError::Batch("a group has no samples".into()));
            }
            let rewards: Vec<f64> = g.samples.iter().map(|x| x.reward).collect();
            advantages.extend(group_advantages(&rewards, s.advantage));
            samples.extend(g.samples.iter());
        }
        let n = samples.len();
        if n < s.mini_batches {
            return Err(LearnerError::Batch(format!(
                "{n} samples cannot fill {} mini-batches",
                s.mini_batches
            )));
        }
        // Mini-batches as ranges of micro-batch indices; micro-batches as sample ranges.
        let mut micro_ranges = Vec::new();
        let mut mini_ranges = Vec::new();
        for m in 0..s.mini_batches {
            let (lo, hi) = (m * n / s.mini_batches, (m + 1) * n / s.mini_batches);
            let first = micro_ranges.len();
            let mut i = lo;
            while i < hi {
                let j = (i + s.micro_batch_size).min(hi);
                micro_ranges.push(i..j);
                i = j;
            }
            mini_ranges.push(first..micro_ranges.len());
        }

        let kind = s.correction.kind;
        let optimizer_steps = s.mini_batches * s.epochs;
        // The detached training log-probs are the unperturbed pre-update ones only without ALP and with
        // a single optimizer step; otherwise the mismatch metrics need `lp_old`.
        let mismatch_from_training = self.alp.is_none() && optimizer_steps == 1;
        let mismatch_due = s.mismatch_every > 0 && self.step.is_multiple_of(s.mismatch_every);
        let need_old = kind.ratio_against_old() || (!mismatch_from_training && mismatch_due);
        let skip_mismatch = !need_old && !mismatch_from_training;
        let device = self.policy.device();
        let mut mismatch = MismatchStats::default();
        let mut micros = Vec::with_capacity(micro_ranges.len());
        for r in &micro_ranges {
            let packed = PackedBatch::pack(&samples[r.clone()], &advantages[r.clone()], device)?
                .at_temperature(s.score_temperature);
            let fwd = |m: &dyn TrainablePolicy| {
                tch::no_grad(|| packed.log_probs(m, &NoHooks, Entropy::Skip).0)
            };
            let lp_old = need_old.then(|| fwd(&self.policy));
            if let Some(lp) = &lp_old {
                mismatch.add(
                    &to_vec(lp),
                    &to_vec(&packed.mu),
                    &to_vec(&packed.mask),
                    packed.num_rows(),
                );
            }
            let ref_lp = match (&self.reference, s.loss.kl_coef > 0.0) {
                (Some(r), true) => Some(fwd(r.as_ref())),
                _ => None,
            };
            let correction =
                correction_weights(&s.correction, lp_old.as_ref(), &packed.mu, &packed.mask);
            micros.push(Micro {
                packed,
                lp_old,
                ref_lp,
                correction,
            });
        }

        let mut ratios = RatioStats::default();
        let (mut ent_sum, mut ent_tokens) = (0.0, 0.0);
        let (mut pg_sum, mut total_sum, mut kl_sum) = (0.0, 0.0, 0.0);
        let (mut norm_sum, mut skipped) = (0.0, 0usize);
        let mut forward = 0u64;
        let mut processed_tokens = 0usize;
        for _epoch in 0..s.epochs {
            for mini in &mini_ranges {
                let scale = AggregationScale {
                    tokens: micros[mini.clone()]
                        .iter()
                        .map(|m| m.packed.num_tokens())
                        .sum::<usize>() as f64,
                    sequences: micros[mini.clone()]
                        .iter()
                        .flat_map(|m| &m.packed.row_tokens)
                        .filter(|&&t| t > 0)
                        .count() as f64,
                };
                self.optimizer.zero_grad();
                for micro in &micros[mini.clone()] {
                    let p = &micro.packed;
                    let alp_hooks = self.alp.as_ref().map(|a| a.hooks(self.step, forward));
                    let hooks: &dyn ForwardHooks = match &alp_hooks {
                        Some(h) => h,
                        None => &NoHooks,
                    };
                    let entropy_mode = if self.loss_cfg.entropy_coef == 0.0 {
                        Entropy::Detached
                    } else {
                        Entropy::WithGrad
                    };
                    let (lp, entropy) = p.log_probs(&self.policy, hooks, entropy_mode);
                    let entropy = entropy.expect("entropy was requested");
                    if mismatch_from_training && !need_old {
                        mismatch.add(&to_vec(&lp), &to_vec(&p.mu), &to_vec(&p.mask), p.num_rows());
                    }
                    let base = if kind.ratio_against_old() {
                        micro
                            .lp_old
                            .as_ref()
                            .expect("lp_old is computed for this correction")
                    } else {
                        &p.mu
                    };
                    let out = policy_loss(
                        &LossInputs {
                            lp: &lp,
                            base,
                            mask: &p.mask,
                            advantages: &p.advantages,
                            weights: micro.correction.as_ref().map(|c| &c.weights),
                            entropy: Some(&entropy),
                            ref_lp: micro.ref_lp.as_ref(),
                        },
                        &self.loss_cfg,
                        scale,
                    );
                    out.total.backward();
                    forward += 1;
                    processed_tokens += p.attention_mask.sum(Kind::Int64).int64_value(&[]) as usize;

                    pg_sum += out.pg.double_value(&[]);
                    total_sum += out.total.double_value(&[]);
                    kl_sum += out.kl.as_ref().map_or(0.0, |k| k.double_value(&[]));
                    ent_sum += (&entropy * &p.mask).sum(Kind::Float).double_value(&[]);
                    ent_tokens += p.num_tokens() as f64;
                    let mask = to_vec(&p.mask);
                    let weights = micro.correction.as_ref().map(|c| to_vec(&c.weights));
                    let keep = micro
                        .correction
                        .as_ref()
                        .and_then(|c| c.keep.as_ref())
                        .map(to_vec);
                    // `ratio/*` and `ratio_seq/*` are against `mu` whatever the correction takes its
                    // loss ratio against, so their tails compare across corrections (design section 4).
                    let (vs_mu, seq_vs_mu) = if kind.ratio_against_old()
                        || self.loss_cfg.level == RatioLevel::Sequence
                    {
                        let d = masked_diff(&lp.detach(), &p.mu, &p.mask);
                        let seq = sequence_log_ratio(&d, &p.mask, self.loss_cfg.geometric)
                            .clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
                        (d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), seq)
                    } else {
                        (
                            out.log_ratio.shallow_clone(),
                            out.seq_log_ratio.shallow_clone(),
                        )
                    };
                    ratios.add(&RatioEval {
                        log_ratio_vs_mu: &to_vec(&vs_mu),
                        seq_log_ratio_vs_mu: &to_vec(&seq_vs_mu),
                        loss_log_ratio: &to_vec(&out.log_ratio),
                        mask: &mask,
                        correction: weights.as_deref(),
                        keep: keep.as_deref(),
                        clip_high: &to_vec(&out.clip_high),
                        clip_low: &to_vec(&out.clip_low),
                        clip_dual: &to_vec(&out.clip_dual),
                    });
                }
                let norm = self.optimizer.clip_grad_norm(s.max_grad_norm);
                norm_sum += norm;
                if norm.is_finite() {
                    self.optimizer.step();
                } else {
                    skipped += 1;
                }
            }
        }

        let mut m: Metrics = BTreeMap::new();
        let steps = optimizer_steps as f64;
        ratios.write(&mut m);
        if skip_mismatch {
            MismatchStats::write_skipped(&mut m);
        } else {
            mismatch.write(&mut m);
        }
        m.insert(names::LOSS_PG.into(), pg_sum / steps);
        m.insert(names::LOSS_TOTAL.into(), total_sum / steps);
        if self.reference.is_some() && s.loss.kl_coef > 0.0 {
            m.insert(names::LOSS_KL.into(), kl_sum / steps);
        }
        m.insert(
            names::POLICY_ENTROPY.into(),
            if ent_tokens > 0.0 {
                ent_sum / ent_tokens
            } else {
                f64::NAN
            },
        );
        m.insert(names::GRAD_NORM.into(), norm_sum / steps);
        m.insert(names::OPTIM_SKIPPED_STEPS.into(), skipped as f64);
        let last = self.optimizer.steps_taken().saturating_sub(1);
        m.insert(
            names::OPTIM_LR.into(),
            self.optimizer.lr_at(MODEL_GROUP, last).unwrap_or(f64::NAN),
        );
        if let Some(a) = &self.alp {
            a.metrics(&mut m);
        }
        let rewards: Vec<f64> = samples.iter().map(|x| x.reward).collect();
        let lengths: Vec<usize> = samples.iter().map(|x| x.completion_ids.len()).collect();
        batch_metrics(&rewards, &lengths, &mut m);
        let secs = started.elapsed().as_secs_f64();
        m.insert(names::TIME_LEARNER_STEP_S.into(), secs);
        m.insert(
            names::THROUGHPUT_LEARNER_TOKENS_PER_S.into(),
            processed_tokens as f64 / secs.max(1e-9),
        );
        self.step += 1;
        Ok(m)
    }

    /// Saves the optimizer (`optimizer.safetensors`) and the learner's own state (`learner.safetensors`:
    /// step counter and ALP `log_sigma`) into `dir`. The policy's weights are the caller's checkpoint.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| LearnerError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
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

    /// Restores what [`Learner::save_state`] wrote; the policy's weights must be restored separately.
    pub fn load_state(&mut self, dir: &Path) -> Result<()> {
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
