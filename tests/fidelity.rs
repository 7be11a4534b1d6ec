//! The learner scores tokens under the distribution that sampled them, end to end through
//! `alp-rl train`: with an f32 inference copy (identical weights to the learner's at step 1) every
//! ratio is 1 and every `mismatch/*` is 0 within float error at temperature 0.7 and top-p 0.9, for a
//! correction that takes its ratio against `mu` (bypass) and one against `lp_old` (TIS); the
//! reference policy of a KL term is scored the same way (its KL is 0 before the first update and
//! moves after it); and `logprob_mode = "sampling"` with truncation, which no learner can reproduce,
//! is refused.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::run_outputs::metrics;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-tiny.toml");

fn train(out: &Path, sets: &[&str], extra: &[&str]) -> Output {
    let mut cmd = ALP_RL.train_command(CONFIG, out);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.args(extra).output().expect("run alp-rl")
}

/// Sampling settings under test: identical f32 weights on both sides, temperature below 1, top-p.
const SAMPLING: [&str; 4] = [
    "model.inference_dtype=f32",
    "rollout.temperature=0.7",
    "rollout.top_p=0.9",
    "rollout.max_new_tokens=16",
];

fn assert_unit_ratios(m: &BTreeMap<String, f64>, what: &str) {
    for key in ["ratio/min", "ratio/max", "ratio_seq/min", "ratio_seq/max"] {
        let v = m[key];
        assert!((v - 1.0).abs() < 1e-4, "{what}: {key} = {v}, expected 1");
    }
    let k3 = m["mismatch/k3"];
    assert!(k3.abs() < 1e-9, "{what}: mismatch/k3 = {k3:e}, expected 0");
    let gap = m["mismatch/logp_abs_diff_max"];
    assert!(gap < 1e-4, "{what}: mismatch/logp_abs_diff_max = {gap:e}");
    let k1 = m["mismatch/k1"];
    assert!(k1.abs() < 1e-5, "{what}: mismatch/k1 = {k1:e}");
}

#[test]
fn identical_weights_give_unit_ratios_at_temperature_and_top_p() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["bypass", "tis"] {
        let run = tmp.path().join(kind);
        let correction = format!("learner.correction.kind={kind}");
        let mut sets = SAMPLING.to_vec();
        sets.extend(["run.steps=1", correction.as_str()]);
        ok(train(&run, &sets, &[]));
        let m = &metrics(&run)[&1];
        assert_unit_ratios(m, kind);
        // The loss ratio (against lp_old under TIS) is 1 as well: lp_old is scored at T too.
        for key in ["ratio_loss/min", "ratio_loss/max"] {
            assert!((m[key] - 1.0).abs() < 1e-4, "{kind}: {key} = {}", m[key]);
        }
    }
}

#[test]
fn raw_log_probs_are_scored_at_temperature_one() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("raw");
    let mut sets = SAMPLING.to_vec();
    sets.extend([
        "run.steps=1",
        "learner.correction.kind=bypass",
        "rollout.logprob_mode=\"raw\"",
    ]);
    ok(train(&run, &sets, &[]));
    assert_unit_ratios(&metrics(&run)[&1], "raw");
}

#[test]
fn kl_reference_is_scored_at_the_rollout_temperature_and_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("kl");
    let mut sets = SAMPLING.to_vec();
    sets.extend([
        "run.steps=3",
        "learner.correction.kind=bypass",
        "learner.loss.kl_coef=0.1",
        "learner.optimizer.lr=0.01",
    ]);
    ok(train(&run, &sets, &[]));
    let m = metrics(&run);
    // Step 1 trains from the reference's own weights: the KL to it is 0 (it would not be if the
    // reference were scored at T = 1 and the policy at T = 0.7).
    let first = m[&1]["loss/kl"];
    assert!(first.abs() < 1e-7, "loss/kl at step 1 = {first:e}");
    // After two updates the policy has left the reference: the term is positive and finite.
    let third = m[&3]["loss/kl"];
    assert!(
        third.is_finite() && third > 1e-6,
        "loss/kl at step 3 = {third:e}"
    );
}

#[test]
fn truncated_sampling_log_probs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(
        &tmp.path().join("refused"),
        &["rollout.top_p=0.9", "rollout.logprob_mode=\"sampling\""],
        &["--check"],
    );
    assert!(
        !out.status.success(),
        "a config the learner cannot match was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rollout.logprob_mode") && err.contains("temperature"),
        "the refusal names the key and the fix: {err}"
    );
    // Without truncation the sampled distribution is the temperature one: accepted.
    let fine = train(
        &tmp.path().join("fine"),
        &[
            "rollout.temperature=0.7",
            "rollout.logprob_mode=\"sampling\"",
        ],
        &["--check"],
    );
    ok(fine);
}
