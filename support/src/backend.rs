//! A `GenerationBackend` that replies with scripted text instead of sampling, for tests of what the
//! rollout does around generation (episodes, masks, evaluation).
use alp_rollout::{
    Completion, FinishReason, GenerationBackend, GenerationRequest, RolloutError, SamplingParams,
};
use alp_tokenizer::Tokenizer;

/// The text for row `row` of generate call number `call` (both from 0).
type Reply = Box<dyn FnMut(usize, usize) -> String>;

/// Completes every request with its scripted text, tokenised without special tokens and ended with
/// EOS, every token with log-prob [`ScriptedBackend::logprob`] and finish reason `Stop`.
pub struct ScriptedBackend {
    tokenizer: Tokenizer,
    reply: Reply,
    /// The requests of every call so far, in order.
    pub calls: Vec<Vec<GenerationRequest>>,
    /// The log-prob recorded for every generated token.
    pub logprob: f32,
    /// The policy version reported and stamped on every completion.
    pub policy_version: u64,
    /// What `max_context` reports (a model's context, for the token budget tests).
    pub context: Option<usize>,
}

impl ScriptedBackend {
    /// Replies to call `t` with `replies[t]` on every row (one call per turn of an episode); a call
    /// past the script panics.
    pub fn per_turn(tokenizer: Tokenizer, replies: Vec<String>) -> Self {
        Self::new(tokenizer, Box::new(move |call, _| replies[call].clone()))
    }

    /// Replies to request `i` of each call with `reply(i)`.
    pub fn per_row(tokenizer: Tokenizer, mut reply: impl FnMut(usize) -> String + 'static) -> Self {
        Self::new(tokenizer, Box::new(move |_, row| reply(row)))
    }

    fn new(tokenizer: Tokenizer, reply: Reply) -> Self {
        Self {
            tokenizer,
            reply,
            calls: Vec::new(),
            logprob: 0.0,
            policy_version: 0,
            context: None,
        }
    }

    fn tokens(&self, text: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .tokenizer
            .encode(text, false)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        ids.push(i64::from(self.tokenizer.eos_token_id().unwrap()));
        ids
    }
}

impl GenerationBackend for ScriptedBackend {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        _: &SamplingParams,
    ) -> Result<Vec<Completion>, RolloutError> {
        let call = self.calls.len();
        self.calls.push(requests.to_vec());
        let texts: Vec<String> = (0..requests.len())
            .map(|row| (self.reply)(call, row))
            .collect();
        Ok(requests
            .iter()
            .zip(&texts)
            .map(|(r, text)| {
                let ids = self.tokens(text);
                Completion {
                    prompt_ids: r.prompt_ids.clone(),
                    logprobs: vec![self.logprob; ids.len()],
                    completion_ids: ids,
                    finish_reason: FinishReason::Stop,
                    policy_version: self.policy_version,
                }
            })
            .collect())
    }

    fn policy_version(&self) -> u64 {
        self.policy_version
    }

    fn max_context(&self) -> Option<usize> {
        self.context
    }
}
