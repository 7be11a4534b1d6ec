//! Acceptance 4: randomized (fuzz-like) and adversarial inputs to the tool-call parser, the calculator, the
//! tool environment and the answer grader: no panic, bounded time, bounded size of every result. Inputs are
//! drawn from a fixed seed so a failure is reproducible.

use std::time::{Duration, Instant};

use alp_envs::answer::{grade, FinalNumberRule};
use alp_envs::calculator::{CalcError, Calculator, Grammar, Limits};
use alp_envs::envs::countdown::{check, Rules};
use alp_envs::envs::tool_math::{ToolMath, ToolMathSettings};
use alp_envs::rng::Rng;
use alp_envs::tool_call::parse_tool_calls;
use alp_envs::Environment;
use serde_json::json;

/// Generous: debug builds on a busy 2-core machine. Real costs are microseconds to milliseconds.
const SLOW: Duration = Duration::from_secs(3);

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    let dt = t.elapsed();
    assert!(dt < SLOW, "{what} took {dt:?}");
    out
}

const ALPHABET: &[&str] = &[
    "0",
    "1",
    "2",
    "7",
    "9",
    "99999999999",
    ".",
    ",",
    "+",
    "-",
    "*",
    "/",
    "^",
    "**",
    "(",
    ")",
    " ",
    "x",
    "%",
    "e",
    "×",
    "÷",
    "−",
    "\u{0}",
    "é",
    "🙂",
    "\\",
    "\"",
    "{",
    "}",
    "<tool_call>",
    "</tool_call>",
    "\\boxed{",
    "\\frac",
    "####",
    "=",
    "\n",
];

fn random_text(rng: &mut Rng, max_pieces: u64) -> String {
    let n = rng.range(0, max_pieces);
    (0..n).map(|_| *rng.choose(ALPHABET).unwrap()).collect()
}

/// A well-formed expression, possibly mutated afterwards.
fn random_expr(rng: &mut Rng, depth: u32) -> String {
    if depth == 0 || rng.range(0, 3) == 0 {
        return match rng.range(0, 3) {
            0 => rng.range(0, 9).to_string(),
            1 => rng.range(0, u64::MAX).to_string(),
            _ => format!("{}.{}", rng.range(0, 999), rng.range(0, 999)),
        };
    }
    let op = *rng.choose(&["+", "-", "*", "/", "^", "**"]).unwrap();
    let (a, b) = (random_expr(rng, depth - 1), random_expr(rng, depth - 1));
    match rng.range(0, 3) {
        0 => format!("({a}) {op} ({b})"),
        1 => format!("-{a}{op}{b}"),
        _ => format!("{a} {op} {b}"),
    }
}

fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..rng.range(0, 3) {
        if chars.is_empty() {
            break;
        }
        let i = rng.range(0, chars.len() as u64 - 1) as usize;
        match rng.range(0, 2) {
            0 => {
                chars.remove(i);
            }
            1 => chars.insert(i, *rng.choose(&['(', ')', '^', '9', '-', '/']).unwrap()),
            _ => {
                let last = chars.len() - 1;
                chars.swap(i, last);
            }
        }
    }
    chars.into_iter().collect()
}

fn check_calc(calc: &Calculator, input: &str) {
    let r = timed(&format!("calculator on {} chars", input.len()), || {
        calc.evaluate(input)
    });
    if let Ok(e) = r {
        assert!(e.value.bits() <= calc.limits.max_bits, "{input}");
    }
}

#[test]
fn calculator_random_inputs() {
    let calc = Calculator::default();
    let mut rng = Rng::new(20_241_126);
    for _ in 0..3000 {
        check_calc(&calc, &random_text(&mut rng, 60));
        let e = random_expr(&mut rng, 5);
        check_calc(&calc, &e);
        check_calc(&calc, &mutate(&mut rng, &e));
    }
}

#[test]
fn calculator_adversarial_inputs() {
    let wide = Calculator::new(
        Limits {
            max_len: 2_000_000,
            ..Limits::default()
        },
        Grammar::FULL,
    );
    let calc = Calculator::default();
    let nested = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let mb = 1 << 20;
    let cases: Vec<String> = vec![
        "9^9^9^9".into(),
        "9**9**9**9".into(),
        "(9^9)^(9^9)".into(),
        "2^4096".into(),
        "2^4095 * 2^4095".into(),
        "(2^2000)^3".into(),
        "2^-4097".into(),
        "0^-1".into(),
        "1/0".into(),
        "(1/3)^4096".into(),
        "10^-5000".into(),
        "-".repeat(5000) + "1",
        "2^".repeat(5000) + "2",
        nested.clone(),
        "(".repeat(mb),
        "9".repeat(mb),
        "1+".repeat(mb / 2) + "1",
        "1/".repeat(mb / 2) + "7",
        "99999999999999999999*".repeat(2000) + "9",
        "é".repeat(mb / 2),
        "\u{0}".repeat(mb),
    ];
    for c in &cases {
        check_calc(&wide, c);
        check_calc(&calc, c);
    }
    assert!(matches!(
        wide.evaluate(&nested),
        Err(CalcError::TooDeep { .. })
    ));
    assert!(matches!(
        calc.evaluate(&"9".repeat(mb)),
        Err(CalcError::TooLong { .. })
    ));
    assert!(wide.evaluate("9^9^9^9").is_err());
    // Chains of additions are long but shallow: 1+1+...+1 evaluates without recursion.
    assert_eq!(
        wide.evaluate(&("1+".repeat(100_000) + "1"))
            .unwrap()
            .value
            .to_i64(),
        Some(100_001)
    );
}

#[test]
fn tool_call_parser_random_and_adversarial() {
    let mut rng = Rng::new(7);
    for _ in 0..3000 {
        let text = random_text(&mut rng, 40);
        let p = timed("parser", || parse_tool_calls(&text, 4));
        assert!(p.calls.len() <= 5);
    }
    let mb = 1 << 20;
    let body = format!(
        "{{\"name\": \"calculator\", \"arguments\": {{\"expression\": \"{}\"}}}}",
        "9".repeat(mb)
    );
    let cases = vec![
        "<tool_call>".repeat(mb / 11),
        "</tool_call>".repeat(mb / 12),
        format!("<tool_call>{}</tool_call>", "[".repeat(mb)),
        format!("<tool_call>{}</tool_call>", "{\"a\":".repeat(10_000)),
        format!("<tool_call>{body}</tool_call>"),
        "<tool_call>{\"name\": \"calculator\"}</tool_call>".repeat(50_000),
        "x".repeat(mb),
    ];
    for c in &cases {
        let p = timed("parser on adversarial input", || parse_tool_calls(c, 4));
        assert!(p.calls.len() <= 5);
    }
}

#[test]
fn tool_environment_never_panics() {
    let env = ToolMath::new(ToolMathSettings {
        max_turns: 32,
        ..Default::default()
    })
    .unwrap();
    let mut ep = env
        .reset(&json!({"question": "1 + 1", "answer": "2"}))
        .unwrap();
    let mut rng = Rng::new(99);
    let mut inputs: Vec<String> = (0..25)
        .map(|_| {
            let e = random_expr(&mut rng, 4);
            let e = mutate(&mut rng, &e);
            format!(
                "<tool_call>{}</tool_call>",
                json!({"name": "calculator", "arguments": {"expression": e}})
            )
        })
        .collect();
    inputs.push(format!("<tool_call>{{\"name\": \"calculator\", \"arguments\": {{\"expression\": \"{}1{}\"}}}}</tool_call>", "(".repeat(10_000), ")".repeat(10_000)));
    inputs.push("<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"9^9^9^9\"}}</tool_call>".into());
    inputs.push(format!("<tool_call>{}", "z".repeat(1 << 20)));
    for input in &inputs {
        let o = timed("tool step", || ep.step(input)).unwrap();
        assert!(
            !o.done,
            "a tool call does not end the episode before max_turns"
        );
        assert!(!o.messages.is_empty());
        for m in &o.messages {
            assert!(
                m.content.len() < 2000,
                "tool message of {} bytes",
                m.content.len()
            );
        }
    }
    let o = ep.step("\\boxed{2}").unwrap();
    assert!(o.done && o.info.correct);
}

#[test]
fn graders_on_adversarial_completions() {
    let mb = 1 << 20;
    let nested_frac = format!(
        "\\boxed{{{}1{}}}",
        "\\frac{".repeat(10_000),
        "}{2}".repeat(10_000)
    );
    let cases = vec![
        "\\boxed{".repeat(mb / 7),
        "{".repeat(mb),
        "}".repeat(mb),
        format!("\\boxed{{{}}}", "9".repeat(mb)),
        format!("\\boxed{{{}}}", "{".repeat(mb / 2) + &"}".repeat(mb / 2)),
        nested_frac,
        "#### ".repeat(mb / 5),
        "1,".repeat(mb / 2),
        "-1".repeat(mb / 2),
        "\\text{".repeat(mb / 6),
        format!("\\boxed{{{}}}", "\\text{".repeat(100) + &"}".repeat(100)),
    ];
    let rules = Rules {
        use_all_numbers: false,
        integer_intermediates: true,
    };
    for c in &cases {
        let g = timed("grade", || grade(c, "7", FinalNumberRule::LastNumber));
        assert!(!g.correct);
        timed("countdown check", || check(c, &[1, 2, 3], 6, rules));
    }
    let mut rng = Rng::new(5);
    for _ in 0..3000 {
        let t = random_text(&mut rng, 50);
        timed("grade", || grade(&t, "7", FinalNumberRule::LastNumber));
    }
}

#[test]
fn peak_memory_stays_small() {
    // Runs after (or alongside) the other tests in this binary; all of them together must stay far below 1 GiB.
    calculator_adversarial_inputs();
    graders_on_adversarial_completions();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let hwm_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(hwm_kb < 1024 * 1024, "peak resident memory {hwm_kb} kB");
    }
}

/// Sizes near the largest `tool_math` limits admit expressions whose every operation is slow (a binary
/// gcd on million-bit fractions takes seconds): the work limit refuses them in bounded time.
#[test]
fn calculator_work_is_bounded_at_the_largest_limits() {
    let calc = Calculator::new(
        Limits {
            max_len: 100_000,
            max_depth: 256,
            max_literal_digits: 100,
            max_bits: 1 << 20,
            max_exponent: 1 << 20,
            ..Limits::default()
        },
        Grammar::FULL,
    );
    let big = "(3^400000/(7^100000+1))";
    let cases = [
        format!("{big}{}", "*(5/3)".repeat(2000)),
        format!("{big}{}", "+1/7".repeat(2000)),
        format!("{}1", "3^400000/7^100000*".repeat(2000)),
        format!("(2^1000000){}", "-1".repeat(20_000)),
        "(1/3)^600000 * (3/1)^600000".to_string(),
    ];
    for c in &cases {
        let r = timed("an expensive expression", || calc.evaluate(c));
        assert!(r.is_err(), "{}... was evaluated", &c[..40]);
    }
    let e = timed("refusal", || calc.evaluate(&cases[0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("too much computation"), "{e}");
    // Ordinary expressions stay well inside the budget.
    assert_eq!(
        calc.evaluate("(12 + 7) * 3 / 4").unwrap().value.to_string(),
        "57/4"
    );
    // The same through the environment at its largest settings: one tool step, bounded time.
    let env = ToolMath::new(ToolMathSettings {
        max_expression_chars: 100_000,
        max_depth: 256,
        max_bits: 1 << 20,
        max_exponent: 1 << 20,
        ..Default::default()
    })
    .unwrap();
    let mut ep = env
        .reset(&json!({"question": "1 + 1", "answer": "2"}))
        .unwrap();
    let call = format!(
        "<tool_call>{}</tool_call>",
        json!({"name": "calculator", "arguments": {"expression": format!("{big}{}", "*(5/3)".repeat(100))}})
    );
    let o = timed("tool step", || ep.step(&call)).unwrap();
    let reply = &o.messages[0].content;
    assert!(reply.contains("too much computation"), "{reply}");
}
