//! `math`: single-turn, dataset-backed math word problems (GSM8K JSONL, verl-style parquet), graded by exact
//! comparison of the final answer.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use super::{check_template, prompt, render, text_field};
use crate::answer::{self, FinalNumberRule};
use crate::dataset::{load_rows, resolve_data_path};
use crate::env::{Environment, Episode, Example, Info, Observation, Split};
use crate::error::EnvError;
use crate::message::{Message, Role};
use crate::registry::EnvDef;

pub const DEFAULT_PROMPT: &str =
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{}.";

crate::settings! {
    /// Settings of the `math` environment.
    pub struct MathSettings {
        /// Training problems: GSM8K-style JSONL (`question`, `answer` ending in `#### N`) or verl-style parquet
        /// (`prompt`, `reward_model.ground_truth`). Paths through `shared/data/` are also found in $ALP_SHARED_DATA.
        train_path: String = "../shared/data/gsm8k/train.jsonl".to_string(),
        /// Held-out problems, same formats; empty for none.
        test_path: String = "../shared/data/gsm8k/test.jsonl".to_string(),
        /// User message for rows with a `question`; `{question}` is replaced. Rows with a `prompt` keep theirs.
        prompt_template: String = DEFAULT_PROMPT.to_string(),
        /// Optional system message put before the prompt.
        system_prompt: Option<String> = None,
        /// When the completion has neither `\boxed{}` nor `####`: `last_number` or `none`.
        fallback: FinalNumberRule = FinalNumberRule::LastNumber,
        /// Reward for a correct answer.
        correct_reward: f64 = 1.0,
        /// Reward for a wrong or missing answer.
        wrong_reward: f64 = 0.0,
    }
    validate = MathSettings::check;
}

impl MathSettings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        check_template(&self.prompt_template)?;
        if self.train_path.trim().is_empty() {
            return Err(("train_path", "must name a .jsonl or .parquet file".into()));
        }
        Ok(())
    }
}

/// A problem in the form every math-like environment uses.
#[derive(Debug, Clone, PartialEq)]
pub struct MathProblem {
    /// The question text, when the row has one (GSM8K); verl rows carry ready-made messages instead.
    pub question: Option<String>,
    pub messages: Vec<Message>,
    pub gold: String,
    /// A worked solution from the dataset, when present.
    pub solution: Option<String>,
}

type Rows = Result<Arc<Vec<Value>>, (String, String)>;

pub struct Math {
    settings: MathSettings,
    train: OnceLock<Rows>,
    test: OnceLock<Rows>,
}

impl Math {
    pub fn new(settings: MathSettings) -> Self {
        Math {
            settings,
            train: OnceLock::new(),
            test: OnceLock::new(),
        }
    }

    pub fn settings(&self) -> &MathSettings {
        &self.settings
    }

    /// The rows of a split, read on first use (so `score` works without the dataset files).
    pub fn rows(&self, split: Split) -> Result<Arc<Vec<Value>>, EnvError> {
        let (cell, path) = match split {
            Split::Train => (&self.train, &self.settings.train_path),
            Split::Test => (&self.test, &self.settings.test_path),
        };
        if path.trim().is_empty() {
            return Err(EnvError::Dataset {
                path: String::new(),
                message: format!("no {} split configured", split.as_str()),
            });
        }
        let loaded = cell.get_or_init(|| {
            let p: PathBuf = resolve_data_path(path).map_err(|e| (path.clone(), e.to_string()))?;
            let rows = load_rows(&p).map_err(|e| (path.clone(), e.to_string()))?;
            if rows.is_empty() {
                return Err((path.clone(), format!("{}: no rows", p.display())));
            }
            // Every row is read as a problem once, so a malformed one is reported by its file and
            // line when the split loads; its episodes then fail (reward 0) without failing the run.
            let bad = self.malformed_rows(&p, &rows);
            for message in bad.iter().take(5) {
                tracing::warn!("dataset {message}; its episodes will fail (reward 0)");
            }
            if bad.len() > 5 {
                tracing::warn!(
                    "dataset {}: {} malformed rows in all",
                    p.display(),
                    bad.len()
                );
            }
            Ok(Arc::new(rows))
        });
        loaded.clone().map_err(|(_, message)| EnvError::Dataset {
            path: path.clone(),
            message,
        })
    }

    /// `FILE: line N: why` for every row of `rows` (read from `path`) that is not a problem.
    pub fn malformed_rows(&self, path: &std::path::Path, rows: &[Value]) -> Vec<String> {
        rows.iter()
            .enumerate()
            .filter_map(|(i, row)| {
                self.problem(row).err().map(|e| {
                    let at = crate::dataset::row_location(path, i);
                    format!("{}: {at}: {e}", path.display())
                })
            })
            .collect()
    }

    /// Reads a dataset row: `{question, answer}` (GSM8K), `{prompt, reward_model: {ground_truth}}` (verl), or
    /// `{problem, solution|answer}` (MATH-style, gold = last `\boxed{}` of the solution).
    pub fn problem(&self, row: &Value) -> Result<MathProblem, EnvError> {
        let bad = |m: &str| EnvError::bad_example("math", m);
        let system = self.settings.system_prompt.as_deref();
        if let Some(p) = row.get("prompt") {
            let mut messages: Vec<Message> = match p {
                Value::String(s) => vec![Message::user(s.clone())],
                Value::Array(_) => serde_json::from_value(p.clone()).map_err(|e| {
                    bad(&format!(
                        "`prompt` must be a list of {{role, content}} messages: {e}"
                    ))
                })?,
                _ => return Err(bad("`prompt` must be a string or a list of messages")),
            };
            if let Some(s) = system {
                if messages.first().map(|m| m.role) != Some(Role::System) {
                    messages.insert(0, Message::system(s));
                }
            }
            let gold = row
                .get("reward_model")
                .and_then(|r| text_field(r, "ground_truth"))
                .or_else(|| text_field(row, "ground_truth"))
                .or_else(|| text_field(row, "answer"))
                .ok_or_else(|| bad("a `prompt` row needs `reward_model.ground_truth`"))?;
            return Ok(MathProblem {
                question: None,
                messages,
                gold,
                solution: None,
            });
        }
        let question = text_field(row, "question")
            .or_else(|| text_field(row, "problem"))
            .ok_or_else(|| bad("expected `question` + `answer` (GSM8K), `prompt` + `reward_model` (verl), or `problem` + `solution`"))?;
        let (gold, solution) = if let Some(g) = text_field(row, "ground_truth") {
            (
                g,
                text_field(row, "answer").or_else(|| text_field(row, "solution")),
            )
        } else if let Some(a) = text_field(row, "answer") {
            // GSM8K: worked answer ending in `#### N`; otherwise the answer itself.
            match answer::gsm8k_gold(&a) {
                Some(g) => (g, Some(a)),
                None => (a, None),
            }
        } else if let Some(s) = text_field(row, "solution") {
            let g = answer::extract::last_boxed(&s)
                .ok_or_else(|| bad("`solution` has no \\boxed{} answer"))?;
            (g.to_string(), Some(s))
        } else {
            return Err(bad(
                "no gold answer: expected `answer`, `ground_truth` or `solution`",
            ));
        };
        let messages = prompt(system, render(&self.settings.prompt_template, &question));
        Ok(MathProblem {
            question: Some(question),
            messages,
            gold,
            solution,
        })
    }

    /// Reward and info for a final answer against `gold`.
    pub(crate) fn judge(
        gold: &str,
        completion: &str,
        rule: FinalNumberRule,
        rewards: (f64, f64),
    ) -> Observation {
        let g = answer::grade(completion, gold, rule);
        let info = Info {
            correct: g.correct,
            extracted: g.extracted,
            gold: Some(gold.to_string()),
            ..Info::default()
        };
        Observation::finished(if g.correct { rewards.0 } else { rewards.1 }, info)
    }
}

impl EnvDef for Math {
    const NAME: &'static str = "math";
    const SUMMARY: &'static str = "single-turn math word problems from a dataset (GSM8K JSONL, verl parquet), exact answer check";
    type Settings = MathSettings;

    fn from_settings(settings: MathSettings) -> Result<Self, EnvError> {
        Ok(Math::new(settings))
    }
}

impl Environment for Math {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn num_examples(&self, split: Split) -> Result<Option<usize>, EnvError> {
        Ok(Some(self.rows(split)?.len()))
    }

    fn example(&self, split: Split, seed: u64) -> Result<Example, EnvError> {
        let rows = self.rows(split)?;
        let i = (seed % rows.len() as u64) as usize;
        Ok(Example {
            id: format!("{}:{i}", split.as_str()),
            data: rows[i].clone(),
        })
    }

    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let p = self.problem(example)?;
        let (rule, rewards) = (
            self.settings.fallback,
            (self.settings.correct_reward, self.settings.wrong_reward),
        );
        let gold = p.gold;
        Ok(Episode::single_turn(p.messages, move |text: &str| {
            Math::judge(&gold, text, rule, rewards)
        }))
    }

    /// GSM8K's worked answer without its `<<calculator>>` annotations.
    fn reference_completion(&self, example: &Value) -> Result<Option<String>, EnvError> {
        Ok(self
            .problem(example)?
            .solution
            .map(|s| strip_calc_annotations(&s)))
    }
}

/// Removes GSM8K's `<<48/2=24>>` calculator annotations.
pub fn strip_calc_annotations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("<<") {
        match rest[i..].find(">>") {
            Some(j) => {
                out.push_str(&rest[..i]);
                rest = &rest[i + j + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// A verl-style row, handy for tests and for converting datasets: `{prompt: [{role, content}], reward_model:
/// {ground_truth, style}}`.
pub fn verl_row(question: &str, gold: &str) -> Value {
    json!({"prompt": [{"role": "user", "content": question}], "reward_model": {"ground_truth": gold, "style": "rule"}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_and_verl_rows() {
        let m = Math::new(MathSettings::default());
        let row = json!({"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"});
        let p = m.problem(&row).unwrap();
        assert_eq!(p.gold, "4");
        assert!(p.messages[0].content.starts_with("2+2?\nPlease reason"));
        assert_eq!(
            m.reference_completion(&row).unwrap().unwrap(),
            "2+2=4\n#### 4"
        );
        assert!(m.score(&row, "so \\boxed{4}").unwrap().correct);
        assert!(!m.score(&row, "so \\boxed{5}").unwrap().correct);

        let v = verl_row("What is 3*3? Output after ####.", "9");
        let mut ep = m.reset(&v).unwrap();
        assert_eq!(ep.messages[0].content, "What is 3*3? Output after ####.");
        let o = ep.step("#### 9").unwrap();
        assert!(o.done && o.info.correct && o.reward == 1.0);
        assert_eq!(o.info.gold.as_deref(), Some("9"));

        let math_style = json!({"problem": "p", "solution": "so \\boxed{\\frac{1}{2}}"});
        assert!(m.score(&math_style, "\\boxed{0.5}").unwrap().correct);
        let e = m.problem(&json!({"foo": 1})).unwrap_err().to_string();
        assert!(e.contains("question") && e.contains("prompt"), "{e}");
    }

    #[test]
    fn settings_are_checked() {
        let e = crate::Registry::builtin()
            .build("math", &json!({"prompt_template": "no slot"}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("prompt_template") && e.contains("{question}"),
            "{e}"
        );
        let env = crate::Registry::builtin()
            .build("math", &json!({"train_path": "/nonexistent.jsonl"}))
            .unwrap();
        let e = env.example(Split::Train, 0).unwrap_err().to_string();
        assert!(e.contains("/nonexistent.jsonl"), "{e}");
    }
}
