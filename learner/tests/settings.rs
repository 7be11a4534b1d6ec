//! Acceptance 7: bad settings are refused with a message naming the field.
// Brute-force references index by position on purpose; settings are built field by field for readability.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::{
    AlpSettings, CorrectionKind, LearnerError, LearnerKind, LearnerSettings, PgLearner,
};
use serde_json::json;

fn parse(v: serde_json::Value) -> Result<LearnerSettings, String> {
    let s: LearnerSettings = serde_json::from_value(v).map_err(|e| e.to_string())?;
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

fn refused(v: serde_json::Value, field: &str) {
    let err = parse(v.clone()).expect_err(&format!("{v} should be refused"));
    assert!(
        err.contains(field),
        "error for {v} does not name `{field}`: {err}"
    );
}

#[test]
fn defaults_are_valid_and_round_trip() {
    let s = parse(json!({})).unwrap();
    assert_eq!(s, LearnerSettings::default());
    let back: LearnerSettings = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let s = parse(json!({
        "advantage": "rloo",
        "correction": {"kind": "alp", "level": "sequence"},
        "alp": {"sigma0": 1e-6, "perturb_lr": 5e-4, "layer_start": 1, "layer_end": 3},
        "loss": {"eps_low": 0.5, "eps_high": 3.0, "dual_clip": 3.0, "aggregation": "seq-mean-token-sum"},
        "optimizer": {"schedule": "cosine", "total_steps": 100, "warmup_steps": 10}
    }))
    .unwrap();
    assert_eq!(s.correction.kind, CorrectionKind::Alp);
    assert_eq!(s.alp.layer_end, Some(3));
}

#[test]
fn bad_values_name_their_field() {
    refused(json!({"alp": {"sigma0": -0.1}}), "alp.sigma0");
    refused(json!({"alp": {"sigma0": 0.0}}), "alp.sigma0");
    refused(json!({"loss": {"eps_low": 1.0}}), "loss.eps_low");
    refused(json!({"loss": {"eps_low": 1.5}}), "loss.eps_low");
    refused(
        json!({"alp": {"layer_start": 4, "layer_end": 4}}),
        "alp.layer_end",
    );
    refused(
        json!({"alp": {"layer_start": 5, "layer_end": 2}}),
        "alp.layer_end",
    );
    // An unknown enum value is refused with the allowed ones (the run config names the key from the
    // value's position in the file).
    refused(
        json!({"correction": {"kind": "sapo"}}),
        "unknown value \"sapo\"; allowed: bypass, tis, mis, alp, none, icepop, dppo",
    );
    refused(
        json!({"correction": {"level": "chunk"}}),
        "allowed: token, sequence",
    );
    refused(
        json!({"loss": {"aggregation": "token_mean"}}),
        "allowed: token-mean, seq-mean-token-mean, seq-mean-token-sum; did you mean `token-mean`?",
    );
    refused(json!({"advantage": "ppo"}), "allowed: grpo, dr_grpo, rloo");
    refused(
        json!({"kind": "egroll"}),
        "allowed: pg, eggroll; did you mean `eggroll`?",
    );
    refused(
        json!({"kind": "eggroll", "eggroll": {"population": 5}}),
        "eggroll.population",
    );
    refused(
        json!({"kind": "eggroll", "eggroll": {"sigma": 0.0}}),
        "eggroll.sigma",
    );
    refused(json!({"loss": {"dual_clip": 0.9}}), "loss.dual_clip");
    refused(
        json!({"correction": {"mis_low": 2.0, "mis_high": 1.0}}),
        "correction.mis_high",
    );
    refused(
        json!({"correction": {"tis_cap": 0.0}}),
        "correction.tis_cap",
    );
    refused(json!({"optimizer": {"beta2": 1.0}}), "optimizer.beta2");
    refused(
        json!({"optimizer": {"schedule": "linear"}}),
        "optimizer.total_steps",
    );
    refused(json!({"micro_batch_size": 0}), "micro_batch_size");
    // Unknown keys are refused by serde itself, which names them.
    refused(json!({"correction": {"knd": "tis"}}), "knd");
    refused(json!({"alp": {"sigma": 0.1}}), "sigma");
}

#[test]
fn refusals_that_need_the_model() {
    common::init();
    let alp = AlpSettings {
        layer_start: 1,
        layer_end: Some(9),
        ..Default::default()
    };
    let err = alp.layer_range(4).unwrap_err();
    assert_eq!(err.field, "alp.layer_end");
    let alp = AlpSettings {
        layer_start: 4,
        layer_end: None,
        ..Default::default()
    };
    assert_eq!(alp.layer_range(4).unwrap_err().field, "alp.layer_start");
    assert_eq!(AlpSettings::default().layer_range(4).unwrap(), 0..4);

    let mut s = LearnerSettings::default();
    s.correction.kind = CorrectionKind::Alp;
    s.alp.layer_start = 2;
    let model = common::ToyLm::new(8, 4, 2, 0);
    match PgLearner::new(s, model, None) {
        Err(LearnerError::Settings(e)) => assert_eq!(e.field, "alp.layer_start"),
        other => panic!("expected a settings error, got {:?}", other.err()),
    }
    let mut s = LearnerSettings::default();
    s.loss.kl_coef = 0.1;
    match PgLearner::new(s, common::ToyLm::new(8, 4, 2, 0), None) {
        Err(LearnerError::Settings(e)) => assert_eq!(e.field, "loss.kl_coef"),
        other => panic!("expected a settings error, got {:?}", other.err()),
    }
}

#[test]
fn a_written_learner_section_holds_only_its_learners_keys() {
    let keys = |s: &LearnerSettings| -> Vec<String> {
        let v = serde_json::to_value(s).unwrap();
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let pg = LearnerSettings::default();
    // Every key of the policy-gradient learner as docs/learner.md lists them.
    let mut pg_keys = vec![
        "advantage",
        "micro_batch_size",
        "micro_batch_tokens",
        "gradient_checkpointing",
        "mini_batches",
        "epochs",
        "max_grad_norm",
        "mismatch_every",
        "loss",
        "correction",
        "alp",
        "optimizer",
    ];
    pg_keys.sort();
    let mut pg_only = LearnerSettings::PG_KEYS.to_vec();
    pg_only.sort();
    assert_eq!(pg_only, pg_keys);
    let mut want = pg_keys.clone();
    want.extend(["kind", "seed"]);
    want.sort();
    assert_eq!(keys(&pg), want);
    let es = parse(json!({"kind": "eggroll", "seed": 3, "eggroll": {"population": 8, "rank": 2}}))
        .unwrap();
    assert_eq!(keys(&es), ["eggroll", "kind", "seed"]);
    assert_eq!(
        (es.kind, es.eggroll.population, es.eggroll.rank),
        (LearnerKind::Eggroll, 8, 2)
    );
    for s in [pg, es] {
        let back: LearnerSettings =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
