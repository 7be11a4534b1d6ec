//! `arithmetic`: seeded synthetic arithmetic problems (`12 + 7 * 3`), cheap and deterministic, with a worked
//! solution for supervised warm starts. The held-out split is decided by a hash of the problem itself, so the
//! same problem can never be drawn in both splits whatever the seeds.

use serde_json::{json, Value};

use super::{check_template, prompt, render, text_field};
use crate::answer::FinalNumberRule;
use crate::env::{Environment, Episode, Example, Split};
use crate::error::EnvError;
use crate::rational::Rational;
use crate::registry::EnvDef;
use crate::rng::{hash_str, Rng};

use super::math::Math;

/// Most tries at drawing a problem of the wanted split before giving up (a split can be empty when the problem
/// space is tiny).
const MAX_DRAWS: u64 = 10_000;

crate::settings! {
    /// Settings of the `arithmetic` environment.
    pub struct ArithmeticSettings {
        /// Most digits of each operand (1 to 6); dividends are multiples of their divisors, so they may be longer.
        digits: u32 = 2,
        /// Fewest operands in a problem (at least 2).
        min_operands: u32 = 2,
        /// Most operands in a problem (at most 8).
        max_operands: u32 = 3,
        /// Operators to draw from, any of `+-*/`; divisions always come out whole.
        operators: String = "+-*".to_string(),
        /// Percent of all problems held out for the test split (1 to 50).
        test_percent: u32 = 10,
        /// User message; `{question}` is replaced by the expression.
        prompt_template: String = "What is {question}?\nWork it out step by step, then give the final answer after \"####\".".to_string(),
        /// Optional system message.
        system_prompt: Option<String> = None,
        /// When the completion has neither `\boxed{}` nor `####`: `last_number` or `none`.
        fallback: FinalNumberRule = FinalNumberRule::LastNumber,
    }
    validate = ArithmeticSettings::check;
}

impl ArithmeticSettings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        check_template(&self.prompt_template)?;
        if !(1..=6).contains(&self.digits) {
            return Err(("digits", format!("must be 1 to 6, got {}", self.digits)));
        }
        if self.min_operands < 2 {
            return Err((
                "min_operands",
                format!("must be at least 2, got {}", self.min_operands),
            ));
        }
        if self.max_operands > 8 || self.max_operands < self.min_operands {
            return Err((
                "max_operands",
                format!(
                    "must be {} to 8, got {}",
                    self.min_operands, self.max_operands
                ),
            ));
        }
        if self.operators.is_empty() || !self.operators.chars().all(|c| "+-*/".contains(c)) {
            return Err((
                "operators",
                format!("must be made of + - * /, got {:?}", self.operators),
            ));
        }
        if !(1..=50).contains(&self.test_percent) {
            return Err((
                "test_percent",
                format!("must be 1 to 50, got {}", self.test_percent),
            ));
        }
        Ok(())
    }
}

/// A generated problem with its gold answer and worked solution.
#[derive(Debug, Clone, PartialEq)]
pub struct ArithmeticProblem {
    /// The expression, e.g. `12 + 7 * 3`.
    pub expression: String,
    /// The gold answer, an integer.
    pub answer: i64,
    /// A step-by-step reduction ending in `#### answer`: a correct completion for supervised warm starts.
    pub solution: String,
    pub split: Split,
    pub seed: u64,
}

impl ArithmeticProblem {
    pub fn to_json(&self) -> Value {
        json!({
            "expression": self.expression,
            "question": self.expression,
            "answer": self.answer.to_string(),
            "solution": self.solution,
            "split": self.split,
            "seed": self.seed,
        })
    }
}

pub struct Arithmetic {
    settings: ArithmeticSettings,
}

impl Arithmetic {
    pub fn new(settings: ArithmeticSettings) -> Self {
        Arithmetic { settings }
    }

    /// Which split a problem belongs to: a function of its text alone, hence disjoint splits.
    pub fn split_of(&self, expression: &str) -> Split {
        if hash_str(expression) % 100 < self.settings.test_percent as u64 {
            Split::Test
        } else {
            Split::Train
        }
    }

    /// The problem of (split, seed): candidates are drawn from the seed until one falls in the split.
    pub fn problem(&self, split: Split, seed: u64) -> Result<ArithmeticProblem, EnvError> {
        let mut rng = Rng::derive(seed, "arithmetic");
        for _ in 0..MAX_DRAWS {
            let (operands, ops) = self.draw(&mut rng);
            let expression = show(&operands, &ops);
            if self.split_of(&expression) == split {
                let (answer, solution) = solve(&operands, &ops);
                return Ok(ArithmeticProblem {
                    expression,
                    answer,
                    solution,
                    split,
                    seed,
                });
            }
        }
        Err(EnvError::Generation {
            env: "arithmetic".into(),
            message: format!(
                "no {} problem found in {MAX_DRAWS} draws; widen digits/operands",
                split.as_str()
            ),
        })
    }

    fn draw(&self, rng: &mut Rng) -> (Vec<i64>, Vec<char>) {
        let s = &self.settings;
        let max = 10i64.pow(s.digits) - 1;
        let n = rng.range(s.min_operands as u64, s.max_operands as u64) as usize;
        let allowed: Vec<char> = s.operators.chars().collect();
        let ops: Vec<char> = (0..n - 1)
            .map(|_| *rng.choose(&allowed).unwrap_or(&'+'))
            .collect();
        let mut operands: Vec<i64> = ops
            .iter()
            .map(|&op| {
                if op == '/' {
                    rng.range(2.min(max as u64), max as u64) as i64
                } else {
                    rng.range(0, max as u64) as i64
                }
            })
            .collect();
        operands.insert(0, rng.range(0, max as u64) as i64);
        // Make every division whole: the first operand of each product/quotient chain becomes a multiple of the
        // chain's divisors (then every partial result of the chain is an integer too).
        let mut start = 0;
        for k in 0..=ops.len() {
            let chain_ends = k == ops.len() || matches!(ops[k], '+' | '-');
            if chain_ends {
                let divisors: i64 = (start..k)
                    .filter(|&j| ops[j] == '/')
                    .map(|j| operands[j + 1])
                    .product();
                if divisors > 1 {
                    let quotient = rng.range(0, max as u64) as i64;
                    operands[start] = quotient * divisors;
                }
                start = k + 1;
            }
        }
        (operands, ops)
    }

    fn parse_example(&self, example: &Value) -> Result<(String, String), EnvError> {
        let bad = |m: &str| EnvError::bad_example("arithmetic", m);
        if let (Some(q), Some(a)) = (
            text_field(example, "question"),
            text_field(example, "answer"),
        ) {
            return Ok((q, a));
        }
        // Just a seed (and split): regenerate.
        let seed = example
            .get("seed")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("expected `question` + `answer`, or `seed`"))?;
        let split = match example.get("split") {
            None => Split::Train,
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| bad("`split` must be \"train\" or \"test\""))?,
        };
        let p = self.problem(split, seed)?;
        Ok((p.expression, p.answer.to_string()))
    }
}

/// `12 + 7 * 3`
fn show(operands: &[i64], ops: &[char]) -> String {
    let mut s = operands[0].to_string();
    for (op, x) in ops.iter().zip(&operands[1..]) {
        s.push_str(&format!(" {op} {x}"));
    }
    s
}

/// Evaluates with the usual precedence, one operation per line, writing the remaining expression each time:
/// `12 + 7 * 3\n= 12 + 21\n= 33\n#### 33`.
fn solve(operands: &[i64], ops: &[char]) -> (i64, String) {
    let mut vals: Vec<Rational> = operands
        .iter()
        .map(|&x| Rational::from_integer(x))
        .collect();
    let mut ops = ops.to_vec();
    let show_now = |vals: &[Rational], ops: &[char]| {
        let mut s = vals[0].to_string();
        for (op, x) in ops.iter().zip(&vals[1..]) {
            s.push_str(&format!(" {op} {x}"));
        }
        s
    };
    let mut lines = vec![show_now(&vals, &ops)];
    while !ops.is_empty() {
        let k = ops.iter().position(|&o| o == '*' || o == '/').unwrap_or(0);
        let (a, b) = (&vals[k], &vals[k + 1]);
        // Operands are small and divisions exact by construction, so these never fail.
        let r = match ops[k] {
            '+' => a.add(b, u64::MAX),
            '-' => a.sub(b, u64::MAX),
            '*' => a.mul(b, u64::MAX),
            _ => a.div(b, u64::MAX),
        }
        .unwrap_or_else(|_| Rational::zero());
        vals[k] = r;
        vals.remove(k + 1);
        ops.remove(k);
        lines.push(format!("= {}", show_now(&vals, &ops)));
    }
    let answer = vals[0].to_i64().unwrap_or(0);
    lines.push(format!("#### {answer}"));
    (answer, lines.join("\n"))
}

impl EnvDef for Arithmetic {
    const NAME: &'static str = "arithmetic";
    const SUMMARY: &'static str = "single-turn synthetic arithmetic from a seed, with worked solutions and a disjoint held-out split";
    type Settings = ArithmeticSettings;

    fn from_settings(settings: ArithmeticSettings) -> Result<Self, EnvError> {
        Ok(Arithmetic::new(settings))
    }
}

impl Environment for Arithmetic {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn num_examples(&self, _split: Split) -> Result<Option<usize>, EnvError> {
        Ok(None)
    }

    fn example(&self, split: Split, seed: u64) -> Result<Example, EnvError> {
        let p = self.problem(split, seed)?;
        Ok(Example {
            id: format!("{}:{seed}", split.as_str()),
            data: p.to_json(),
        })
    }

    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let (question, gold) = self.parse_example(example)?;
        let s = &self.settings;
        let messages = prompt(
            s.system_prompt.as_deref(),
            render(&s.prompt_template, &question),
        );
        let rule = s.fallback;
        Ok(Episode::single_turn(messages, move |text: &str| {
            Math::judge(&gold, text, rule, (1.0, 0.0))
        }))
    }

    fn reference_completion(&self, example: &Value) -> Result<Option<String>, EnvError> {
        if let Some(s) = text_field(example, "solution") {
            return Ok(Some(s));
        }
        match (
            example.get("seed").and_then(Value::as_u64),
            example.get("split"),
        ) {
            (Some(seed), split) => {
                let split = split
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or(Split::Train);
                Ok(Some(self.problem(split, seed)?.solution))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_solution_follows_precedence() {
        let (answer, text) = solve(&[12, 7, 3], &['+', '*']);
        assert_eq!(answer, 33);
        assert_eq!(text, "12 + 7 * 3\n= 12 + 21\n= 33\n#### 33");
        let (answer, text) = solve(&[84, 4, 3, 5], &['/', '*', '-']);
        assert_eq!(answer, 58);
        assert!(text.ends_with("#### 58"), "{text}");
        assert_eq!(solve(&[5, 9], &['-']).0, -4);
    }

    #[test]
    fn divisions_are_whole_and_answers_right() {
        let env = Arithmetic::new(ArithmeticSettings {
            operators: "+-*/".into(),
            max_operands: 5,
            ..Default::default()
        });
        for seed in 0..300 {
            let p = env.problem(Split::Train, seed).unwrap();
            let calc = crate::calculator::Calculator::default();
            let v = calc.evaluate(&p.expression).unwrap().value;
            assert_eq!(v, Rational::from_integer(p.answer), "{}", p.expression);
            let ex = p.to_json();
            assert!(
                env.score(&ex, &p.solution).unwrap().correct,
                "{}",
                p.solution
            );
            assert!(
                !env.score(&ex, &format!("#### {}", p.answer + 1))
                    .unwrap()
                    .correct
            );
            assert_eq!(
                env.reference_completion(&json!({"seed": seed})).unwrap(),
                Some(p.solution)
            );
        }
    }

    #[test]
    fn settings_validated() {
        let r = crate::Registry::builtin();
        for (k, v) in [
            ("digits", json!(0)),
            ("operators", json!("+%")),
            ("max_operands", json!(1)),
            ("test_percent", json!(90)),
        ] {
            let e = r
                .build("arithmetic", &json!({ k: v }))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(&format!("setting `{k}`")), "{e}");
        }
        let tiny = Arithmetic::new(ArithmeticSettings {
            digits: 1,
            max_operands: 2,
            operators: "+".into(),
            test_percent: 1,
            ..Default::default()
        });
        // 100 problems and 1% held out: a few or none are test problems; either way no panic and no overlap.
        for seed in 0..20 {
            if let Ok(p) = tiny.problem(Split::Test, seed) {
                assert_eq!(tiny.split_of(&p.expression), Split::Test);
            }
        }
    }
}
