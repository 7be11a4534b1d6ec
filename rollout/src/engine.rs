//! The local libtorch inference engine: batched prefill, then token-by-token decode with a
//! preallocated KV cache. Prompts are left-padded so every row's last prompt token sits in the same
//! column; padding is masked out of attention and positions count real tokens only. Rows that finish
//! leave the batch (their cache rows are dropped), so long and short completions can share a call.
use alp_policy::{positions_from_mask, CausalLM, KvCache, NoHooks};
use tch::{Kind, Tensor};

use crate::backend::{Completion, FinishReason, GenerationBackend, GenerationRequest};
use crate::error::RolloutError;
use crate::sampling::{RowSampler, SamplingParams};

/// An in-process inference copy of the policy.
pub struct LocalEngine {
    model: CausalLM,
    version: u64,
    batch_size: usize,
    pad_id: i64,
}

/// Per-row progress through the decode loop.
struct RowState {
    request: usize,
    limit: usize,
    stop: Vec<i64>,
    ids: Vec<i64>,
    logprobs: Vec<f32>,
    finish: Option<FinishReason>,
}

/// The batch rows still decoding, and every per-row buffer that shrinks when rows finish.
struct DecodeBatch {
    /// `active[k]` is the index (into the chunk's rows) of batch row k.
    active: Vec<usize>,
    cache: KvCache,
    key_valid: Tensor,
    last_hidden: Tensor,
    next_pos: Vec<i64>,
    sampler: RowSampler,
}

impl DecodeBatch {
    /// Drops finished rows from every per-row buffer, so the remaining rows run faster.
    fn drop_finished(&mut self, rows: &[RowState]) {
        let keep: Vec<usize> = (0..self.active.len())
            .filter(|&k| rows[self.active[k]].finish.is_none())
            .collect();
        if keep.len() == self.active.len() {
            return;
        }
        self.active = keep.iter().map(|&k| self.active[k]).collect();
        self.next_pos = keep.iter().map(|&k| self.next_pos[k]).collect();
        self.sampler.retain_rows(&keep);
        if keep.is_empty() {
            return;
        }
        let index: Vec<i64> = keep.iter().map(|&k| k as i64).collect();
        let index = Tensor::from_slice(&index).to_device(self.key_valid.device());
        self.cache.select_rows(&index);
        self.key_valid = self.key_valid.index_select(0, &index);
        self.last_hidden = self.last_hidden.index_select(0, &index);
    }
}

impl LocalEngine {
    /// Wraps `model`; requests are processed `batch_size` at a time.
    pub fn new(model: CausalLM, batch_size: usize) -> Self {
        LocalEngine {
            model,
            version: 0,
            batch_size: batch_size.max(1),
            pad_id: 0,
        }
    }

    pub fn model(&self) -> &CausalLM {
        &self.model
    }

    /// Installs new weights (copied from the learner's model) and the version they carry.
    pub fn update_weights(&mut self, source: &CausalLM, version: u64) {
        self.model.copy_weights_from(source);
        self.version = version;
    }

    fn check(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
    ) -> Result<(), RolloutError> {
        let vocab = self.model.config().vocab_size;
        let context = self.model.config().max_position_embeddings.max(0) as usize;
        for (index, r) in requests.iter().enumerate() {
            let bad = |problem: String| RolloutError::InvalidRequest { index, problem };
            if r.prompt_ids.is_empty() {
                return Err(bad("the prompt is empty".into()));
            }
            // The KV cache holds prompt and completion: refuse a row that cannot fit the model's
            // context before allocating it (a huge `max_new_tokens` would otherwise abort the process).
            let max_new = r.max_new_tokens.unwrap_or(params.max_new_tokens);
            if r.prompt_ids.len().saturating_add(max_new) > context {
                return Err(bad(format!(
                    "the prompt is {} tokens and max_new_tokens is {max_new}, more than the model's \
                     context of {context} tokens (max_position_embeddings); shorten the prompt or \
                     lower max_new_tokens",
                    r.prompt_ids.len()
                )));
            }
            if let Some(&t) = r.prompt_ids.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(bad(format!(
                    "token id {t} is outside the vocabulary [0, {vocab})"
                )));
            }
        }
        Ok(())
    }

    /// Completes requests `first..first + chunk.len()` of a call as one batch.
    fn generate_chunk(
        &self,
        chunk: &[GenerationRequest],
        first: usize,
        params: &SamplingParams,
    ) -> Vec<Completion> {
        let _guard = tch::no_grad_guard();
        let device = self.model.device();
        let b = chunk.len() as i64;
        let prompt_len = chunk.iter().map(|r| r.prompt_ids.len()).max().unwrap_or(0) as i64;
        let mut rows: Vec<RowState> = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| RowState {
                request: first + i,
                limit: r.max_new_tokens.unwrap_or(params.max_new_tokens),
                stop: r
                    .stop_token_ids
                    .clone()
                    .unwrap_or_else(|| params.stop_token_ids.clone()),
                ids: Vec::new(),
                logprobs: Vec::new(),
                finish: None,
            })
            .collect();
        let max_new = rows.iter().map(|r| r.limit).max().unwrap_or(0) as i64;
        for row in rows.iter_mut().filter(|r| r.limit == 0) {
            row.finish = Some(FinishReason::Length);
        }

        // Left-pad the prompts.
        let mut ids = vec![self.pad_id; (b * prompt_len) as usize];
        let mut valid = vec![false; (b * prompt_len) as usize];
        for (i, r) in chunk.iter().enumerate() {
            let start = i * prompt_len as usize + prompt_len as usize - r.prompt_ids.len();
            ids[start..start + r.prompt_ids.len()].copy_from_slice(&r.prompt_ids);
            valid[start..start + r.prompt_ids.len()]
                .iter_mut()
                .for_each(|v| *v = true);
        }
        let ids = Tensor::from_slice(&ids)
            .view([b, prompt_len])
            .to_device(device);
        let valid = Tensor::from_slice(&valid)
            .view([b, prompt_len])
            .to_device(device);
        let capacity = prompt_len + max_new;
        let key_valid = Tensor::zeros([b, capacity], (Kind::Bool, device));
        key_valid.narrow(1, 0, prompt_len).copy_(&valid);
        let mut cache = self.model.new_cache(b, capacity);
        let hidden = self.model.forward_cached(
            &ids,
            &positions_from_mask(&valid),
            &key_valid.narrow(1, 0, prompt_len),
            &mut cache,
            &NoHooks,
        );
        let request_ids: Vec<usize> = rows.iter().map(|r| r.request).collect();
        let mut batch = DecodeBatch {
            active: (0..rows.len()).collect(),
            cache,
            key_valid,
            last_hidden: hidden.narrow(1, prompt_len - 1, 1),
            next_pos: chunk.iter().map(|r| r.prompt_ids.len() as i64).collect(),
            sampler: RowSampler::new(params, &request_ids),
        };
        batch.drop_finished(&rows);

        for step in 0..max_new {
            if batch.active.is_empty() {
                break;
            }
            let logits = self
                .model
                .logits(&batch.last_hidden, &NoHooks)
                .squeeze_dim(1);
            let (tokens, logprobs) = batch.sampler.sample(&logits, params);
            let mut next_tokens = Vec::with_capacity(tokens.len());
            for (k, &row_index) in batch.active.iter().enumerate() {
                let row = &mut rows[row_index];
                row.ids.push(tokens[k]);
                row.logprobs.push(logprobs[k]);
                if row.stop.contains(&tokens[k]) {
                    row.finish = Some(FinishReason::Stop);
                } else if row.ids.len() >= row.limit {
                    row.finish = Some(FinishReason::Length);
                } else {
                    next_tokens.push(tokens[k]);
                }
            }
            batch.drop_finished(&rows);
            if batch.active.is_empty() {
                break;
            }
            // Feed the sampled tokens: they sit at cache column prompt_len + step.
            let n = batch.active.len() as i64;
            let input = Tensor::from_slice(&next_tokens)
                .view([n, 1])
                .to_device(device);
            let positions = Tensor::from_slice(&batch.next_pos)
                .view([n, 1])
                .to_device(device);
            let _ = batch.key_valid.narrow(1, prompt_len + step, 1).fill_(1);
            batch.last_hidden = self.model.forward_cached(
                &input,
                &positions,
                &batch.key_valid.narrow(1, 0, prompt_len + step + 1),
                &mut batch.cache,
                &NoHooks,
            );
            batch.next_pos.iter_mut().for_each(|p| *p += 1);
        }

        rows.into_iter()
            .zip(chunk)
            .map(|(row, request)| Completion {
                prompt_ids: request.prompt_ids.clone(),
                completion_ids: row.ids,
                logprobs: row.logprobs,
                finish_reason: row.finish.unwrap_or(FinishReason::Length),
                policy_version: self.version,
            })
            .collect()
    }
}

impl GenerationBackend for LocalEngine {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>, RolloutError> {
        params.validate()?;
        self.check(requests, params)?;
        let _span = tracing::info_span!("generate", requests = requests.len()).entered();
        let mut out = Vec::with_capacity(requests.len());
        for (c, chunk) in requests.chunks(self.batch_size).enumerate() {
            out.extend(self.generate_chunk(chunk, c * self.batch_size, params));
            tracing::debug!(done = out.len(), total = requests.len(), "generated chunk");
        }
        Ok(out)
    }

    fn policy_version(&self) -> u64 {
        self.version
    }

    fn max_context(&self) -> Option<usize> {
        Some(self.model.config().max_position_embeddings.max(0) as usize)
    }
}
