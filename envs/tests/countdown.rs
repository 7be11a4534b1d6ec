//! Acceptance 3: generated Countdown puzzles are solvable (confirmed by an independent brute-force search), and
//! the checker accepts valid expressions and rejects reused numbers, wrong targets, division by zero and, when
//! configured, non-integer intermediates.

use alp_envs::envs::countdown::{check, Countdown, CountdownSettings, Rules, Verdict};
use alp_envs::rational::Rational;
use alp_envs::{Environment, Split};
use serde_json::json;

/// Every value reachable by combining a sub-multiset of `nums` (each at most once) with + - * /, exactly.
/// Returns whether `target` is reachable (using all numbers when `use_all`).
fn solvable(nums: &[Rational], target: &Rational, use_all: bool, integer_only: bool) -> bool {
    if (!use_all || nums.len() == 1) && nums.iter().any(|n| n == target) {
        return true;
    }
    for i in 0..nums.len() {
        for j in 0..nums.len() {
            if i == j {
                continue;
            }
            let (a, b) = (&nums[i], &nums[j]);
            let mut results = vec![
                a.add(b, 4096).unwrap(),
                a.sub(b, 4096).unwrap(),
                a.mul(b, 4096).unwrap(),
            ];
            if let Ok(q) = a.div(b, 4096) {
                results.push(q);
            }
            for r in results {
                if integer_only && !r.is_integer() {
                    continue;
                }
                let mut rest: Vec<Rational> = nums
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i && *k != j)
                    .map(|(_, v)| v.clone())
                    .collect();
                rest.push(r);
                if solvable(&rest, target, use_all, integer_only) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn generated_puzzles_are_solvable_by_brute_force() {
    for (use_all, integer_only) in [(false, false), (true, false), (false, true), (true, true)] {
        let settings = CountdownSettings {
            use_all_numbers: use_all,
            integer_intermediates: integer_only,
            ..Default::default()
        };
        let env = Countdown::new(settings);
        for seed in 0..40 {
            for split in [Split::Train, Split::Test] {
                let p = env.puzzle(split, seed).unwrap();
                assert!((3..=4).contains(&p.numbers.len()));
                assert!((10..=999).contains(&p.target));
                let nums: Vec<Rational> = p
                    .numbers
                    .iter()
                    .map(|&n| Rational::from_integer(n))
                    .collect();
                assert!(
                    solvable(
                        &nums,
                        &Rational::from_integer(p.target),
                        use_all,
                        integer_only
                    ),
                    "unsolvable: {:?} -> {}",
                    p.numbers,
                    p.target
                );
                // The generator's own solution passes the checker.
                let rules = Rules {
                    use_all_numbers: use_all,
                    integer_intermediates: integer_only,
                };
                assert_eq!(
                    check(p.solution.as_deref().unwrap(), &p.numbers, p.target, rules),
                    Verdict::Correct
                );
                assert_eq!(env.split_of(&p.numbers, p.target), split);
            }
        }
    }
}

#[test]
fn checker_verdicts() {
    let any = Rules {
        use_all_numbers: false,
        integer_intermediates: false,
    };
    let all = Rules {
        use_all_numbers: true,
        integer_intermediates: false,
    };
    let int = Rules {
        use_all_numbers: false,
        integer_intermediates: true,
    };
    let nums = [25, 50, 75, 100, 3, 6];
    assert_eq!(
        check("(100 + 6) * 3 - 75 - 50 / 25", &nums, 241, any),
        Verdict::Correct
    );
    assert_eq!(check("100 * 3 - 50 - 6", &nums, 244, any), Verdict::Correct);
    assert_eq!(check("100*3-50-6", &nums, 244, all), Verdict::NotAllUsed);
    assert_eq!(
        check("100 + 100", &nums, 200, any),
        Verdict::NumberNotAvailable("100".into())
    );
    assert_eq!(
        check("7 * 3", &nums, 21, any),
        Verdict::NumberNotAvailable("7".into())
    );
    assert!(matches!(
        check("100 + 3", &nums, 104, any),
        Verdict::WrongTarget { .. }
    ));
    assert!(matches!(
        check("100 / (3 - 3)", &[100, 3, 3], 1, any),
        Verdict::Invalid(_)
    ));
    assert!(matches!(
        check("6 / (3 - 3)", &[6, 3, 3], 1, any),
        Verdict::Invalid(_)
    ));
    // 3 / 6 * 100 = 50 through a fraction: fine by default, refused under the integer rule.
    assert_eq!(check("3 / 6 * 100", &nums, 50, any), Verdict::Correct);
    assert!(matches!(
        check("3 / 6 * 100", &nums, 50, int),
        Verdict::Invalid(_)
    ));
    assert!(matches!(
        check("-3 + 6", &nums, 3, any),
        Verdict::Invalid(_)
    ));
    assert!(matches!(check("3 ^ 2", &nums, 9, any), Verdict::Invalid(_)));
    assert!(matches!(
        check("(3 + 6", &nums, 9, any),
        Verdict::Invalid(_)
    ));
    assert!(matches!(
        check("3.0 * 3", &nums, 9, any),
        Verdict::Invalid(_)
    ));
    assert!(matches!(
        check("import os", &nums, 9, any),
        Verdict::Invalid(_)
    ));
}

#[test]
fn environment_rewards() {
    let env = Countdown::new(CountdownSettings {
        format_reward: 0.1,
        ..Default::default()
    });
    let ex = json!({"numbers": [2, 3, 7], "target": 13});
    let cases = [
        ("<answer>2 * 3 + 7</answer>", true, 1.0),
        ("<answer>2 * 3 + 7 = 13</answer>", true, 1.0),
        ("\\boxed{7 + 3 * 2}", true, 1.0),
        ("<answer>2 + 3 + 7</answer>", false, 0.1),
        ("<answer>7 + 7 - 1</answer>", false, 0.0),
        ("thirteen", false, 0.0),
    ];
    for (completion, correct, reward) in cases {
        let r = env.score(&ex, completion).unwrap();
        assert_eq!((r.correct, r.reward), (correct, reward), "{completion}");
    }
    let mut ep = env.reset(&ex).unwrap();
    assert!(ep.messages[0].content.contains("[2, 3, 7]") && ep.messages[0].content.contains("13"));
    let o = ep.step("<answer>2 + 3 + 7</answer>").unwrap();
    assert!(o.info.extra["verdict"]
        .as_str()
        .unwrap()
        .contains("gives 12"));
}
