//! The sync probe: fixed prompts completed greedily by a server must give the tokens and log-probs
//! our forward gives on the weights the learner just published.
//!
//! The reference is computed once per sync from the learner's model (full forwards, no KV cache) and
//! kept, so a server that comes back later is checked against the same numbers without the model.
//! Greedy decoding on two implementations can part at a near tie; such a step is accepted when the
//! server took our runner-up, the two are within the tolerance of each other in our forward, and the
//! server's log-prob matches ours for that token. Comparison of that row stops there, since the
//! continuations differ. Anything else is a mismatch.
use alp_policy::{CausalLM, ForwardHooks, NoHooks};
use alp_rollout::ProbeReport;
use tch::{Kind, Tensor};

use crate::error::VllmError;

/// Probe prompts are this long.
const PROMPT_LEN: usize = 8;

/// The fixed probe prompts: spread over the vocabulary, different per row, the same for every sync.
pub fn probe_prompts(vocab: i64, count: usize) -> Vec<Vec<i64>> {
    (0..count)
        .map(|p| {
            (0..PROMPT_LEN)
                .map(|i| ((i as i64 + 1) * 7919 + p as i64 * 104_729 + 13).rem_euclid(vocab))
                .collect()
        })
        .collect()
}

/// Our greedy continuation of one probe prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceRow {
    pub prompt: Vec<i64>,
    pub tokens: Vec<i64>,
    /// `log_softmax(logits)` of each token (what a greedy vLLM row returns).
    pub logprobs: Vec<f32>,
    /// The second most likely token at each step and its log-prob.
    pub runner_up: Vec<(i64, f32)>,
}

/// The expected probe answers for one weight version.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReference {
    pub version: u64,
    pub rows: Vec<ReferenceRow>,
}

/// What a server returned for one probe prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeAnswer {
    pub tokens: Vec<i64>,
    pub logprobs: Vec<f32>,
}

/// How far a server may be from us.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub max_abs: f64,
    pub mean_abs: f64,
}

impl ProbeReference {
    /// Greedy-decodes `prompts` for `tokens` steps with `model`.
    pub fn compute(model: &CausalLM, version: u64, prompts: &[Vec<i64>], tokens: usize) -> Self {
        Self::compute_with(model, &NoHooks, version, prompts, tokens)
    }

    /// [`ProbeReference::compute`] with `hooks` on every forward (a LoRA adapter the servers apply).
    pub fn compute_with(
        model: &CausalLM,
        hooks: &dyn ForwardHooks,
        version: u64,
        prompts: &[Vec<i64>],
        tokens: usize,
    ) -> Self {
        let _guard = tch::no_grad_guard();
        let device = model.device();
        let rows = prompts.len() as i64;
        let width = prompts.first().map_or(0, Vec::len);
        assert!(
            prompts.iter().all(|p| p.len() == width),
            "probe prompts share one length"
        );
        let flat: Vec<i64> = prompts.concat();
        let mut ids = Tensor::from_slice(&flat)
            .view([rows, width as i64])
            .to_device(device);
        let mut out: Vec<ReferenceRow> = prompts
            .iter()
            .map(|p| ReferenceRow {
                prompt: p.clone(),
                tokens: Vec::new(),
                logprobs: Vec::new(),
                runner_up: Vec::new(),
            })
            .collect();
        for _ in 0..tokens {
            let logits = model.forward(&ids, None, hooks);
            let last = logits.select(1, -1).to_kind(Kind::Float);
            let (values, indices) = last.log_softmax(-1, Kind::Float).topk(2, -1, true, true);
            let values = Vec::<f32>::try_from(values.to_device(tch::Device::Cpu).view([-1]))
                .expect("f32 log-probs");
            let indices = Vec::<i64>::try_from(indices.to_device(tch::Device::Cpu).view([-1]))
                .expect("int64 tokens");
            for (r, row) in out.iter_mut().enumerate() {
                row.tokens.push(indices[2 * r]);
                row.logprobs.push(values[2 * r]);
                row.runner_up.push((indices[2 * r + 1], values[2 * r + 1]));
            }
            let next: Vec<i64> = out.iter().map(|r| *r.tokens.last().unwrap()).collect();
            let next = Tensor::from_slice(&next).view([rows, 1]).to_device(device);
            ids = Tensor::cat(&[ids, next], 1);
        }
        ProbeReference { version, rows: out }
    }

    /// Compares a server's answers, one per row, with the reference.
    pub fn compare(
        &self,
        server: &str,
        answers: &[ProbeAnswer],
        tolerance: Tolerance,
    ) -> Result<ProbeReport, VllmError> {
        let mismatch = |problem: String| VllmError::SyncMismatch {
            server: server.to_string(),
            version: self.version,
            problem,
        };
        if answers.len() != self.rows.len() {
            return Err(mismatch(format!(
                "{} probe answers for {} prompts",
                answers.len(),
                self.rows.len()
            )));
        }
        let mut diffs: Vec<f64> = Vec::new();
        for (p, (row, answer)) in self.rows.iter().zip(answers).enumerate() {
            if answer.tokens.len() != row.tokens.len() || answer.logprobs.len() != row.tokens.len()
            {
                return Err(mismatch(format!(
                    "probe prompt {p}: {} tokens and {} log-probs for {} asked (the server stopped \
                     early: does its generation config add stop tokens? launch it with \
                     --generation-config vllm)",
                    answer.tokens.len(),
                    answer.logprobs.len(),
                    row.tokens.len()
                )));
            }
            for i in 0..row.tokens.len() {
                let (theirs, their_lp) = (answer.tokens[i], answer.logprobs[i] as f64);
                if theirs == row.tokens[i] {
                    let d = (their_lp - row.logprobs[i] as f64).abs();
                    if d > tolerance.max_abs {
                        return Err(mismatch(format!(
                            "probe prompt {p} token {i} ({theirs}): log-prob {their_lp:.6} on the \
                             server, {:.6} in our forward on the same weights (|diff| {d:.2e} > \
                             {:.1e})",
                            row.logprobs[i], tolerance.max_abs
                        )));
                    }
                    diffs.push(d);
                    continue;
                }
                let (second, second_lp) = row.runner_up[i];
                let margin = (row.logprobs[i] - second_lp) as f64;
                let d = (their_lp - second_lp as f64).abs();
                if theirs == second && margin <= tolerance.max_abs && d <= tolerance.max_abs {
                    // A near tie went the other way; the continuations differ from here.
                    diffs.push(d);
                    break;
                }
                return Err(mismatch(format!(
                    "probe prompt {p} token {i}: the server chose {theirs} (log-prob \
                     {their_lp:.6}) where our forward on the same weights chooses {} (log-prob \
                     {:.6}, {margin:.2e} above the runner-up {second})",
                    row.tokens[i], row.logprobs[i]
                )));
            }
        }
        let n = diffs.len();
        let max = diffs.iter().copied().fold(0.0, f64::max);
        let mean = diffs.iter().sum::<f64>() / n.max(1) as f64;
        if mean > tolerance.mean_abs {
            return Err(mismatch(format!(
                "mean |log-prob diff| over {n} probe tokens is {mean:.2e} (> {:.1e}): the served \
                 weights are not the learner's (a tensor not reloaded, a stale LM head, a wrong \
                 dtype?)",
                tolerance.mean_abs
            )));
        }
        Ok(ProbeReport {
            replica: server.to_string(),
            tokens_compared: n,
            max_abs_logprob_diff: max,
            mean_abs_logprob_diff: mean,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> ProbeReference {
        ProbeReference {
            version: 3,
            rows: vec![ReferenceRow {
                prompt: vec![1, 2],
                tokens: vec![5, 6, 7],
                logprobs: vec![-0.5, -1.0, -0.7],
                runner_up: vec![(9, -2.0), (8, -1.00001), (4, -3.0)],
            }],
        }
    }

    const TOL: Tolerance = Tolerance {
        max_abs: 1e-3,
        mean_abs: 1e-4,
    };

    fn answer(tokens: Vec<i64>, logprobs: Vec<f32>) -> Vec<ProbeAnswer> {
        vec![ProbeAnswer { tokens, logprobs }]
    }

    #[test]
    fn equal_answers_pass_and_report_their_differences() {
        let r = reference()
            .compare("s", &answer(vec![5, 6, 7], vec![-0.5, -1.0, -0.7001]), TOL)
            .unwrap();
        assert_eq!(r.tokens_compared, 3);
        assert!((r.max_abs_logprob_diff - 1e-4).abs() < 1e-6);
    }

    #[test]
    fn a_near_tie_may_go_the_other_way_but_nothing_else_may() {
        // Step 1: 6 and 8 are 1e-5 apart; the server took 8 with our log-prob for 8.
        let r = reference()
            .compare("s", &answer(vec![5, 8, 3], vec![-0.5, -1.00001, -9.0]), TOL)
            .unwrap();
        assert_eq!(r.tokens_compared, 2);
        // Step 0 is no tie (margin 1.5).
        let e = reference()
            .compare("s", &answer(vec![9, 6, 7], vec![-2.0, -1.0, -0.7]), TOL)
            .unwrap_err();
        assert!(e.to_string().contains("chose 9"), "{e}");
    }

    #[test]
    fn a_shift_on_every_token_fails_the_mean() {
        // Each token 5e-4 off: within the per-token bound, far above the mean bound.
        let e = reference()
            .compare(
                "s",
                &answer(vec![5, 6, 7], vec![-0.5005, -1.0005, -0.7005]),
                TOL,
            )
            .unwrap_err();
        assert!(e.to_string().contains("mean |log-prob diff|"), "{e}");
        let short = reference()
            .compare("s", &answer(vec![5], vec![-0.5]), TOL)
            .unwrap_err();
        assert!(short.to_string().contains("stopped early"), "{short}");
    }
}
