//! The bookkeeping of the engine's decode loop: each request's progress ([`RowState`]), the rows
//! decoding together with their aligned per-row buffers ([`DecodeBatch`]), and newly prefilled
//! requests waiting to join them ([`Prefilled`]).
use std::collections::VecDeque;

use alp_policy::KvCache;
use tch::{Kind, Tensor};

use crate::backend::{FinishReason, GenerationRequest};
use crate::sampling::{RowSampler, SamplingParams};

/// One request's progress through the decode loop.
pub(crate) struct RowState {
    pub(crate) request: usize,
    pub(crate) limit: usize,
    pub(crate) stop: Vec<i64>,
    pub(crate) ids: Vec<i64>,
    pub(crate) logprobs: Vec<f32>,
    pub(crate) finish: Option<FinishReason>,
    /// RoPE position of the next token fed (real tokens so far).
    pub(crate) next_pos: i64,
    /// Cache column the next token fed is written to.
    pub(crate) column: i64,
}

impl RowState {
    pub(crate) fn new(request: usize, r: &GenerationRequest, params: &SamplingParams) -> Self {
        RowState {
            request,
            limit: r.max_new_tokens.unwrap_or(params.max_new_tokens),
            stop: r
                .stop_token_ids
                .clone()
                .unwrap_or_else(|| params.stop_token_ids.clone()),
            ids: Vec::new(),
            logprobs: Vec::new(),
            finish: None,
            next_pos: r.prompt_ids.len() as i64,
            column: 0,
        }
    }

    /// Records a sampled token; returns whether the row goes on.
    pub(crate) fn push(&mut self, token: i64, logprob: f32) -> bool {
        self.ids.push(token);
        self.logprobs.push(logprob);
        if self.stop.contains(&token) {
            self.finish = Some(FinishReason::Stop);
        } else if self.ids.len() >= self.limit {
            self.finish = Some(FinishReason::Length);
        }
        self.finish.is_none()
    }
}

/// The rows decoding together and every per-row buffer, aligned: row `k` of the cache, of
/// `key_valid`, of `last_hidden` and of the sampler is `rows[k]`.
pub(crate) struct DecodeBatch {
    pub(crate) rows: Vec<RowState>,
    pub(crate) cache: KvCache,
    /// `[rows, capacity]` bool: which cache columns of each row hold real tokens.
    pub(crate) key_valid: Tensor,
    /// `[rows, 1, hidden]`: the final hidden state whose logits pick each row's next token.
    pub(crate) last_hidden: Tensor,
    pub(crate) sampler: RowSampler,
}

impl DecodeBatch {
    /// Takes the rows at batch indices `gone` out of every per-row buffer and returns them (in batch
    /// order), so the remaining rows run faster.
    pub(crate) fn remove_rows(&mut self, gone: &[usize]) -> Vec<RowState> {
        if gone.is_empty() {
            return Vec::new();
        }
        let keep: Vec<usize> = (0..self.rows.len()).filter(|k| !gone.contains(k)).collect();
        self.sampler.retain_rows(&keep);
        let (kept, removed): (Vec<_>, Vec<_>) = self
            .rows
            .drain(..)
            .enumerate()
            .partition(|(k, _)| !gone.contains(k));
        self.rows = kept.into_iter().map(|(_, r)| r).collect();
        if !keep.is_empty() {
            let index: Vec<i64> = keep.iter().map(|&k| k as i64).collect();
            let index = Tensor::from_slice(&index).to_device(self.key_valid.device());
            self.cache.select_rows(&index);
            self.key_valid = self.key_valid.index_select(0, &index);
            self.last_hidden = self.last_hidden.index_select(0, &index);
        }
        removed.into_iter().map(|(_, r)| r).collect()
    }
}

/// Newly admitted requests, prefilled together: their cache, final hidden states and key masks.
pub(crate) struct Prefilled {
    pub(crate) cache: KvCache,
    pub(crate) width: i64,
    pub(crate) last_hidden: Tensor,
    /// `[n, width]` bool.
    pub(crate) valid: Tensor,
}

impl Prefilled {
    /// The newcomers' key masks over a cache of `capacity` columns.
    pub(crate) fn key_valid(&self, capacity: i64) -> Tensor {
        let n = self.valid.size()[0];
        let out = Tensor::zeros([n, capacity], (Kind::Bool, self.valid.device()));
        out.narrow(1, 0, self.width).copy_(&self.valid);
        out
    }
}

/// The prefill cache of newcomers only needs their prompts.
pub(crate) fn pre_capacity(admit: &[usize], requests: &[GenerationRequest]) -> i64 {
    admit
        .iter()
        .map(|&i| requests[i].prompt_ids.len())
        .max()
        .unwrap_or(1) as i64
}

/// Up to `n` requests from the front of the queue.
pub(crate) fn pop_front_n(waiting: &mut VecDeque<usize>, n: usize) -> Vec<usize> {
    let n = n.min(waiting.len());
    waiting.drain(..n).collect()
}

/// Files a finished row under its request.
pub(crate) fn retire(done: &mut [Option<RowState>], first: usize, row: RowState) {
    let i = row.request - first;
    done[i] = Some(row);
}

pub(crate) fn requests_of(rows: &[RowState]) -> Vec<usize> {
    rows.iter().map(|r| r.request).collect()
}

pub(crate) fn tokens_of(rows: &[RowState]) -> Vec<i64> {
    rows.iter()
        .map(|r| *r.ids.last().expect("a decoding row has sampled a token"))
        .collect()
}
