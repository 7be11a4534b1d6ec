//! Prepare phase: everything computed once per step before the first optimizer step, at the
//! pre-update weights: packed micro-batches, `lp_old`, the reference log-probs, the TIS/MIS
//! correction weights, the `mismatch/*` statistics, and the global aggregation denominators.
//!
//! Which forwards run, and why:
//! - `lp_old` (plain model, no grad, pre-update weights) runs when the correction needs it (TIS, MIS,
//!   none), and also whenever the training forward cannot double as the unperturbed pre-update forward
//!   the mismatch metrics need: with ALP (the training forward is perturbed) and with more than one
//!   optimizer step per batch (later mini-batches see updated weights). For bypass with one optimizer
//!   step the detached training log-probs *are* that forward, so no extra forward is spent on metrics.
//! - the reference forward (no grad) runs only with `kl_coef > 0`.
//!
//! verl's rejection sampling (`correction.rejection`) also needs `lp_old`: its verdict is taken once
//! here, at the pre-update weights (verl's decoupled mode), and removes the rejected tokens from the
//! micro-batch's trained mask, so they leave the loss and the global denominators alike. The mismatch
//! statistics and the TIS/MIS/IcePop weights are computed before, on every trained token.
use alp_policy::{ForwardHooks, NoHooks};
use tch::Tensor;

use crate::batch::{Entropy, PackedBatch};
use crate::correction::{correction_weights, CorrectionWeights};
use crate::error::Result;
use crate::loss::AggregationScale;
use crate::metrics::{to_vec, MismatchStats};
use crate::rejection::{rejection_keep, RejectionStats};
use crate::settings::LearnerSettings;
use crate::step::plan::{BatchLayout, StepPlan};
use crate::step::sync::GradientSync;
use crate::trainable::TrainablePolicy;

/// A micro-batch with everything computed once per step.
pub(crate) struct Micro {
    pub packed: PackedBatch,
    pub lp_old: Option<Tensor>,
    pub ref_lp: Option<Tensor>,
    pub correction: Option<CorrectionWeights>,
    /// What rejection sampling dropped from this micro-batch (`None` without it).
    pub rejection: Option<RejectionStats>,
}

/// Which forward the step's `mismatch/*` statistics come from, and whether `lp_old` runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MismatchSource {
    /// `lp_old` is computed (the correction needs it, or the mismatch metrics are due and the training
    /// forward cannot stand in for it); the statistics then come from it.
    pub need_old: bool,
    /// The detached training log-probs are the unperturbed pre-update ones (no ALP, one optimizer step).
    pub from_training: bool,
}

impl MismatchSource {
    pub fn new(s: &LearnerSettings, alp: bool, step: u64) -> Self {
        let optimizer_steps = s.mini_batches * s.epochs;
        let from_training = !alp && optimizer_steps == 1;
        let due = s.mismatch_every > 0 && step.is_multiple_of(s.mismatch_every);
        let need_old = s.correction.needs_old() || (!from_training && due);
        Self {
            need_old,
            from_training,
        }
    }

    /// The training forwards feed the statistics (no `lp_old` this step).
    pub fn training_forward(self) -> bool {
        self.from_training && !self.need_old
    }

    /// No forward of this step gives the statistics: they are reported as skipped (NaN).
    pub fn skipped(self) -> bool {
        !self.need_old && !self.from_training
    }
}

/// Packs every micro-batch and runs its no-grad forwards (`lp_old` with `policy_hooks`: a trained
/// adapter, or none; the reference with none); returns them with the mismatch statistics of `lp_old`
/// (empty when `lp_old` does not run).
pub(crate) fn prepare_micro_batches(
    s: &LearnerSettings,
    policy: &dyn TrainablePolicy,
    policy_hooks: &dyn ForwardHooks,
    reference: Option<&dyn TrainablePolicy>,
    plan: &StepPlan,
    layout: &BatchLayout,
    source: MismatchSource,
) -> Result<(Vec<Micro>, MismatchStats)> {
    let device = policy.device();
    let (samples, advantages) = (plan.samples(), plan.advantages());
    let mut mismatch = MismatchStats::default();
    let mut micros = Vec::with_capacity(layout.micro_batches.len());
    let rules = s.correction.rejection_rules()?;
    for r in &layout.micro_batches {
        let mut packed = PackedBatch::pack(&samples[r.clone()], &advantages[r.clone()], device)?
            .at_temperature(s.score_temperature)
            .with_head_chunk_bytes(s.head_chunk_bytes);
        let fwd = |m: &dyn TrainablePolicy, hooks: &dyn ForwardHooks| {
            tch::no_grad(|| packed.log_probs(m, hooks, Entropy::Skip).0)
        };
        let lp_old = source.need_old.then(|| fwd(policy, policy_hooks));
        if let Some(lp) = &lp_old {
            mismatch.add(
                &to_vec(lp),
                &to_vec(&packed.mu),
                &to_vec(&packed.mask),
                packed.num_rows(),
            );
        }
        let ref_lp = match (reference, s.loss.kl_coef > 0.0) {
            (Some(r), true) => Some(fwd(r, &NoHooks)),
            _ => None,
        };
        let correction =
            correction_weights(&s.correction, lp_old.as_ref(), &packed.mu, &packed.mask);
        let rejection = match (&lp_old, rules.is_empty()) {
            (Some(old), false) => Some(reject(&mut packed, &rules, old)),
            _ => None,
        };
        micros.push(Micro {
            packed,
            lp_old,
            ref_lp,
            correction,
            rejection,
        });
    }
    Ok((micros, mismatch))
}

/// The rejection counts of the step, summed over its micro-batches (`None` without rejection).
pub(crate) fn rejection_totals(micros: &[Micro]) -> Option<RejectionStats> {
    micros
        .iter()
        .filter_map(|m| m.rejection)
        .reduce(|mut a, b| {
            a.add(&b);
            a
        })
}

/// Applies the rejection rules' verdict on `lp_old` to the trained mask and its per-row counts.
fn reject(
    packed: &mut PackedBatch,
    rules: &[crate::rejection::RejectionRule],
    lp_old: &Tensor,
) -> RejectionStats {
    let keep = rejection_keep(rules, lp_old, &packed.mu, &packed.mask);
    let stats = RejectionStats::of(&packed.mask, &keep);
    packed.mask = &packed.mask * keep;
    let rows = packed.mask.sum_dim_intlist(1, false, tch::Kind::Float);
    packed.row_tokens = Vec::<f32>::try_from(&rows)
        .expect("row counts")
        .into_iter()
        .map(|n| n as usize)
        .collect();
    stats
}

/// What every process of the learner must agree on before its training forwards, per mini-batch:
/// the loss denominators and where this process's forwards stand among all processes' forwards.
#[derive(Debug, Clone)]
pub(crate) struct GlobalLayout {
    /// The aggregation denominators of each mini-batch, summed over all processes.
    pub scales: Vec<AggregationScale>,
    /// Per mini-batch, the global index (within one epoch) of this process's first training forward:
    /// the forwards of earlier mini-batches on every process, then those of this mini-batch on
    /// lower-ranked processes. When each process holds the `rank`-th part of every mini-batch (cut
    /// into micro-batches the way one process would), these are exactly one process's forward
    /// indices, so ALP draws one process's noise; in any case no two processes share an index.
    pub first_forward: Vec<u64>,
    /// Training forwards of one epoch over all processes.
    pub forwards_per_epoch: u64,
}

/// The [`GlobalLayout`] of this step, through one sum over all processes (`sync`): per mini-batch
/// the trained tokens and the sequences with at least one trained token, and a `world_size` x
/// mini-batches table of micro-batch counts in which this process fills its own row.
pub(crate) fn global_layout(
    micros: &[Micro],
    layout: &BatchLayout,
    sync: &mut dyn GradientSync,
) -> Result<GlobalLayout> {
    let minis = layout.mini_batches.len();
    let (rank, world) = (sync.rank(), sync.world_size());
    let mut counts = vec![0.0; 2 * minis + world * minis];
    for (m, mini) in layout.mini_batches.iter().enumerate() {
        let micros = &micros[mini.clone()];
        let tokens = micros.iter().map(|m| m.packed.num_tokens()).sum::<usize>();
        let sequences = micros
            .iter()
            .flat_map(|m| &m.packed.row_tokens)
            .filter(|&&t| t > 0)
            .count();
        counts[2 * m] = tokens as f64;
        counts[2 * m + 1] = sequences as f64;
        counts[2 * minis + rank * minis + m] = mini.len() as f64;
    }
    sync.sum_counts(&mut counts)?;
    let scales = counts[..2 * minis]
        .chunks(2)
        .map(|c| AggregationScale {
            tokens: c[0],
            sequences: c[1],
        })
        .collect();
    // micro[q][m]: micro-batches of process q in mini-batch m.
    let micro = |q: usize, m: usize| counts[2 * minis + q * minis + m] as u64;
    let mut first_forward = Vec::with_capacity(minis);
    let mut before = 0u64;
    for m in 0..minis {
        first_forward.push(before + (0..rank).map(|q| micro(q, m)).sum::<u64>());
        before += (0..world).map(|q| micro(q, m)).sum::<u64>();
    }
    Ok(GlobalLayout {
        scales,
        first_forward,
        forwards_per_epoch: before,
    })
}
