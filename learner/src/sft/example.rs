//! Tokenised conversations, and the examples of each SFT step.
use std::path::Path;
use std::sync::Arc;

use alp_envs::Environment;
use alp_rollout::RolloutError;
use alp_tokenizer::Tokenizer;
use serde_json::{Map, Value};

use super::conversation::{env_pair, read_jsonl, SftPair};
use super::error::SftDataError;
use crate::batch::Sample;

/// One tokenised conversation: `ids = prompt ++ turns`, `loss_mask[i]` true on the assistant's tokens
/// (and the EOS ending each assistant turn), false on the prompt and the environment's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<i64>,
    pub loss_mask: Vec<bool>,
    /// Tokens of the rendered prompt (chat template with the generation prompt).
    pub prompt_len: usize,
}

impl SftExample {
    /// The learner's sample view (completion = everything after the prompt), so packing and log-probs
    /// are shared with RL.
    pub fn to_sample(&self) -> Sample {
        let completion = self.ids[self.prompt_len..].to_vec();
        Sample {
            mu: vec![0.0; completion.len()],
            loss_mask: self.loss_mask[self.prompt_len..].to_vec(),
            prompt_ids: self.ids[..self.prompt_len].to_vec(),
            completion_ids: completion,
            reward: 0.0,
            policy_version: 0,
        }
    }
}

/// Tokenises `pair` exactly as the episode runner records an episode in which the policy wrote its
/// assistant turns: the prompt rendered with the generation prompt, each assistant turn followed by the
/// EOS the engine stops on (trained on), the other messages as the chat template renders them (not
/// trained on).
pub fn encode_pair(
    tokenizer: &Tokenizer,
    pair: &SftPair,
    extra: &Map<String, Value>,
) -> Result<SftExample, RolloutError> {
    let c = alp_rollout::encode_conversation(
        tokenizer,
        &pair.messages,
        &pair.tools,
        &pair.turns,
        extra,
    )?;
    let prompt_len = c.prompt_ids.len();
    let mut loss_mask = vec![false; prompt_len];
    loss_mask.extend(c.loss_mask.iter().map(|&m| m == 1));
    let mut ids = c.prompt_ids;
    ids.extend(c.completion_ids);
    Ok(SftExample {
        ids,
        loss_mask,
        prompt_len,
    })
}

/// [`encode_pair`], with errors naming where the pair comes from.
fn encode(
    tokenizer: &Tokenizer,
    origin: &str,
    pair: &SftPair,
    extra: &Map<String, Value>,
) -> Result<SftExample, SftDataError> {
    encode_pair(tokenizer, pair, extra).map_err(|source| SftDataError::Encode {
        origin: origin.to_string(),
        source,
    })
}

/// Where the examples come from.
pub enum SftSource {
    /// Worked conversations of an environment's train split; example `i` is the one of seed `i`.
    Env(Arc<dyn Environment>),
    /// Rows of a JSONL file, tokenised once when loaded, cycled in order.
    Rows(Vec<SftExample>),
}

impl SftSource {
    /// The rows of a JSONL file ([`read_jsonl`]), tokenised.
    pub fn from_file(
        path: &Path,
        tokenizer: &Tokenizer,
        extra: &Map<String, Value>,
    ) -> Result<Self, SftDataError> {
        Self::from_rows(read_jsonl(path)?, tokenizer, extra)
    }

    /// Tokenises every row (`path:line`, pair) once, so a bad row stops the run before its first step,
    /// named by its line.
    pub fn from_rows(
        rows: Vec<(String, SftPair)>,
        tokenizer: &Tokenizer,
        extra: &Map<String, Value>,
    ) -> Result<Self, SftDataError> {
        rows.iter()
            .map(|(origin, pair)| encode(tokenizer, origin, pair, extra))
            .collect::<Result<_, _>>()
            .map(SftSource::Rows)
    }

    /// Example number `index`, tokenised: a pure function of the index, so a run is reproducible; an
    /// error names the environment's example.
    pub fn example(
        &self,
        index: u64,
        tokenizer: &Tokenizer,
        extra: &Map<String, Value>,
    ) -> Result<SftExample, SftDataError> {
        match self {
            SftSource::Rows(rows) => Ok(rows[(index % rows.len() as u64) as usize].clone()),
            SftSource::Env(env) => {
                let (origin, pair) = env_pair(env.as_ref(), index)?;
                encode(tokenizer, &origin, &pair, extra)
            }
        }
    }

    /// The `batch_size` examples of step `step` (1-based) of a run seeded with `seed`: consecutive
    /// indices, offset by the seed so different seeds see different problems in a different order.
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        batch_size: usize,
        tokenizer: &Tokenizer,
        extra: &Map<String, Value>,
    ) -> Result<Vec<SftExample>, SftDataError> {
        let offset = seed.wrapping_mul(1_000_003);
        (0..batch_size as u64)
            .map(|i| {
                let index = offset.wrapping_add((step - 1) * batch_size as u64 + i);
                self.example(index, tokenizer, extra)
            })
            .collect()
    }
}

/// Reads and tokenises every row of the JSONL file at `path`, refusing a bad row, or one longer than
/// the model's `context`, by its `file:line` (so a run can check its data before writing anything).
pub fn check_file(
    path: &Path,
    tokenizer: &Tokenizer,
    extra: &Map<String, Value>,
    context: usize,
) -> Result<(), SftDataError> {
    for (origin, pair) in read_jsonl(path)? {
        let ex = encode(tokenizer, &origin, &pair, extra)?;
        if ex.ids.len() > context {
            return Err(SftDataError::TooLong {
                origin,
                tokens: ex.ids.len(),
                context,
            });
        }
    }
    Ok(())
}
