//! `unit_convert`: "Convert 3 km to m." The model may call `convert` (see [`crate::tool`]); the tool's
//! reply comes back as a `tool` message, whose tokens the rollout masks out of the loss. The first
//! message without a tool call is the final answer, graded on its `\boxed{N}`.
use alp_envs::answer::{grade, FinalNumberRule};
use alp_envs::env::{EpisodeLogic, Info, Observation, Turn};
use alp_envs::tool_call::parse_tool_calls;
use alp_envs::{EnvDef, EnvError, Environment, Episode, Example, Message, Split};
use serde_json::{json, Value};

use crate::tool;
use crate::units::{whole_pairs, Unit, FAMILIES};

alp_envs::settings! {
    /// Settings of the `unit_convert` environment (`[env]` keys of a run config).
    pub struct UnitConvertSettings {
        /// Unit families to ask about: any of `length`, `mass`, `time`.
        families: Vec<String> = vec!["length".into(), "mass".into(), "time".into()],
        /// Largest quantity asked about (1 to 1000); quantities run from 1.
        max_value: u64 = 9,
        /// Every `test_every`-th problem (2 to 100) is held out for evaluation, never trained on.
        test_every: u64 = 5,
        /// Most assistant messages per episode (1 to 8); the last one must answer.
        max_turns: u32 = 2,
        /// User message; `{question}` is replaced by "Convert 3 km to m".
        prompt_template: String = "{question}.".to_string(),
    }
    validate = UnitConvertSettings::check;
}

impl UnitConvertSettings {
    /// The error names the setting; alp-rl points at `env.<name>` in the config file.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.families.is_empty() {
            return Err((
                "families",
                format!("must name at least one of {FAMILIES:?}"),
            ));
        }
        if let Some(f) = self
            .families
            .iter()
            .find(|f| !FAMILIES.contains(&f.as_str()))
        {
            return Err((
                "families",
                format!("unknown family {f:?}; known: {FAMILIES:?}"),
            ));
        }
        if !(1..=1000).contains(&self.max_value) {
            return Err((
                "max_value",
                format!("must be 1 to 1000, got {}", self.max_value),
            ));
        }
        if !(2..=100).contains(&self.test_every) {
            return Err((
                "test_every",
                format!("must be 2 to 100, got {}", self.test_every),
            ));
        }
        if !(1..=8).contains(&self.max_turns) {
            return Err((
                "max_turns",
                format!("must be 1 to 8, got {}", self.max_turns),
            ));
        }
        if !self.prompt_template.contains("{question}") {
            return Err(("prompt_template", "must contain `{question}`".into()));
        }
        Ok(())
    }
}

/// One problem, as it travels in [`Example::data`] (and the `example` column of the rollout logs).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    value: u64,
    from: Unit,
    to: Unit,
}

impl Problem {
    fn question(&self) -> String {
        format!(
            "Convert {} {} to {}",
            self.value, self.from.symbol, self.to.symbol
        )
    }

    fn answer(&self) -> u64 {
        crate::units::convert(self.value, self.from.symbol, self.to.symbol)
            .expect("problems are whole conversions")
    }

    fn to_json(&self) -> Value {
        json!({"value": self.value, "from": self.from.symbol, "to": self.to.symbol})
    }

    fn from_json(v: &Value) -> Result<Problem, EnvError> {
        let bad = |why: &str| EnvError::BadExample {
            env: UnitConvert::NAME.to_string(),
            message: why.to_string(),
        };
        let value = v
            .get("value")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no `value`"))?;
        let unit = |key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .and_then(crate::units::unit)
                .ok_or_else(|| bad(&format!("`{key}` is not a known unit")))
        };
        let (from, to) = (unit("from")?, unit("to")?);
        crate::units::convert(value, from.symbol, to.symbol).map_err(|e| bad(&e.to_string()))?;
        Ok(Problem { value, from, to })
    }
}

pub struct UnitConvert {
    settings: UnitConvertSettings,
    /// Every problem of the settings, each in exactly one split.
    train: Vec<Problem>,
    test: Vec<Problem>,
}

impl UnitConvert {
    pub fn new(settings: UnitConvertSettings) -> Self {
        let (mut train, mut test) = (Vec::new(), Vec::new());
        let mut index = 0u64;
        for (from, to) in whole_pairs(&settings.families) {
            for value in 1..=settings.max_value {
                let p = Problem { value, from, to };
                if index.is_multiple_of(settings.test_every) {
                    test.push(p);
                } else {
                    train.push(p);
                }
                index += 1;
            }
        }
        UnitConvert {
            settings,
            train,
            test,
        }
    }

    fn split(&self, split: Split) -> &[Problem] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }
}

impl EnvDef for UnitConvert {
    const NAME: &'static str = "unit_convert";
    const SUMMARY: &'static str =
        "convert a quantity between units with a `convert` tool (multi-turn), graded on \\boxed{N}";
    type Settings = UnitConvertSettings;

    fn from_settings(settings: UnitConvertSettings) -> Result<Self, EnvError> {
        Ok(UnitConvert::new(settings))
    }
}

impl Environment for UnitConvert {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn max_turns(&self) -> u32 {
        self.settings.max_turns
    }

    fn num_examples(&self, split: Split) -> Result<Option<usize>, EnvError> {
        Ok(Some(self.split(split).len()))
    }

    fn example(&self, split: Split, seed: u64) -> Result<Example, EnvError> {
        let problems = self.split(split);
        let p = &problems[(seed % problems.len() as u64) as usize];
        Ok(Example {
            id: format!("{}-{}-{}", p.value, p.from.symbol, p.to.symbol),
            data: p.to_json(),
        })
    }

    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let p = Problem::from_json(example)?;
        let user = self
            .settings
            .prompt_template
            .replace("{question}", &p.question());
        let logic = ConvertEpisode {
            gold: p.answer().to_string(),
        };
        Ok(Episode::new(
            vec![Message::user(user)],
            vec![tool::spec()],
            self.settings.max_turns,
            Box::new(logic),
        ))
    }

    /// The worked conversation a warm start imitates: call the tool, read its reply, answer.
    fn reference_turns(&self, example: &Value) -> Result<Option<Vec<Message>>, EnvError> {
        let p = Problem::from_json(example)?;
        let answer = p.answer();
        let mut turns = Vec::with_capacity(3);
        if self.settings.max_turns > 1 {
            turns.push(Message::assistant(tool::call_text(
                p.value,
                p.from.symbol,
                p.to.symbol,
            )));
            turns.push(Message::tool(
                tool::TOOL_NAME,
                format!("{answer} {}", p.to.symbol),
            ));
        }
        turns.push(Message::assistant(format!("\\boxed{{{answer}}}")));
        Ok(Some(turns))
    }
}

/// The state of one episode: the gold answer (the tool itself is stateless).
struct ConvertEpisode {
    gold: String,
}

impl EpisodeLogic for ConvertEpisode {
    fn step(&mut self, assistant: &str, turn: Turn) -> Observation {
        let parsed = parse_tool_calls(assistant, 2);
        let mut info = Info {
            gold: Some(self.gold.clone()),
            ..Info::default()
        };
        info.extra.insert("turn".into(), json!(turn.index));
        if parsed.calls.is_empty() {
            let g = grade(assistant, &self.gold, FinalNumberRule::None);
            info.correct = g.correct;
            info.extracted = g.extracted;
            return Observation::finished(if g.correct { 1.0 } else { 0.0 }, info);
        }
        info.extra
            .insert("tool_calls".into(), json!(parsed.calls.len()));
        if turn.last {
            // A call with no turn left to read its reply: unanswered.
            info.truncated = true;
            return Observation::finished(0.0, info);
        }
        let messages = parsed
            .calls
            .iter()
            .map(|call| {
                let reply = match call {
                    Ok(c) => tool::run(c),
                    Err(e) => format!("error: {e}"),
                };
                Message::tool(tool::TOOL_NAME, reply)
            })
            .collect();
        Observation {
            messages,
            reward: 0.0,
            done: false,
            info,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_partition_the_problems_and_reference_turns_score_one() {
        let env = UnitConvert::new(UnitConvertSettings::default());
        // 10 whole pairs (6 length, 1 mass, 3 time) x 9 values.
        assert_eq!(env.train.len() + env.test.len(), 90);
        assert!(env.test.iter().all(|p| !env.train.contains(p)));
        for seed in 0..20 {
            let ex = env.example(Split::Train, seed).unwrap();
            let turns = env.reference_turns(&ex.data).unwrap().unwrap();
            let mut episode = env.reset(&ex.data).unwrap();
            let first = episode.step(&turns[0].content).unwrap();
            // The tool's reply is exactly the reference's tool message.
            assert_eq!(first.messages[0].content, turns[1].content);
            let last = episode.step(&turns[2].content).unwrap();
            assert!(
                last.done && last.info.correct && last.reward == 1.0,
                "{ex:?}"
            );
        }
    }
}
