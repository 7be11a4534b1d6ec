//! Acceptance 5: `arithmetic` is deterministic per seed and its train and held-out splits do not overlap.

use std::collections::HashSet;

use alp_envs::envs::arithmetic::{Arithmetic, ArithmeticSettings};
use alp_envs::{Environment, Registry, Split};
use serde_json::json;

#[test]
fn deterministic_per_seed() {
    let a = Registry::builtin()
        .build(
            "arithmetic",
            &json!({"digits": 3, "operators": "+-*/", "max_operands": 4}),
        )
        .unwrap();
    let b = Registry::builtin()
        .build(
            "arithmetic",
            &json!({"digits": 3, "operators": "+-*/", "max_operands": 4}),
        )
        .unwrap();
    for seed in 0..200 {
        for split in [Split::Train, Split::Test] {
            assert_eq!(
                a.example(split, seed).unwrap(),
                b.example(split, seed).unwrap()
            );
        }
    }
    // Different seeds give (mostly) different problems.
    let distinct: HashSet<String> = (0..200)
        .map(|s| {
            a.example(Split::Train, s).unwrap().data["expression"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(distinct.len() > 190, "{}", distinct.len());
    // Pinned: a seed means the same problem across versions.
    let default = Arithmetic::new(ArithmeticSettings::default());
    let p = default.problem(Split::Train, 0).unwrap();
    assert_eq!(
        (p.expression.as_str(), p.answer),
        (PINNED_EXPRESSION, PINNED_ANSWER),
        "{p:?}"
    );
}

const PINNED_EXPRESSION: &str = "43 - 30";
const PINNED_ANSWER: i64 = 13;

#[test]
fn splits_are_disjoint() {
    // A small problem space, so collisions across seeds are frequent and overlap would show.
    let env = Arithmetic::new(ArithmeticSettings {
        digits: 1,
        min_operands: 2,
        max_operands: 2,
        test_percent: 20,
        ..Default::default()
    });
    let train: HashSet<String> = (0..3000)
        .map(|s| env.problem(Split::Train, s).unwrap().expression)
        .collect();
    let test: HashSet<String> = (0..3000)
        .map(|s| env.problem(Split::Test, s).unwrap().expression)
        .collect();
    assert!(
        train.len() > 100 && test.len() > 20,
        "{} {}",
        train.len(),
        test.len()
    );
    assert!(
        train.is_disjoint(&test),
        "overlap: {:?}",
        train.intersection(&test).take(5).collect::<Vec<_>>()
    );
    // Every problem of the space is in exactly one split: together they cover it.
    assert!(train.len() + test.len() <= 3 * 10 * 10);
}

#[test]
fn worked_answers_and_gold() {
    let env = Arithmetic::new(ArithmeticSettings {
        digits: 2,
        max_operands: 4,
        operators: "+-*/".into(),
        ..Default::default()
    });
    for seed in 0..100 {
        let ex = env.example(Split::Test, seed).unwrap();
        let solution = env.reference_completion(&ex.data).unwrap().unwrap();
        let gold = ex.data["answer"].as_str().unwrap();
        assert!(solution.ends_with(&format!("#### {gold}")), "{solution}");
        assert!(env.score(&ex.data, &solution).unwrap().correct);
        assert_eq!(ex.id, format!("test:{seed}"));
    }
}
