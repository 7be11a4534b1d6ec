//! Micro-batch phase: one training forward with grad, its loss, its backward (the gradient accumulates
//! over the micro-batches of a mini-batch), and its share of the step's metrics.
use alp_policy::{ForwardHooks, Stack};
use tch::{Kind, Tensor};

use crate::alp::AlpHooks;
use crate::batch::Entropy;
use crate::loss::{
    masked_diff, policy_loss, sequence_log_ratio, AggregationScale, LossConfig, LossInputs,
    LossOutput, LOG_RATIO_CLAMP,
};
use crate::metrics::{to_vec, MismatchStats, RatioEval, RatioStats};
use crate::settings::{CorrectionKind, RatioLevel};
use crate::step::prepare::Micro;
use crate::step::split::{split_forward_backward, SplitOptions};
use crate::trainable::TrainablePolicy;

/// What every micro-batch of one mini-batch shares.
pub(crate) struct MicroStep<'a> {
    pub policy: &'a dyn TrainablePolicy,
    pub loss_cfg: &'a LossConfig,
    pub kind: CorrectionKind,
    /// The training forward feeds the `mismatch/*` statistics (see `MismatchSource`).
    pub mismatch_from_training: bool,
    /// The mini-batch's global aggregation denominators.
    pub scale: AggregationScale,
    /// How a [`alp_policy::CausalLM`] policy runs the micro-batch (checkpointing, LM head chunks).
    pub split: SplitOptions,
}

/// The step's running sums, reported as metrics once the step is done.
#[derive(Default)]
pub(crate) struct StepTotals {
    pub ratios: RatioStats,
    pub mismatch: MismatchStats,
    /// verl's rejection sampling over the step's micro-batches (`None` without it).
    pub rejection: Option<crate::rejection::RejectionStats>,
    pub ent_sum: f64,
    pub ent_tokens: f64,
    pub pg_sum: f64,
    pub total_sum: f64,
    pub kl_sum: f64,
    pub norm_sum: f64,
    pub skipped: usize,
    /// Training forwards this process ran this step.
    pub forwards: u64,
    pub processed_tokens: usize,
}

/// The hooks of a training forward, composed with [`Stack`]: ALP's perturbation when it is on, then
/// the adapter the learner trains when there is one; an empty stack is the plain model.
pub(crate) fn training_hooks<'a>(
    alp: Option<&'a AlpHooks<'a>>,
    adapter: Option<&'a dyn ForwardHooks>,
) -> Stack<'a> {
    let alp = alp.map(|h| h as &dyn ForwardHooks);
    Stack(alp.into_iter().chain(adapter).collect())
}

/// Forward with `hooks`, loss, backward, and the micro-batch's metrics added to `totals`.
pub(crate) fn forward_backward(
    ctx: &MicroStep,
    micro: &Micro,
    hooks: &dyn ForwardHooks,
    totals: &mut StepTotals,
) {
    let p = &micro.packed;
    let entropy_mode = if ctx.loss_cfg.entropy_coef == 0.0 {
        Entropy::Detached
    } else {
        Entropy::WithGrad
    };
    let base = if ctx.kind.ratio_against_old() {
        micro
            .lp_old
            .as_ref()
            .expect("lp_old is computed for this correction")
    } else {
        &p.mu
    };
    let (lp, entropy, out) = match ctx.policy.as_causal_lm() {
        Some(model) => {
            let o = split_forward_backward(
                model,
                micro,
                base,
                hooks,
                ctx.loss_cfg,
                ctx.scale,
                entropy_mode,
                ctx.split,
            );
            (o.lp, o.entropy, o.loss)
        }
        None => whole_forward_backward(ctx, micro, base, hooks, entropy_mode),
    };
    if ctx.mismatch_from_training {
        totals
            .mismatch
            .add(&to_vec(&lp), &to_vec(&p.mu), &to_vec(&p.mask), p.num_rows());
    }
    totals.forwards += 1;
    totals.processed_tokens += p.attention_mask.sum(Kind::Int64).int64_value(&[]) as usize;
    record(ctx, micro, &lp, &entropy, &out, totals);
}

/// Forward, loss and backward of a policy that is not a [`alp_policy::CausalLM`]: the logits of the
/// whole micro-batch at once, through [`crate::trainable::TrainablePolicy::selected_logits`].
fn whole_forward_backward(
    ctx: &MicroStep,
    micro: &Micro,
    base: &Tensor,
    hooks: &dyn ForwardHooks,
    entropy_mode: Entropy,
) -> (Tensor, Tensor, LossOutput) {
    let p = &micro.packed;
    let (lp, entropy) = p.log_probs(ctx.policy, hooks, entropy_mode);
    let entropy = entropy.expect("entropy was requested");
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
        ctx.loss_cfg,
        ctx.scale,
    );
    out.total.backward();
    (lp, entropy, out)
}

/// The loss terms, entropy and ratio statistics of one micro-batch.
fn record(
    ctx: &MicroStep,
    micro: &Micro,
    lp: &Tensor,
    entropy: &Tensor,
    out: &LossOutput,
    totals: &mut StepTotals,
) {
    let p = &micro.packed;
    totals.pg_sum += out.pg.double_value(&[]);
    totals.total_sum += out.total.double_value(&[]);
    totals.kl_sum += out.kl.as_ref().map_or(0.0, |k| k.double_value(&[]));
    totals.ent_sum += (entropy * &p.mask).sum(Kind::Float).double_value(&[]);
    totals.ent_tokens += p.num_tokens() as f64;
    let mask = to_vec(&p.mask);
    let weights = micro.correction.as_ref().map(|c| to_vec(&c.weights));
    let keep = micro
        .correction
        .as_ref()
        .and_then(|c| c.keep.as_ref())
        .map(to_vec);
    // `ratio/*` and `ratio_seq/*` are against `mu` whatever the correction takes its loss ratio
    // against, so their tails compare across corrections (design section 4).
    let (vs_mu, seq_vs_mu) =
        if ctx.kind.ratio_against_old() || ctx.loss_cfg.level == RatioLevel::Sequence {
            let d = masked_diff(&lp.detach(), &p.mu, &p.mask);
            let seq = sequence_log_ratio(&d, &p.mask, ctx.loss_cfg.geometric)
                .clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
            (d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), seq)
        } else {
            (
                out.log_ratio.shallow_clone(),
                out.seq_log_ratio.shallow_clone(),
            )
        };
    totals.ratios.add(&RatioEval {
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
