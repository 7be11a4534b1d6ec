//! The `Environment` trait and the episode it starts. Environments work on chat messages and text only:
//! tokenisation, chat templates and loss masks belong to the rollout.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::EnvError;
use crate::message::{Message, ToolSpec};

alp_macros::string_enum! {
    /// Which part of an environment's problems to draw from. Held-out (`Test`) problems never appear in `Train`.
    pub enum Split: "split" {
        Train => "train",
        Test => "test",
    }
}

/// One problem: a stable id (for logs) and the data an environment needs to start and score an episode (a
/// dataset row, or a generated problem with its gold answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub data: Value,
}

/// What an environment says about one step, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The final answer was right (false until the episode ends).
    pub correct: bool,
    /// The answer found in the model's text, if any.
    pub extracted: Option<String>,
    /// The gold answer, when the environment has one.
    pub gold: Option<String>,
    /// The episode was cut by `max_turns` before the model answered.
    pub truncated: bool,
    /// Environment-specific details (tool calls made, why an answer was refused, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The environment's reaction to one assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Messages to append after the assistant's (tool results, feedback); empty when the episode ends.
    pub messages: Vec<Message>,
    pub reward: f64,
    pub done: bool,
    pub info: Info,
}

impl Observation {
    /// The end of an episode with the given verdict.
    pub fn finished(reward: f64, info: Info) -> Self {
        Observation {
            messages: Vec::new(),
            reward,
            done: true,
            info,
        }
    }
}

/// Position of a step in its episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// 0 for the first assistant message.
    pub index: u32,
    /// No further turn will be allowed after this one: the episode must end here.
    pub last: bool,
}

/// The per-episode logic an environment supplies. [`Episode`] wraps it and enforces the turn bound.
pub trait EpisodeLogic: Send {
    fn step(&mut self, assistant: &str, turn: Turn) -> Observation;
}

/// Scores the one and only turn of a single-turn episode.
struct SingleTurn<F>(Option<F>);

impl<F: FnOnce(&str) -> Observation + Send> EpisodeLogic for SingleTurn<F> {
    fn step(&mut self, assistant: &str, _turn: Turn) -> Observation {
        match self.0.take() {
            Some(judge) => judge(assistant),
            None => Observation::finished(0.0, Info::default()),
        }
    }
}

/// A running episode: its initial messages, the tools offered, and the state that reacts to assistant messages.
pub struct Episode {
    /// The prompt: system and user messages to render before the first assistant turn.
    pub messages: Vec<Message>,
    /// Tools the model may call (JSON-schema specs, as chat templates print them); empty for most environments.
    pub tools: Vec<ToolSpec>,
    logic: Box<dyn EpisodeLogic>,
    max_turns: u32,
    turns: u32,
    done: bool,
}

impl std::fmt::Debug for Episode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Episode")
            .field("messages", &self.messages)
            .field("tools", &self.tools)
            .field("max_turns", &self.max_turns)
            .field("turns", &self.turns)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Episode {
    pub fn new(
        messages: Vec<Message>,
        tools: Vec<ToolSpec>,
        max_turns: u32,
        logic: Box<dyn EpisodeLogic>,
    ) -> Self {
        Episode {
            messages,
            tools,
            logic,
            max_turns: max_turns.max(1),
            turns: 0,
            done: false,
        }
    }

    /// An episode that ends after one assistant message, judged by `judge`.
    pub fn single_turn(
        messages: Vec<Message>,
        judge: impl FnOnce(&str) -> Observation + Send + 'static,
    ) -> Self {
        Self::new(messages, Vec::new(), 1, Box::new(SingleTurn(Some(judge))))
    }

    /// Feeds one assistant message (its text, tool calls included as written). After `max_turns` steps the
    /// episode is done whatever the logic says, and stepping a done episode is an error.
    pub fn step(&mut self, assistant: &str) -> Result<Observation, EnvError> {
        if self.done {
            return Err(EnvError::EpisodeDone);
        }
        let turn = Turn {
            index: self.turns,
            last: self.turns + 1 >= self.max_turns,
        };
        self.turns += 1;
        let mut obs = self.logic.step(assistant, turn);
        if turn.last && !obs.done {
            obs.done = true;
            obs.info.truncated = true;
            obs.messages.clear();
        }
        self.done = obs.done;
        Ok(obs)
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Assistant messages consumed so far.
    pub fn turns(&self) -> u32 {
        self.turns
    }

    pub fn max_turns(&self) -> u32 {
        self.max_turns
    }
}

/// The verdict on one completion, as `alp-rl env score` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResult {
    pub reward: f64,
    pub correct: bool,
    pub extracted: Option<String>,
}

/// An environment: a source of problems and the rules that judge the model's messages. Shared between rollout
/// workers (`Send + Sync`); per-episode state lives in the [`Episode`] that `reset` returns.
pub trait Environment: Send + Sync {
    /// The registered name.
    fn name(&self) -> &str;

    /// The most assistant messages an episode takes.
    fn max_turns(&self) -> u32 {
        1
    }

    /// How many problems a split holds: `Some(n)` for a dataset, `None` for a generator (unbounded).
    fn num_examples(&self, split: Split) -> Result<Option<usize>, EnvError>;

    /// The problem a seed stands for: a dataset returns row `seed mod n`; a generator builds one from the seed.
    /// The same (split, seed) always gives the same example.
    fn example(&self, split: Split, seed: u64) -> Result<Example, EnvError>;

    /// Starts an episode on `example` (an [`Example::data`], or a raw dataset row).
    fn reset(&self, example: &Value) -> Result<Episode, EnvError>;

    /// Judges a finished completion against `example` without running an episode (for `env score` and
    /// evaluation). The default plays a single-turn episode.
    fn score(&self, example: &Value, completion: &str) -> Result<ScoreResult, EnvError> {
        let mut episode = self.reset(example)?;
        let obs = episode.step(completion)?;
        Ok(ScoreResult {
            reward: obs.reward,
            correct: obs.info.correct,
            extracted: obs.info.extracted,
        })
    }

    /// A correct worked answer for `example`, for supervised warm starts; `None` when the environment has none.
    fn reference_completion(&self, _example: &Value) -> Result<Option<String>, EnvError> {
        Ok(None)
    }

    /// A correct worked conversation for `example`, for supervised warm starts: the messages that follow
    /// the prompt, alternating assistant turns (their text as the model would write it, tool calls
    /// included) with the environment's replies to them, ending with the assistant's final answer. Stepping
    /// an episode of `example` with the assistant turns yields exactly the replies listed and a correct end.
    /// The default is [`Environment::reference_completion`] as one assistant message; multi-turn
    /// environments override it to demonstrate their tools.
    fn reference_turns(&self, example: &Value) -> Result<Option<Vec<Message>>, EnvError> {
        Ok(self
            .reference_completion(example)?
            .map(|answer| vec![Message::assistant(answer)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl EpisodeLogic for Echo {
        fn step(&mut self, assistant: &str, _turn: Turn) -> Observation {
            Observation {
                messages: vec![Message::user(assistant)],
                reward: 0.0,
                done: false,
                info: Info::default(),
            }
        }
    }

    #[test]
    fn turn_bound_is_enforced() {
        let mut ep = Episode::new(vec![Message::user("hi")], Vec::new(), 2, Box::new(Echo));
        let o1 = ep.step("a").unwrap();
        assert!(!o1.done && o1.messages.len() == 1);
        let o2 = ep.step("b").unwrap();
        assert!(o2.done && o2.info.truncated && o2.messages.is_empty());
        assert!(matches!(ep.step("c"), Err(EnvError::EpisodeDone)));
        assert_eq!(ep.turns(), 2);
    }

    #[test]
    fn single_turn_episode() {
        let mut ep = Episode::single_turn(vec![Message::user("2+2?")], |t: &str| {
            let correct = t.trim() == "4";
            Observation::finished(
                if correct { 1.0 } else { 0.0 },
                Info {
                    correct,
                    ..Info::default()
                },
            )
        });
        let o = ep.step("4").unwrap();
        assert!(o.done && o.info.correct && o.reward == 1.0 && !o.info.truncated);
        assert!(ep.is_done());
    }
}
