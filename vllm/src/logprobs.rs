//! What vLLM's returned log-probs mean, and whether they can mean what the rollout records.
//!
//! vLLM 0.32's sampler (`v1/sample/sampler.py`, `ops/topk_topp_sampler.py`) computes the log-prob of
//! a sampled token either from the raw logits (`--logprobs-mode raw_logprobs`, the default:
//! `log_softmax(logits)`) or after temperature, top-k and top-p (`processed_logprobs`:
//! `log_softmax(top_p(top_k(logits / T)))`, renormalised over the kept tokens). Greedy rows get
//! `log_softmax(logits)` in both. Our [`LogprobMode`]s map onto them as follows:
//!
//! ```text
//! ours          processed_logprobs server          raw_logprobs server
//! temperature   exact without top-p/top-k           exact at T = 1
//! raw           exact at T = 1 without top-p/top-k  exact
//! sampling      exact                               exact at T = 1 without top-p/top-k
//! greedy        exact                               exact
//! ```
//!
//! Anything else is refused: the learner would compare its log-probs with different numbers.
use alp_rollout::{LogprobMode, SamplingParams};

/// vLLM's `--logprobs-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerLogprobsMode {
    RawLogprobs,
    ProcessedLogprobs,
    RawLogits,
    ProcessedLogits,
}

impl ServerLogprobsMode {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "raw_logprobs" => ServerLogprobsMode::RawLogprobs,
            "processed_logprobs" => ServerLogprobsMode::ProcessedLogprobs,
            "raw_logits" => ServerLogprobsMode::RawLogits,
            "processed_logits" => ServerLogprobsMode::ProcessedLogits,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServerLogprobsMode::RawLogprobs => "raw_logprobs",
            ServerLogprobsMode::ProcessedLogprobs => "processed_logprobs",
            ServerLogprobsMode::RawLogits => "raw_logits",
            ServerLogprobsMode::ProcessedLogits => "processed_logits",
        }
    }

    /// The mode a launched server gets for a rollout recording `mode`: the one that matches it for
    /// every temperature it can match at all.
    pub fn for_rollout(mode: LogprobMode) -> Self {
        match mode {
            LogprobMode::Raw => ServerLogprobsMode::RawLogprobs,
            LogprobMode::Temperature | LogprobMode::Sampling => {
                ServerLogprobsMode::ProcessedLogprobs
            }
        }
    }
}

/// Why a server in `server` mode cannot return the log-probs `params` asks for; `None` when it can.
pub fn incompatibility(server: ServerLogprobsMode, params: &SamplingParams) -> Option<String> {
    use ServerLogprobsMode::*;
    if matches!(server, RawLogits | ProcessedLogits) {
        return Some(format!(
            "it runs with --logprobs-mode {}, which returns logits, not log-probs; restart it with \
             --logprobs-mode {}",
            server.as_str(),
            ServerLogprobsMode::for_rollout(params.logprob_mode).as_str()
        ));
    }
    if params.greedy {
        return None;
    }
    let unit_t = params.temperature == 1.0;
    let truncated = params.top_p < 1.0 || params.top_k > 0;
    let ok = match (params.logprob_mode, server) {
        (LogprobMode::Temperature, ProcessedLogprobs) => !truncated,
        (LogprobMode::Temperature, _) => unit_t,
        (LogprobMode::Raw, ProcessedLogprobs) => unit_t && !truncated,
        (LogprobMode::Raw, _) => true,
        (LogprobMode::Sampling, ProcessedLogprobs) => true,
        (LogprobMode::Sampling, _) => unit_t && !truncated,
    };
    if ok {
        return None;
    }
    let ours = match params.logprob_mode {
        LogprobMode::Temperature => "log_softmax(logits / T), untruncated",
        LogprobMode::Raw => "log_softmax(logits)",
        LogprobMode::Sampling => "log_softmax(top_p(top_k(logits / T)))",
    };
    let theirs = match server {
        ProcessedLogprobs => "log_softmax(top_p(top_k(logits / T)))",
        _ => "log_softmax(logits)",
    };
    let fix = match params.logprob_mode {
        LogprobMode::Temperature => {
            "vLLM has no mode for untruncated log-probs at T != 1 with top-p/top-k: use top_p = 1 \
             and top_k = 0 (on a processed_logprobs server), or temperature = 1 (on a raw_logprobs \
             server)"
        }
        LogprobMode::Raw => "restart the server with --logprobs-mode raw_logprobs",
        LogprobMode::Sampling => "restart the server with --logprobs-mode processed_logprobs",
    };
    Some(format!(
        "it runs with --logprobs-mode {} and returns {theirs}, but logprob_mode = {:?} with \
         temperature = {}, top_p = {}, top_k = {} records {ours}: the learner's ratios would \
         compare different quantities; {fix}",
        server.as_str(),
        params.logprob_mode,
        params.temperature,
        params.top_p,
        params.top_k
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerLogprobsMode::*;

    fn params(mode: LogprobMode, temperature: f64, top_p: f64, top_k: i64) -> SamplingParams {
        SamplingParams {
            logprob_mode: mode,
            temperature,
            top_p,
            top_k,
            ..Default::default()
        }
    }

    /// The table of the module docs, cell by cell, from the definitions: a server mode matches ours
    /// when both reduce to the same formula under the given (T, truncation).
    #[test]
    fn compatibility_follows_the_formulas() {
        let formula = |mode: LogprobMode, server: ServerLogprobsMode, t: f64, trunc: bool| {
            // (divides by T, truncates) of each side; T = 1 makes "divides" moot, no truncation
            // makes "truncates" moot.
            let ours = match mode {
                LogprobMode::Temperature => (true, false),
                LogprobMode::Raw => (false, false),
                LogprobMode::Sampling => (true, true),
            };
            let theirs = match server {
                ProcessedLogprobs => (true, true),
                _ => (false, false),
            };
            (ours.0 == theirs.0 || t == 1.0) && (ours.1 == theirs.1 || !trunc)
        };
        for mode in [
            LogprobMode::Temperature,
            LogprobMode::Raw,
            LogprobMode::Sampling,
        ] {
            for server in [RawLogprobs, ProcessedLogprobs] {
                for t in [1.0, 0.7] {
                    for (top_p, top_k) in [(1.0, 0), (0.9, 0), (1.0, 5)] {
                        let p = params(mode, t, top_p, top_k);
                        let trunc = top_p < 1.0 || top_k > 0;
                        assert_eq!(
                            incompatibility(server, &p).is_none(),
                            formula(mode, server, t, trunc),
                            "{mode:?} {server:?} T={t} top_p={top_p} top_k={top_k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn greedy_always_matches_and_logits_modes_never() {
        let greedy = SamplingParams {
            greedy: true,
            top_p: 0.5,
            ..Default::default()
        };
        assert!(incompatibility(RawLogprobs, &greedy).is_none());
        assert!(incompatibility(ProcessedLogprobs, &greedy).is_none());
        assert!(incompatibility(RawLogits, &greedy).is_some());
        let why = incompatibility(
            ProcessedLogprobs,
            &params(LogprobMode::Temperature, 0.7, 0.9, 0),
        )
        .unwrap();
        assert!(why.contains("top_p = 1"), "{why}");
    }

    #[test]
    fn launched_servers_match_their_rollout_mode_at_default_settings() {
        for mode in [
            LogprobMode::Temperature,
            LogprobMode::Raw,
            LogprobMode::Sampling,
        ] {
            let server = ServerLogprobsMode::for_rollout(mode);
            let p = params(
                mode,
                if mode == LogprobMode::Raw { 1.0 } else { 0.7 },
                1.0,
                0,
            );
            assert!(incompatibility(server, &p).is_none(), "{mode:?}");
        }
    }
}
