//! `alp-rl eval`'s numbers (`alp_rollout::evaluate`) on a hand-made example: a scripted backend answers
//! correctly exactly `c` times out of `n = 4` per problem, with `c = 0, 1, 4`, so accuracy and pass@k
//! must equal the unbiased estimator `1 - C(n - c, k) / C(n, k)` computed by hand.
use alp_envs::Split;
use alp_rollout::{evaluate, EpisodeSettings, SamplingParams};
use alp_test_support::backend::ScriptedBackend;
use alp_tokenizer::CharTokenizerSpec;

#[test]
fn pass_at_k_matches_the_unbiased_estimator_by_hand() {
    let env = alp_envs::Registry::builtin()
        .build("arithmetic", &serde_json::json!({"digits": 1}))
        .unwrap();
    let examples: Vec<_> = (0..3)
        .map(|s| env.example(Split::Test, s).unwrap())
        .collect();
    let golds: Vec<String> = examples
        .iter()
        .map(|e| e.data["answer"].as_str().unwrap().to_string())
        .collect();
    let char_tokenizer = || {
        CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
            .build()
            .unwrap()
    };
    let tokenizer = char_tokenizer();
    // Request `i` is sample `i % n` of problem `i / n`: correct while the sample index is below that
    // problem's number of correct samples.
    let (correct, n) = ([0, 1, 4], 4);
    let mut backend = ScriptedBackend::per_row(char_tokenizer(), move |i| {
        let (problem, sample) = (i / n, i % n);
        if sample < correct[problem] {
            format!("#### {}", golds[problem])
        } else {
            "#### 1000".to_string()
        }
    });
    let report = evaluate(
        &mut backend,
        &tokenizer,
        env.as_ref(),
        &examples,
        4,
        &SamplingParams::default(),
        &EpisodeSettings::default(),
    )
    .unwrap();
    // accuracy = (0 + 1 + 4) / 12.
    assert!((report.accuracy - 5.0 / 12.0).abs() < 1e-12, "{report:?}");
    // pass@1 = mean(0, 1/4, 1); pass@2 = mean(0, 1 - C(3,2)/C(4,2) = 1/2, 1); pass@4 = mean(0, 1, 1).
    let p = &report.pass_at_k;
    assert_eq!(p.keys().collect::<Vec<_>>(), ["pass@1", "pass@2", "pass@4"]);
    assert!((p["pass@1"] - 5.0 / 12.0).abs() < 1e-12);
    assert!((p["pass@2"] - 0.5).abs() < 1e-12);
    assert!((p["pass@4"] - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(report.problems, 3);
    assert_eq!(report.error_rate, 0.0);
}
