//! Acceptance 5: a learner-only run on a tiny model with a fixed synthetic reward (1 when token 3
//! appears in the completion) raises the mean reward within a few dozen steps, for every correction.
//! Samples come from the current policy by multinomial sampling; for TIS/MIS the "inference engine"
//! adds noise to the logits so that `mu` really differs from the learner's log-probs.
// Brute-force references index by position on purpose; settings are built field by field for readability.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::{AlpTarget, CorrectionKind, LearnerSettings, PgLearner, RatioLevel};
use common::{Rng, ToyLm};

const VOCAB: i64 = 8;
const TARGET: i64 = 3;

fn run(
    kind: CorrectionKind,
    level: RatioLevel,
    logit_noise: f64,
    tweak: impl FnOnce(&mut LearnerSettings),
) {
    common::init();
    let mut s = LearnerSettings::default();
    s.correction.kind = kind;
    s.correction.level = level;
    s.correction.mis_low = 0.25;
    s.correction.mis_high = 4.0;
    s.loss.dual_clip = Some(3.0);
    s.micro_batch_size = 16;
    s.mini_batches = 2;
    s.optimizer.lr = 1e-3;
    s.optimizer.weight_decay = 0.0;
    s.alp.sigma0 = 0.05;
    s.alp.perturb_lr = 1e-2;
    tweak(&mut s);
    let model = ToyLm::new(VOCAB, 16, 2, 5);
    let mut learner = PgLearner::new(s, model, None).unwrap();
    let mut rng = Rng::new(99);
    let mut rewards = Vec::new();
    let mut last = None;
    for _ in 0..30 {
        let prompts = common::random_prompts(8, 2, VOCAB, &mut rng);
        let groups = common::sample_groups(
            learner.policy(),
            &prompts,
            8,
            4,
            logit_noise,
            &mut rng,
            |c| f64::from(c.contains(&TARGET)),
        );
        let m = learner.train_step(&groups).unwrap();
        assert!(
            m["loss/total"].is_finite() && m["grad/norm"].is_finite(),
            "{kind:?}: non-finite step {m:?}"
        );
        rewards.push(m["reward/mean"]);
        last = Some(m);
    }
    let first = rewards[..5].iter().sum::<f64>() / 5.0;
    let end = rewards[25..].iter().sum::<f64>() / 5.0;
    assert!(
        end > first + 0.2 && end > 0.8,
        "{kind:?}/{level:?}: reward {first:.3} -> {end:.3} ({rewards:?})"
    );
    let m = last.unwrap();
    if logit_noise > 0.0 {
        assert!(
            m["mismatch/k3"] > 0.0,
            "the noisy sampler should show a mismatch"
        );
    }
    if kind == CorrectionKind::Mis {
        assert!(
            m["mask/frac"] > 0.0 && m["mask/frac"] < 0.5,
            "MIS should mask some but not most tokens: mask/frac {}",
            m["mask/frac"]
        );
    }
}

#[test]
fn bypass_learns() {
    run(CorrectionKind::Bypass, RatioLevel::Token, 0.0, |_| {});
}

#[test]
fn bypass_sequence_learns() {
    run(CorrectionKind::Bypass, RatioLevel::Sequence, 0.0, |_| {});
}

#[test]
fn tis_learns() {
    run(CorrectionKind::Tis, RatioLevel::Token, 0.3, |_| {});
}

#[test]
fn mis_learns() {
    // Bounds narrow enough that the 0.3 logit noise of the sampler really gets tokens masked.
    run(CorrectionKind::Mis, RatioLevel::Token, 0.3, |s| {
        s.correction.mis_low = 0.8;
        s.correction.mis_high = 1.25;
    });
}

#[test]
fn alp_learns() {
    run(CorrectionKind::Alp, RatioLevel::Token, 0.3, |_| {});
}

#[test]
fn seq_alp_learns() {
    run(CorrectionKind::Alp, RatioLevel::Sequence, 0.3, |_| {});
}

#[test]
fn logits_only_alp_learns() {
    run(CorrectionKind::Alp, RatioLevel::Token, 0.0, |s| {
        s.alp.target = AlpTarget::Logits
    });
}
