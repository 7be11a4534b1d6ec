//! `tool_math`: multi-turn math with a `calculator` tool in the Qwen3/Hermes format. The model may call
//! `<tool_call>{"name": "calculator", "arguments": {"expression": "..."}}</tool_call>`; results come back as
//! `tool` messages; the episode ends on a message without a tool call (its final answer is graded) or after
//! `max_turns`.

use serde_json::{json, Value};

use super::arithmetic::{Arithmetic, ArithmeticSettings};
use super::math::{Math, MathSettings};
use super::{check_template, prompt, render};
use crate::answer::extract::answer_region;
use crate::answer::FinalNumberRule;
use crate::calculator::{format_value, Calculator, Grammar, Limits};
use crate::env::{Environment, Episode, EpisodeLogic, Example, Info, Observation, Split, Turn};
use crate::error::EnvError;
use crate::message::{Message, ToolSpec};
use crate::registry::EnvDef;
use crate::settings::parse_settings;
use crate::tool_call::{parse_tool_calls, ToolCallError};

pub const TOOL_NAME: &str = "calculator";

alp_macros::string_enum! {
    /// Where the problems come from.
    pub enum Source: "source" {
        /// Synthetic problems of the `arithmetic` environment.
        Arithmetic => "arithmetic",
        /// Dataset problems of the `math` environment.
        Math => "math",
    }
}

crate::settings! {
    /// Settings of the `tool_math` environment.
    pub struct ToolMathSettings {
        /// Problem source: `arithmetic` or `math`.
        source: Source = Source::Arithmetic,
        /// Settings of the source environment (a table; its own keys, e.g. `{digits = 4}` or `{train_path = ...}`).
        source_settings: Value = json!({}),
        /// Most assistant messages per episode (1 to 32); the last one must answer.
        max_turns: u32 = 4,
        /// Most tool calls run per assistant message.
        max_calls_per_turn: u32 = 4,
        /// User message for questions; `{question}` is replaced (dataset rows with their own `prompt` keep it).
        prompt_template: String = "{question}\nYou may use the calculator tool. Put your final answer within \\boxed{}.".to_string(),
        /// Optional system message (the chat template adds the tool list to it).
        system_prompt: Option<String> = None,
        /// When the final message has neither `\boxed{}` nor `####`: `last_number` or `none`.
        fallback: FinalNumberRule = FinalNumberRule::LastNumber,
        /// Longest expression the calculator accepts, in characters.
        max_expression_chars: usize = 200,
        /// Deepest nesting of parentheses, signs and powers.
        max_depth: usize = 32,
        /// Largest intermediate value, in bits (numerator plus denominator).
        max_bits: u64 = 2048,
        /// Largest absolute exponent.
        max_exponent: u64 = 1024,
    }
    validate = ToolMathSettings::check;
}

impl ToolMathSettings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        check_template(&self.prompt_template)?;
        if !(1..=32).contains(&self.max_turns) {
            return Err((
                "max_turns",
                format!("must be 1 to 32, got {}", self.max_turns),
            ));
        }
        if !(1..=16).contains(&self.max_calls_per_turn) {
            return Err((
                "max_calls_per_turn",
                format!("must be 1 to 16, got {}", self.max_calls_per_turn),
            ));
        }
        if !(1..=100_000).contains(&self.max_expression_chars) {
            return Err((
                "max_expression_chars",
                format!("must be 1 to 100000, got {}", self.max_expression_chars),
            ));
        }
        if !(1..=256).contains(&self.max_depth) {
            return Err((
                "max_depth",
                format!("must be 1 to 256, got {}", self.max_depth),
            ));
        }
        if !(1..=1 << 20).contains(&self.max_exponent) {
            return Err((
                "max_exponent",
                format!("must be 1 to 1048576, got {}", self.max_exponent),
            ));
        }
        if !(64..=1 << 20).contains(&self.max_bits) {
            return Err((
                "max_bits",
                format!("must be 64 to 1048576, got {}", self.max_bits),
            ));
        }
        Ok(())
    }
}

/// The tool as the chat template lists it.
pub fn calculator_spec() -> ToolSpec {
    json!({
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Evaluate an arithmetic expression exactly. Supports + - * / ^, parentheses and decimals; \
                            results are exact (fractions when not whole).",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. (12 + 7) * 3 / 4"}},
                "required": ["expression"]
            }
        }
    })
}

enum ProblemSource {
    Arithmetic(Arithmetic),
    Math(Box<Math>),
}

pub struct ToolMath {
    settings: ToolMathSettings,
    source: ProblemSource,
    calculator: Calculator,
}

impl ToolMath {
    pub fn new(settings: ToolMathSettings) -> Result<Self, EnvError> {
        let source = match settings.source {
            Source::Arithmetic => {
                ProblemSource::Arithmetic(Arithmetic::new(parse_settings::<ArithmeticSettings>(
                    "tool_math.source_settings",
                    &settings.source_settings,
                )?))
            }
            Source::Math => {
                ProblemSource::Math(Box::new(Math::new(parse_settings::<MathSettings>(
                    "tool_math.source_settings",
                    &settings.source_settings,
                )?)))
            }
        };
        let limits = Limits {
            max_len: settings.max_expression_chars,
            max_depth: settings.max_depth,
            max_literal_digits: 100,
            max_bits: settings.max_bits,
            max_exponent: settings.max_exponent,
            max_work: crate::calculator::DEFAULT_MAX_WORK,
        };
        Ok(ToolMath {
            calculator: Calculator::new(limits, Grammar::FULL),
            settings,
            source,
        })
    }

    fn source_env(&self) -> &dyn Environment {
        match &self.source {
            ProblemSource::Arithmetic(a) => a,
            ProblemSource::Math(m) => m.as_ref(),
        }
    }

    /// Prompt messages, gold answer and (for `arithmetic` problems) the expression of an example of the
    /// source environment.
    fn problem(&self, example: &Value) -> Result<(Vec<Message>, String, Option<String>), EnvError> {
        let system = self.settings.system_prompt.as_deref();
        let template = &self.settings.prompt_template;
        match &self.source {
            ProblemSource::Math(m) => {
                let p = m.problem(example)?;
                let messages = match &p.question {
                    Some(q) => prompt(system, render(template, q)),
                    None => p.messages,
                };
                Ok((messages, p.gold, None))
            }
            ProblemSource::Arithmetic(a) => {
                let q = example.get("question").and_then(Value::as_str);
                let g = example.get("answer").and_then(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .or_else(|| v.as_i64().map(|i| i.to_string()))
                });
                let (q, g) = match (q, g) {
                    (Some(q), Some(g)) => (q.to_string(), g),
                    _ => {
                        let seed =
                            example.get("seed").and_then(Value::as_u64).ok_or_else(|| {
                                EnvError::bad_example(
                                    "tool_math",
                                    "expected `question` + `answer`, or `seed`",
                                )
                            })?;
                        let split = example
                            .get("split")
                            .and_then(|v| serde_json::from_value(v.clone()).ok())
                            .unwrap_or(Split::Train);
                        let p = a.problem(split, seed)?;
                        (p.expression, p.answer.to_string())
                    }
                };
                Ok((
                    prompt(system, render(template, &format!("What is {q}?"))),
                    g,
                    Some(q),
                ))
            }
        }
    }
}

/// An assistant message calling the calculator on `expression`, in the Qwen3/Hermes layout (what the
/// chat templates of tool-calling models render and what the episode parses).
pub fn call_text(expression: &str) -> String {
    let expression = Value::String(expression.to_string());
    format!(
        "<tool_call>\n{{\"name\": \"{TOOL_NAME}\", \"arguments\": {{\"expression\": {expression}}}}}\n</tool_call>"
    )
}

/// Runs one tool call; every problem becomes the tool message, for the model to read.
pub fn run_call(
    calculator: &Calculator,
    call: &Result<crate::message::ToolCall, ToolCallError>,
) -> String {
    let call = match call {
        Ok(c) => c,
        Err(e) => return format!("error: {e}"),
    };
    if call.function.name != TOOL_NAME {
        let name = crate::rational::abbreviate(&call.function.name, 40);
        return format!("error: unknown tool {name:?}; the only tool is {TOOL_NAME:?}");
    }
    let expr = match call.function.arguments.get("expression") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return "error: the calculator needs {\"expression\": \"...\"} with the expression as a string".into(),
    };
    match calculator.evaluate(&expr) {
        Ok(e) => format_value(&e.value),
        Err(e) => format!("error: {e}"),
    }
}

/// The state of one episode: everything it needs is copied in, so it borrows nothing from the environment.
struct ToolEpisode {
    gold: String,
    calculator: Calculator,
    max_calls: usize,
    fallback: FinalNumberRule,
}

impl EpisodeLogic for ToolEpisode {
    fn step(&mut self, assistant: &str, turn: Turn) -> Observation {
        let parsed = parse_tool_calls(answer_region(assistant), self.max_calls);
        if parsed.calls.is_empty() {
            let mut obs = Math::judge(&self.gold, assistant, self.fallback, (1.0, 0.0));
            obs.info.extra.insert("turn".into(), json!(turn.index));
            return obs;
        }
        let mut info = Info {
            gold: Some(self.gold.clone()),
            ..Info::default()
        };
        info.extra.insert("turn".into(), json!(turn.index));
        info.extra
            .insert("tool_calls".into(), json!(parsed.calls.len()));
        if turn.last {
            // A tool call with no turn left to read its result: the episode ends unanswered.
            info.truncated = true;
            return Observation::finished(0.0, info);
        }
        let messages: Vec<Message> = parsed
            .calls
            .iter()
            .map(|c| Message::tool(TOOL_NAME, run_call(&self.calculator, c)))
            .collect();
        let errors = messages
            .iter()
            .filter(|m| m.content.starts_with("error:"))
            .count();
        info.extra.insert("tool_errors".into(), json!(errors));
        Observation {
            messages,
            reward: 0.0,
            done: false,
            info,
        }
    }
}

impl EnvDef for ToolMath {
    const NAME: &'static str = "tool_math";
    const SUMMARY: &'static str = "multi-turn math with a calculator tool (Qwen3/Hermes <tool_call> format), graded on the final answer";
    type Settings = ToolMathSettings;

    fn from_settings(settings: ToolMathSettings) -> Result<Self, EnvError> {
        ToolMath::new(settings)
    }
}

impl Environment for ToolMath {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn max_turns(&self) -> u32 {
        self.settings.max_turns
    }

    fn num_examples(&self, split: Split) -> Result<Option<usize>, EnvError> {
        self.source_env().num_examples(split)
    }

    fn example(&self, split: Split, seed: u64) -> Result<Example, EnvError> {
        self.source_env().example(split, seed)
    }

    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let (messages, gold, _) = self.problem(example)?;
        let logic = ToolEpisode {
            gold,
            calculator: self.calculator,
            max_calls: self.settings.max_calls_per_turn as usize,
            fallback: self.settings.fallback,
        };
        Ok(Episode::new(
            messages,
            vec![calculator_spec()],
            self.settings.max_turns,
            Box::new(logic),
        ))
    }

    /// Grades the final answer of a whole transcript: the text after the last tool call or tool response.
    fn score(
        &self,
        example: &Value,
        completion: &str,
    ) -> Result<crate::env::ScoreResult, EnvError> {
        let (_, gold, _) = self.problem(example)?;
        let tail = ["</tool_response>", "</tool_call>"]
            .iter()
            .filter_map(|m| completion.rfind(m).map(|i| i + m.len()))
            .max()
            .map_or(completion, |i| &completion[i..]);
        let obs = Math::judge(&gold, tail, self.settings.fallback, (1.0, 0.0));
        Ok(crate::env::ScoreResult {
            reward: obs.reward,
            correct: obs.info.correct,
            extracted: obs.info.extracted,
        })
    }

    fn reference_completion(&self, example: &Value) -> Result<Option<String>, EnvError> {
        self.source_env().reference_completion(example)
    }

    /// For `arithmetic` problems: a calculator call on the problem's expression, the tool message the
    /// episode answers it with (obtained by stepping a real episode), and the final answer `\boxed{result}`.
    /// Dataset (`math`) problems, and episodes of one turn, get the source's worked answer as one message.
    fn reference_turns(&self, example: &Value) -> Result<Option<Vec<Message>>, EnvError> {
        let (_, gold, expression) = self.problem(example)?;
        let (Some(expression), true) = (expression, self.settings.max_turns >= 2) else {
            return Ok(self
                .reference_completion(example)?
                .map(|answer| vec![Message::assistant(answer)]));
        };
        let call = call_text(&expression);
        let mut episode = self.reset(example)?;
        let reply = episode.step(&call)?;
        let result = match reply.messages.as_slice() {
            [m] if !reply.done && !m.content.starts_with("error:") => m.content.clone(),
            _ => {
                return Err(EnvError::bad_example(
                    "tool_math",
                    format!("the calculator cannot evaluate {expression:?}: {reply:?}"),
                ))
            }
        };
        let answer = format!("\\boxed{{{result}}}");
        let end = episode.step(&answer)?;
        if !(end.done && end.info.correct) {
            return Err(EnvError::bad_example(
                "tool_math",
                format!(
                    "the calculator's {result} for {expression:?} is not the gold answer {gold}"
                ),
            ));
        }
        let mut turns = vec![Message::assistant(call)];
        turns.extend(reply.messages);
        turns.push(Message::assistant(answer));
        Ok(Some(turns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(expr: &str) -> String {
        format!("<tool_call>\n{{\"name\": \"calculator\", \"arguments\": {{\"expression\": \"{expr}\"}}}}\n</tool_call>")
    }

    #[test]
    fn multi_turn_episode_with_tool() {
        let env = ToolMath::new(ToolMathSettings::default()).unwrap();
        let ex = json!({"question": "123 * 456", "answer": "56088"});
        let mut ep = env.reset(&ex).unwrap();
        assert_eq!(ep.tools[0]["function"]["name"], "calculator");
        assert!(ep
            .messages
            .last()
            .unwrap()
            .content
            .starts_with("What is 123 * 456?"));
        let o = ep
            .step(&format!("I will compute.\n{}", call("123 * 456")))
            .unwrap();
        assert!(!o.done);
        assert_eq!(o.messages, vec![Message::tool("calculator", "56088")]);
        let o = ep.step("The answer is \\boxed{56088}.").unwrap();
        assert!(o.done && o.info.correct && o.reward == 1.0);
    }

    #[test]
    fn reference_turns_call_the_calculator_and_answer_correctly() {
        let env = ToolMath::new(ToolMathSettings {
            max_turns: 2,
            source_settings: json!({"digits": 2, "max_operands": 3, "operators": "+-*/"}),
            ..Default::default()
        })
        .unwrap();
        for split in [Split::Train, Split::Test] {
            for seed in 0..200 {
                let ex = env.example(split, seed).unwrap();
                let turns = env.reference_turns(&ex.data).unwrap().unwrap();
                assert_eq!(turns.len(), 3, "{turns:?}");
                let expression = ex.data["expression"].as_str().unwrap();
                assert_eq!(turns[0], Message::assistant(call_text(expression)));
                assert_eq!(turns[1].role, crate::message::Role::Tool);
                assert_eq!(turns[2].role, crate::message::Role::Assistant);
                // Replaying the turns through a fresh episode gives the same tool message and a
                // correct end.
                let mut ep = env.reset(&ex.data).unwrap();
                let o = ep.step(&turns[0].content).unwrap();
                assert!(!o.done);
                assert_eq!(o.messages, vec![turns[1].clone()]);
                assert_eq!(o.info.extra["tool_calls"], 1);
                assert_eq!(o.info.extra["tool_errors"], 0);
                let o = ep.step(&turns[2].content).unwrap();
                assert!(o.done && o.info.correct && o.reward == 1.0, "{o:?}");
                assert_eq!(
                    o.info.extracted.as_deref(),
                    ex.data["answer"].as_str(),
                    "{turns:?}"
                );
            }
        }
        // One turn leaves no room for a call: the source's worked answer, which is correct too.
        let one = ToolMath::new(ToolMathSettings {
            max_turns: 1,
            ..Default::default()
        })
        .unwrap();
        let ex = one.example(Split::Train, 4).unwrap();
        let turns = one.reference_turns(&ex.data).unwrap().unwrap();
        assert_eq!(turns.len(), 1);
        assert!(!turns[0].content.contains("<tool_call>"));
        assert!(one.score(&ex.data, &turns[0].content).unwrap().correct);
        // The call text escapes what JSON needs escaped.
        assert_eq!(
            call_text("1 \"+\" 2"),
            "<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"1 \\\"+\\\" 2\"}}\n</tool_call>"
        );
    }

    #[test]
    fn malformed_calls_get_explanations() {
        let env = ToolMath::new(ToolMathSettings {
            max_turns: 3,
            ..Default::default()
        })
        .unwrap();
        let mut ep = env
            .reset(&json!({"question": "1 + 1", "answer": "2"}))
            .unwrap();
        let o = ep.step("<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expr\": \"1+1\"}}</tool_call><tool_call>{bad json</tool_call><tool_call>{\"name\": \"search\"}</tool_call>").unwrap();
        assert_eq!(o.messages.len(), 3);
        assert!(
            o.messages[0].content.contains("needs {\"expression\""),
            "{:?}",
            o.messages[0]
        );
        assert!(
            o.messages[1].content.contains("not valid JSON"),
            "{:?}",
            o.messages[1]
        );
        assert!(
            o.messages[2].content.contains("unknown tool"),
            "{:?}",
            o.messages[2]
        );
        assert_eq!(o.info.extra["tool_errors"], 3);
        let o = ep.step(&call("9^9^9^9")).unwrap();
        assert!(o.messages[0].content.starts_with("error:") && !o.done);
        // Third and last turn: a tool call cannot be answered any more, so the episode ends unanswered.
        let o = ep.step(&call("1+1")).unwrap();
        assert!(o.done && o.info.truncated && !o.info.correct && o.reward == 0.0);
    }

    #[test]
    fn score_reads_the_final_answer_of_a_transcript() {
        let env = ToolMath::new(ToolMathSettings::default()).unwrap();
        let ex = json!({"question": "2 * 21", "answer": "42"});
        let transcript = format!(
            "{}\n<tool_response>\n42\n</tool_response>\nSo \\boxed{{42}}",
            call("2*21")
        );
        assert!(env.score(&ex, &transcript).unwrap().correct);
        assert!(!env.score(&ex, &call("2*21")).unwrap().correct);
        let from_seed = env.example(Split::Test, 5).unwrap();
        assert!(env.reset(&from_seed.data).is_ok());
        let e = ToolMath::new(ToolMathSettings {
            source_settings: json!({"digitz": 3}),
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("digitz") && e.contains("allowed"), "{e}");
    }
}
