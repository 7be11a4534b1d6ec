//! Acceptance 2: tricky answer strings with expected verdicts (nested boxes, fractions, commas, units, several
//! boxes, no answer), through both the bare grader and the `math` environment.

use alp_envs::answer::{grade, FinalNumberRule};
use alp_envs::Registry;
use serde_json::json;

use FinalNumberRule::{LastNumber, None as Strict};

#[rustfmt::skip]
const CASES: &[(&str, &str, FinalNumberRule, bool)] = &[
    // completion, gold, fallback rule, expected verdict
    (r"The answer is \boxed{18}.", "18", Strict, true),
    (r"\boxed{18.0}", "18", Strict, true),
    (r"\boxed{18.00}", "18", Strict, true),
    (r"\boxed{\$18}", "18", Strict, true),
    (r"\boxed{18 \text{ dollars}}", "18", Strict, true),
    (r"\boxed{\text{18 dollars}}", "18", Strict, true),
    (r"\boxed{1,200}", "1200", Strict, true),
    (r"\boxed{1200}", "1,200", Strict, true),
    (r"\boxed{1,20}", "120", Strict, false),
    (r"\boxed{12,000,000}", "12000000", Strict, true),
    (r"\boxed{\frac{1}{2}}", "0.5", Strict, true),
    (r"\boxed{\dfrac{3}{4}}", "0.75", Strict, true),
    (r"\boxed{\tfrac34}", "3/4", Strict, true),
    (r"\boxed{3/4}", "\\frac{3}{4}", Strict, true),
    (r"\boxed{\frac{6}{8}}", "3/4", Strict, true),
    (r"\boxed{\frac{1}{3}}", "0.333", Strict, false),
    (r"\boxed{2\frac{1}{2}}", "2.5", Strict, true),
    (r"\boxed{-\frac{1}{2}}", "-0.5", Strict, true),
    (r"\boxed{\frac{-1}{2}}", "-1/2", Strict, true),
    (r"\boxed{-5}", "-5", Strict, true),
    (r"\boxed{-5}", "5", Strict, false),
    (r"\boxed{−5}", "-5", Strict, true),
    (r"\boxed{25\%}", "25", Strict, true),
    (r"\boxed{25%}", "25", Strict, true),
    (r"\boxed{\boxed{7}}", "7", Strict, true),
    (r"\boxed{\frac{\frac{1}{2}}{2}}", "1/4", Strict, true),
    (r"First \boxed{3}, then corrected: \boxed{5}", "5", Strict, true),
    (r"First \boxed{3}, then corrected: \boxed{5}", "3", Strict, false),
    (r"\boxed{5} and an unfinished \boxed{6", "5", Strict, true),
    (r"\boxed{x = 5}", "5", Strict, true),
    (r"\boxed{90^\circ}", "90", Strict, true),
    (r"\boxed{5\text{ cm}}", "5", Strict, true),
    (r"\boxed{5 or 6}", "5", Strict, false),
    (r"\boxed{}", "5", Strict, false),
    (r"\boxed{\sqrt{2}}", "\\sqrt{2}", Strict, true),
    (r"\boxed{\sqrt{2}}", "1.414", Strict, false),
    ("#### 72", "72", Strict, true),
    ("#### $1,080", "1080", Strict, true),
    ("#### 18. She makes $18 every day.", "18", Strict, true),
    ("work...\n#### 17\nmore text", "17", Strict, true),
    ("#### 5\n#### 6", "6", Strict, true),
    ("I think \\boxed{4} #### 5", "4", Strict, true),
    ("The answer is 42.", "42", LastNumber, true),
    ("The answer is 42.", "42", Strict, false),
    ("So she has 1,234.5 left", "1234.5", LastNumber, true),
    ("It is 3/4 of the cake", "0.75", LastNumber, true),
    ("Growth of 15% this year", "15", LastNumber, true),
    ("The result is -7", "-7", LastNumber, true),
    ("10 - 3 = 7", "7", LastNumber, true),
    ("I don't know.", "7", LastNumber, false),
    ("", "7", LastNumber, false),
    ("<think>maybe \\boxed{3}</think>It is \\boxed{4}", "4", Strict, true),
    ("<think>the answer is 4</think>no idea", "4", LastNumber, false),
    (r"\boxed{18}", "18.5", Strict, false),
    (r"\boxed{0.1}", "1/10", Strict, true),
    (r"\boxed{1e3}", "1000", Strict, false),
];

#[test]
fn tricky_answers_table() {
    assert!(CASES.len() >= 40);
    let mut failures = Vec::new();
    for (completion, gold, rule, want) in CASES {
        let g = grade(completion, gold, *rule);
        if g.correct != *want {
            failures.push(format!(
                "{completion:?} vs gold {gold:?} ({rule:?}): got {}, extracted {:?}",
                g.correct, g.extracted
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn the_math_environment_uses_the_same_rules() {
    let strict = Registry::builtin()
        .build("math", &json!({"fallback": "none"}))
        .unwrap();
    let lenient = Registry::builtin().build("math", &json!({})).unwrap();
    for (completion, gold, rule, want) in CASES {
        let row = json!({"question": "q", "answer": format!("work\n#### {gold}")});
        let env = if *rule == Strict { &strict } else { &lenient };
        // A gold that itself contains `####`-breaking text is not a GSM8K row; the table's golds are all plain.
        let r = env.score(&row, completion).unwrap();
        assert_eq!(r.correct, *want, "{completion:?} vs {gold:?}");
    }
    let e = Registry::builtin()
        .build("math", &json!({"fallback": "sometimes"}))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("setting `fallback`") && e.contains("last_number"),
        "{e}"
    );
}
