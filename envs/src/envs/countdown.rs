//! `countdown`: reach a target from given numbers with `+ - * /`, each number used at most once. The answer is
//! parsed by the safe calculator (integers and the four operations only) and checked exactly.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_template, prompt, render};
use crate::answer::extract::{answer_region, last_boxed};
use crate::calculator::{CalcError, Calculator, Grammar, Limits};
use crate::env::{Environment, Episode, Example, Info, Observation, Split};
use crate::error::EnvError;
use crate::rational::{abbreviate, Rational};
use crate::registry::EnvDef;
use crate::rng::{hash_str, Rng};

const MAX_ATTEMPTS: u32 = 10_000;

crate::settings! {
    /// Settings of the `countdown` environment.
    pub struct CountdownSettings {
        /// Fewest numbers given (2 to 6).
        min_numbers: u32 = 3,
        /// Most numbers given (2 to 6).
        max_numbers: u32 = 4,
        /// Numbers are drawn from 1 to this.
        max_number: u32 = 99,
        /// Smallest target.
        min_target: u32 = 10,
        /// Largest target.
        max_target: u32 = 999,
        /// Every number must be used (otherwise each at most once).
        use_all_numbers: bool = false,
        /// Every intermediate result must be an integer (`7 / 2 * 2` is refused).
        integer_intermediates: bool = false,
        /// Reward for a well-formed expression that uses allowed numbers but misses the target.
        format_reward: f64 = 0.0,
        /// Percent of puzzles held out for the test split (1 to 50).
        test_percent: u32 = 10,
        /// User message; `{question}` is replaced by "Using the numbers [..], create an equation that equals T".
        prompt_template: String = "{question}. You can use + - * / and parentheses, and each number at most once. Show your work, then give the expression in <answer> </answer> tags, for example <answer>(1 + 2) * 3</answer>.".to_string(),
        /// Optional system message.
        system_prompt: Option<String> = None,
    }
    validate = CountdownSettings::check;
}

impl CountdownSettings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        check_template(&self.prompt_template)?;
        if !(2..=6).contains(&self.min_numbers) {
            return Err((
                "min_numbers",
                format!("must be 2 to 6, got {}", self.min_numbers),
            ));
        }
        if !(self.min_numbers..=6).contains(&self.max_numbers) {
            return Err((
                "max_numbers",
                format!(
                    "must be {} to 6, got {}",
                    self.min_numbers, self.max_numbers
                ),
            ));
        }
        if !(1..=10_000).contains(&self.max_number) {
            return Err((
                "max_number",
                format!("must be 1 to 10000, got {}", self.max_number),
            ));
        }
        if self.max_target < self.min_target {
            return Err((
                "max_target",
                format!("must be at least min_target ({})", self.min_target),
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

/// A puzzle and one solution (proof that it is solvable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Puzzle {
    pub numbers: Vec<u64>,
    pub target: u64,
    /// An expression reaching the target, as built by the generator.
    #[serde(default)]
    pub solution: Option<String>,
}

/// Why an answer is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Verdict {
    #[error("correct")]
    Correct,
    #[error("no answer found (expected <answer>...</answer> or \\boxed{{}})")]
    NoAnswer,
    #[error("invalid expression: {0}")]
    Invalid(CalcError),
    #[error("{0} is not among the available numbers (or is used too often)")]
    NumberNotAvailable(String),
    #[error("not every number is used")]
    NotAllUsed,
    #[error("the expression gives {got}, not {target}")]
    WrongTarget { got: String, target: u64 },
}

/// The rules a checker applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub use_all_numbers: bool,
    pub integer_intermediates: bool,
}

/// The expression in a completion: the last `<answer>...</answer>`, else the last `\boxed{}`; a trailing
/// `= target` is dropped.
pub fn extract_expression(completion: &str) -> Option<String> {
    let text = answer_region(completion);
    let found = match (text.rfind("<answer>"), text.rfind("</answer>")) {
        (Some(open), Some(close)) if close > open => Some(&text[open + "<answer>".len()..close]),
        _ => last_boxed(text),
    }?;
    let expr = found.split('=').next().unwrap_or("").trim();
    (!expr.is_empty()).then(|| expr.to_string())
}

/// Checks an expression against a puzzle exactly: allowed numbers (each at most once, or all once), the four
/// operations, no division by zero, optionally integer intermediates, and the target.
pub fn check(expression: &str, numbers: &[u64], target: u64, rules: Rules) -> Verdict {
    let grammar = Grammar {
        decimals: false,
        power: false,
        unary_minus: false,
        integer_intermediates: rules.integer_intermediates,
    };
    let calc = Calculator::new(
        Limits {
            max_len: 500,
            ..Limits::default()
        },
        grammar,
    );
    let eval = match calc.evaluate(expression) {
        Ok(e) => e,
        Err(e) => return Verdict::Invalid(e),
    };
    let mut left: Vec<Rational> = numbers.iter().map(|&n| Rational::from_integer(n)).collect();
    for lit in &eval.literals {
        match left.iter().position(|n| n == lit) {
            Some(i) => {
                left.swap_remove(i);
            }
            None => return Verdict::NumberNotAvailable(abbreviate(&lit.to_string(), 30)),
        }
    }
    if rules.use_all_numbers && !left.is_empty() {
        return Verdict::NotAllUsed;
    }
    if eval.value != Rational::from_integer(target) {
        return Verdict::WrongTarget {
            got: abbreviate(&eval.value.to_string(), 40),
            target,
        };
    }
    Verdict::Correct
}

pub struct Countdown {
    settings: CountdownSettings,
}

impl Countdown {
    pub fn new(settings: CountdownSettings) -> Self {
        Countdown { settings }
    }

    pub fn rules(&self) -> Rules {
        Rules {
            use_all_numbers: self.settings.use_all_numbers,
            integer_intermediates: self.settings.integer_intermediates,
        }
    }

    /// Which split a puzzle belongs to: a hash of its sorted numbers and target, so splits are disjoint.
    pub fn split_of(&self, numbers: &[u64], target: u64) -> Split {
        let mut sorted = numbers.to_vec();
        sorted.sort_unstable();
        if hash_str(&format!("{sorted:?}->{target}")) % 100 < self.settings.test_percent as u64 {
            Split::Test
        } else {
            Split::Train
        }
    }

    /// The puzzle of (split, seed). Built backwards: combine random numbers with random operations and take the
    /// result as the target, so every puzzle has a solution.
    pub fn puzzle(&self, split: Split, seed: u64) -> Result<Puzzle, EnvError> {
        let s = &self.settings;
        let mut rng = Rng::derive(seed, "countdown");
        for _ in 0..MAX_ATTEMPTS {
            let n = rng.range(s.min_numbers as u64, s.max_numbers as u64) as usize;
            let numbers: Vec<u64> = (0..n).map(|_| rng.range(1, s.max_number as u64)).collect();
            let Some((value, expr)) = self.random_expression(&numbers, &mut rng) else {
                continue;
            };
            let Some(target) = value.to_i64().and_then(|t| u64::try_from(t).ok()) else {
                continue;
            };
            if target < s.min_target as u64
                || target > s.max_target as u64
                || self.split_of(&numbers, target) != split
            {
                continue;
            }
            return Ok(Puzzle {
                numbers,
                target,
                solution: Some(expr),
            });
        }
        Err(EnvError::Generation {
            env: "countdown".into(),
            message: format!(
                "no puzzle found in {MAX_ATTEMPTS} attempts; widen the number or target ranges"
            ),
        })
    }

    /// Combines a random subset (all numbers if `use_all_numbers`) pairwise with random operations.
    fn random_expression(&self, numbers: &[u64], rng: &mut Rng) -> Option<(Rational, String)> {
        let mut pool: Vec<(Rational, String)> = numbers
            .iter()
            .map(|&n| (Rational::from_integer(n), n.to_string()))
            .collect();
        rng.shuffle(&mut pool);
        let keep = if self.settings.use_all_numbers {
            pool.len()
        } else {
            rng.range(2, pool.len() as u64) as usize
        };
        pool.truncate(keep);
        while pool.len() > 1 {
            let (a, ea) = pool.swap_remove(rng.range(0, pool.len() as u64 - 1) as usize);
            let (b, eb) = pool.swap_remove(rng.range(0, pool.len() as u64 - 1) as usize);
            let op = *rng.choose(&['+', '-', '*', '/'])?;
            let v = match op {
                '+' => a.add(&b, 256),
                '-' => a.sub(&b, 256),
                '*' => a.mul(&b, 256),
                _ => a.div(&b, 256),
            }
            .ok()?;
            if self.settings.integer_intermediates && !v.is_integer() {
                return None;
            }
            pool.push((v, format!("({ea} {op} {eb})")));
        }
        let (v, e) = pool.pop()?;
        // Outer parentheses add nothing.
        let e = e
            .strip_prefix('(')
            .and_then(|x| x.strip_suffix(')'))
            .map_or(e.clone(), str::to_string);
        Some((v, e))
    }

    fn parse_example(example: &Value) -> Result<Puzzle, EnvError> {
        // Accepts generated examples and TinyZero-style rows (`nums`, `target`).
        let mut v = example.clone();
        if let Some(obj) = v.as_object_mut() {
            if !obj.contains_key("numbers") {
                if let Some(n) = obj.remove("nums") {
                    obj.insert("numbers".into(), n);
                }
            }
        }
        serde_json::from_value::<Puzzle>(v).map_err(|e| {
            EnvError::bad_example(
                "countdown",
                format!("expected `numbers` (list of positive integers) and `target`: {e}"),
            )
        })
    }

    fn question(p: &Puzzle) -> String {
        let nums: Vec<String> = p.numbers.iter().map(u64::to_string).collect();
        format!(
            "Using the numbers [{}], create an equation that equals {}",
            nums.join(", "),
            p.target
        )
    }

    fn judge(p: &Puzzle, completion: &str, rules: Rules, format_reward: f64) -> Observation {
        let expr = extract_expression(completion);
        let verdict = match &expr {
            None => Verdict::NoAnswer,
            Some(e) => check(e, &p.numbers, p.target, rules),
        };
        let correct = verdict == Verdict::Correct;
        let reward = match verdict {
            Verdict::Correct => 1.0,
            Verdict::WrongTarget { .. } | Verdict::NotAllUsed => format_reward,
            _ => 0.0,
        };
        let mut info = Info {
            correct,
            extracted: expr,
            gold: p.solution.clone(),
            ..Info::default()
        };
        info.extra
            .insert("verdict".into(), Value::String(verdict.to_string()));
        Observation::finished(reward, info)
    }
}

impl EnvDef for Countdown {
    const NAME: &'static str = "countdown";
    const SUMMARY: &'static str = "single-turn Countdown: reach a target with + - * / and each number at most once, exact check";
    type Settings = CountdownSettings;

    fn from_settings(settings: CountdownSettings) -> Result<Self, EnvError> {
        Ok(Countdown::new(settings))
    }
}

impl Environment for Countdown {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn num_examples(&self, _split: Split) -> Result<Option<usize>, EnvError> {
        Ok(None)
    }

    fn example(&self, split: Split, seed: u64) -> Result<Example, EnvError> {
        let p = self.puzzle(split, seed)?;
        let mut data = json!(p);
        data["split"] = json!(split);
        data["seed"] = json!(seed);
        Ok(Example {
            id: format!("{}:{seed}", split.as_str()),
            data,
        })
    }

    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let p = Self::parse_example(example)?;
        let s = &self.settings;
        let messages = prompt(
            s.system_prompt.as_deref(),
            render(&s.prompt_template, &Self::question(&p)),
        );
        let (rules, format_reward) = (self.rules(), s.format_reward);
        Ok(Episode::single_turn(messages, move |text: &str| {
            Countdown::judge(&p, text, rules, format_reward)
        }))
    }

    fn reference_completion(&self, example: &Value) -> Result<Option<String>, EnvError> {
        let p = Self::parse_example(example)?;
        Ok(p.solution.map(|s| format!("<answer>{s}</answer>")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_expressions() {
        assert_eq!(
            extract_expression("x <answer>(1+2)*3</answer>").as_deref(),
            Some("(1+2)*3")
        );
        assert_eq!(
            extract_expression("<answer>1+2 = 3</answer>").as_deref(),
            Some("1+2")
        );
        assert_eq!(extract_expression("\\boxed{4*5}").as_deref(), Some("4*5"));
        assert_eq!(extract_expression("<answer></answer>"), None);
        assert_eq!(extract_expression("nothing"), None);
    }

    #[test]
    fn generated_examples_roundtrip() {
        let env = Countdown::new(CountdownSettings::default());
        let ex = env.example(Split::Train, 3).unwrap();
        let reference = env.reference_completion(&ex.data).unwrap().unwrap();
        let s = env.score(&ex.data, &reference).unwrap();
        assert!(s.correct && s.reward == 1.0, "{reference}");
        let tinyzero = json!({"nums": [3, 5, 7], "target": 22});
        assert!(
            env.score(&tinyzero, "<answer>3 * 5 + 7</answer>")
                .unwrap()
                .correct
        );
        assert!(env.reset(&json!({"target": 3})).is_err());
    }
}
