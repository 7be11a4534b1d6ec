//! The local backend's engine ([`LocalEngine`], a [`GenerationBackend`] in process on libtorch):
//! batched prefill, then token-by-token decode with a preallocated KV cache, scheduled by continuous
//! batching. Its weights change only through [`LocalEngine::install`] of a [`crate::WeightUpdate`].
//!
//! Up to `batch_size` requests decode together, one row ("slot") each. When rows finish, waiting
//! requests take their slots once an eighth of the batch is free (or every waiting request fits): their
//! prompts are prefilled together, their keys and values are copied into the freed cache rows, and
//! from then on every row writes its next token at its own cache column
//! ([`alp_policy::KvCache::set_row_columns`]); a per-row key mask says which columns a row attends to.
//! So a batch decodes for an ended row only until enough slots are free to share one prefill, whatever
//! the spread of completion lengths. Once no request waits, finished rows leave the batch (their cache
//! rows are dropped) so the tail runs on fewer rows. Positions count real tokens only, so a request's
//! computation does not depend on its slot or its neighbours, and each request samples from its own
//! seeded RNG: completions are the same as generating the request alone (up to float reassociation).
//!
//! [`Scheduling::Chunked`] keeps the earlier schedule (fixed chunks of `batch_size` requests, each run
//! to its longest completion) for comparison (`cargo bench -p alp-rollout --bench continuous`).
use std::collections::VecDeque;
use std::sync::Arc;

use alp_policy::{
    positions_from_mask, CausalLM, ForwardHooks, MemberHooks, NoHooks, OnednnLmHead, RowHooks,
};
use tch::{Device, Kind, Tensor};

use crate::backend::{
    streams, Completion, FinishReason, GenerationBackend, GenerationRequest, OnFinished, SyncReport,
};
use crate::decode_rows::{
    pop_front_n, pre_capacity, requests_of, retire, tokens_of, DecodeBatch, Prefilled, RowState,
};
use crate::error::RolloutError;
use crate::sampling::{RowSampler, SamplingParams};
use crate::weight_update::WeightUpdate;

/// How requests share the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// A finished row's slot goes to the next waiting request at the next decode step.
    #[default]
    Continuous,
    /// Requests run in fixed chunks of `batch_size`; a chunk ends with its longest completion.
    Chunked,
}

/// What the decode loop did in the last generation call: how a schedule packs the batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Decode steps (forwards of one token per row).
    pub decode_steps: u64,
    /// Rows summed over those steps (finished rows waiting for a newcomer included).
    pub row_steps: u64,
    /// Prefill forwards (the first admission and every refill).
    pub prefills: u64,
}

impl DecodeStats {
    fn add(&mut self, other: DecodeStats) {
        self.decode_steps += other.decode_steps;
        self.row_steps += other.row_steps;
        self.prefills += other.prefills;
    }
}

/// An in-process inference copy of the policy.
pub struct LocalEngine {
    model: CausalLM,
    version: u64,
    batch_size: usize,
    pad_id: i64,
    scheduling: Scheduling,
    /// The population requests with a `member` are served by (see [`LocalEngine::set_members`]).
    members: Option<Arc<dyn MemberHooks>>,
    /// The LM head's weight copied for oneDNN, where that multiplies faster (a large-vocabulary f32
    /// model on the CPU, decoding more rows than the few-rows kernel takes); made again at every
    /// weight install, which is the only way the engine's weights change.
    onednn_head: Option<OnednnLmHead>,
    last_stats: DecodeStats,
    /// Called once per finished request (see [`LocalEngine::set_on_finished`]).
    on_finished: Option<OnFinished>,
}

impl LocalEngine {
    /// Wraps `model`; up to `batch_size` requests decode together.
    pub fn new(model: CausalLM, batch_size: usize) -> Self {
        let batch_size = batch_size.max(1);
        LocalEngine {
            onednn_head: onednn_head_for(&model, batch_size),
            model,
            version: 0,
            batch_size,
            pad_id: 0,
            scheduling: Scheduling::default(),
            members: None,
            last_stats: DecodeStats::default(),
            on_finished: None,
        }
    }

    /// Calls `hook` with each request's completion length as it finishes (progress reporting).
    pub fn set_on_finished(&mut self, hook: Option<OnFinished>) {
        self.on_finished = hook;
    }

    /// Installs the population that serves requests naming a `member` (`None` removes it): the
    /// evolution-strategies learner installs each step's population before its batch is generated.
    pub fn set_members(&mut self, members: Option<Arc<dyn MemberHooks>>) {
        self.members = members;
    }

    /// The same engine, its weights labelled `version` (a resumed run's starting version).
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// The same engine with another schedule.
    pub fn with_scheduling(mut self, scheduling: Scheduling) -> Self {
        self.scheduling = scheduling;
        self
    }

    /// What the decode loop did in the last generation call.
    pub fn last_decode_stats(&self) -> DecodeStats {
        self.last_stats
    }

    /// The engine's model, to read; its weights change only through [`Self::install`] (which also
    /// remakes the LM head's oneDNN copy).
    pub fn model(&self) -> &CausalLM {
        &self.model
    }

    /// Installs a weight update (the one way the engine's weights change): its tensors are copied
    /// straight into the engine's model, converted to the engine's dtype, so no second copy of the
    /// model is needed to receive them; then the engine generates as `update.version`. A refused
    /// update (unknown name, wrong shape, a full update missing a tensor) changes nothing.
    pub fn install(&mut self, update: &WeightUpdate) -> Result<(), RolloutError> {
        update.apply_to(&self.model)?;
        self.remake_onednn_head();
        self.version = update.version;
        Ok(())
    }

    /// A fresh oneDNN copy of the LM head from the weights just installed (the old one dropped first,
    /// so that two copies never coexist).
    fn remake_onednn_head(&mut self) {
        self.onednn_head = None;
        self.onednn_head = onednn_head_for(&self.model, self.batch_size);
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

    /// Left-pads the prompts of `requests` into one batch and runs the prefill with a fresh cache of
    /// `capacity` columns (at least the longest prompt).
    fn prefill(
        &self,
        requests: &[&GenerationRequest],
        capacity: i64,
        hooks: &dyn ForwardHooks,
    ) -> Prefilled {
        let device = self.model.device();
        let b = requests.len() as i64;
        let width = requests
            .iter()
            .map(|r| r.prompt_ids.len())
            .max()
            .unwrap_or(0) as i64;
        let mut ids = vec![self.pad_id; (b * width) as usize];
        let mut valid = vec![false; (b * width) as usize];
        for (i, r) in requests.iter().enumerate() {
            let start = i * width as usize + width as usize - r.prompt_ids.len();
            ids[start..start + r.prompt_ids.len()].copy_from_slice(&r.prompt_ids);
            valid[start..start + r.prompt_ids.len()].fill(true);
        }
        let ids = Tensor::from_slice(&ids).view([b, width]).to_device(device);
        let valid = Tensor::from_slice(&valid)
            .view([b, width])
            .to_device(device);
        let mut cache = self.model.new_cache(b, capacity.max(width));
        let hidden = self.model.forward_cached(
            &ids,
            &positions_from_mask(&valid),
            &valid,
            &mut cache,
            hooks,
        );
        Prefilled {
            cache,
            width,
            last_hidden: hidden.narrow(1, width - 1, 1),
            valid,
        }
    }

    /// Completes `requests` (call indices `first..`) with continuous batching, or one fixed chunk when
    /// `requests.len() <= batch_size` and nothing waits (the chunked schedule calls it per chunk).
    fn generate_batch(
        &self,
        requests: &[GenerationRequest],
        first: usize,
        params: &SamplingParams,
        row_hooks: &dyn RowHooks,
    ) -> (Vec<Completion>, DecodeStats) {
        let _guard = tch::no_grad_guard();
        let _kernel = alp_policy::few_rows_gemm::enable();
        let device = self.model.device();
        let (mut done, mut waiting) = queue(requests, first, params);
        for row in done.iter().flatten() {
            self.on_finished.iter().for_each(|hook| hook(row.ids.len()));
        }
        let capacity = cache_capacity(requests, params);

        let mut stats = DecodeStats::default();
        let admit = pop_front_n(&mut waiting, self.batch_size);
        if admit.is_empty() {
            return (self.finish(requests, done), stats);
        }
        stats.prefills += 1;
        let mut batch = self.first_batch(requests, &admit, first, params, capacity, row_hooks);

        // Slots whose row has finished and that wait for newcomers. A refill costs a prefill forward
        // and a copy into every layer's cache whatever the number of newcomers, so it waits until an
        // eighth of the batch is free (or every waiting request fits): the finished rows decode a few
        // steps more, harmlessly, while the prefill is shared.
        let mut free: Vec<usize> = Vec::new();
        let refill_at = (self.batch_size / 8).max(1);
        while !batch.rows.is_empty() {
            self.sample_next(&mut batch, params, row_hooks, &mut free);
            // With nobody waiting, finished rows leave before the step.
            if waiting.is_empty() && !free.is_empty() {
                for row in batch.remove_rows(&free) {
                    retire(&mut done, first, row);
                }
                free.clear();
                if batch.rows.is_empty() {
                    break;
                }
            }
            let fed = tokens_of(&batch.rows);
            stats.decode_steps += 1;
            stats.row_steps += batch.rows.len() as u64;
            self.decode_step(&mut batch, &fed, device, row_hooks);
            if !free.is_empty() && (free.len() >= refill_at || free.len() >= waiting.len()) {
                stats.prefills += 1;
                self.refill(
                    &mut batch,
                    &free,
                    &mut waiting,
                    &mut done,
                    requests,
                    first,
                    params,
                    capacity,
                    row_hooks,
                );
                free.clear();
            }
        }
        (self.finish(requests, done), stats)
    }

    /// Prefills the first requests to decode (`admit`, indices into `requests`) into a new batch.
    fn first_batch(
        &self,
        requests: &[GenerationRequest],
        admit: &[usize],
        first: usize,
        params: &SamplingParams,
        capacity: i64,
        row_hooks: &dyn RowHooks,
    ) -> DecodeBatch {
        let request_ids: Vec<usize> = admit.iter().map(|&i| first + i).collect();
        let pre = self.prefill(
            &admit.iter().map(|&i| &requests[i]).collect::<Vec<_>>(),
            capacity,
            row_hooks.for_rows(&request_ids).as_ref(),
        );
        let key_valid = pre.key_valid(capacity);
        DecodeBatch {
            rows: admit
                .iter()
                .map(|&i| RowState {
                    column: pre.width,
                    ..RowState::new(first + i, &requests[i], params)
                })
                .collect(),
            cache: pre.cache,
            key_valid,
            last_hidden: pre.last_hidden,
            sampler: RowSampler::new(params, &streams(requests, admit, first)),
        }
    }

    /// Samples and records every row's next token; the slot of each row it finishes goes to `free`.
    fn sample_next(
        &self,
        batch: &mut DecodeBatch,
        params: &SamplingParams,
        row_hooks: &dyn RowHooks,
        free: &mut Vec<usize>,
    ) {
        let hooks = row_hooks.for_rows(&requests_of(&batch.rows));
        let logits = self
            .model
            .logits_with(
                &batch.last_hidden,
                hooks.as_ref(),
                self.onednn_head.as_ref(),
            )
            .squeeze_dim(1);
        drop(hooks);
        let (tokens, logprobs) = batch.sampler.sample(&logits, params);
        for (k, row) in batch.rows.iter_mut().enumerate() {
            if row.finish.is_none() && !row.push(tokens[k], logprobs[k]) {
                free.push(k);
                self.on_finished.iter().for_each(|hook| hook(row.ids.len()));
            }
        }
    }

    /// Feeds each row's last token at its own column and position; updates `last_hidden`.
    fn decode_step(
        &self,
        batch: &mut DecodeBatch,
        tokens: &[i64],
        device: Device,
        row_hooks: &dyn RowHooks,
    ) {
        let n = batch.rows.len() as i64;
        let columns: Vec<i64> = batch.rows.iter().map(|r| r.column).collect();
        let positions: Vec<i64> = batch.rows.iter().map(|r| r.next_pos).collect();
        let cols = Tensor::from_slice(&columns).to_device(device).view([n, 1]);
        let _ = batch
            .key_valid
            .scatter_(1, &cols, &Tensor::ones([n, 1], (Kind::Bool, device)));
        batch.cache.set_row_columns(&columns);
        let width = columns.iter().copied().max().unwrap_or(0) + 1;
        let hooks = row_hooks.for_rows(&requests_of(&batch.rows));
        batch.last_hidden = self.model.forward_cached(
            &Tensor::from_slice(tokens).view([n, 1]).to_device(device),
            &Tensor::from_slice(&positions)
                .view([n, 1])
                .to_device(device),
            &batch.key_valid.narrow(1, 0, width),
            &mut batch.cache,
            hooks.as_ref(),
        );
        // A finished row waiting for a newcomer rewrites its last column instead of running past
        // the cache's capacity.
        for row in batch.rows.iter_mut().filter(|r| r.finish.is_none()) {
            row.column += 1;
            row.next_pos += 1;
        }
    }

    /// Gives the slots of `finished` rows to waiting requests (prefilled together); slots left over
    /// when the queue runs dry leave the batch.
    #[allow(clippy::too_many_arguments)]
    fn refill(
        &self,
        batch: &mut DecodeBatch,
        finished: &[usize],
        waiting: &mut VecDeque<usize>,
        done: &mut [Option<RowState>],
        requests: &[GenerationRequest],
        first: usize,
        params: &SamplingParams,
        capacity: i64,
        row_hooks: &dyn RowHooks,
    ) {
        let device = self.model.device();
        let admit = pop_front_n(waiting, finished.len());
        let slots = &finished[..admit.len()];
        for (&slot, &i) in slots.iter().zip(&admit) {
            let pre = RowState::new(first + i, &requests[i], params);
            let row = std::mem::replace(&mut batch.rows[slot], pre);
            retire(done, first, row);
        }
        if !admit.is_empty() {
            let request_ids: Vec<usize> = admit.iter().map(|&i| first + i).collect();
            let pre = self.prefill(
                &admit.iter().map(|&i| &requests[i]).collect::<Vec<_>>(),
                pre_capacity(&admit, requests),
                row_hooks.for_rows(&request_ids).as_ref(),
            );
            let index: Vec<i64> = slots.iter().map(|&k| k as i64).collect();
            let index = Tensor::from_slice(&index).to_device(device);
            batch.cache.copy_rows_from(&pre.cache, &index, pre.width);
            let _ = batch
                .key_valid
                .index_copy_(0, &index, &pre.key_valid(capacity));
            let _ = batch.last_hidden.index_copy_(0, &index, &pre.last_hidden);
            for (&slot, &i) in slots.iter().zip(&admit) {
                batch.rows[slot].column = pre.width;
                batch
                    .sampler
                    .reseed_row(slot, params, requests[i].stream_or(first + i));
            }
        }
        // Finished rows no request took over leave the batch.
        for row in batch.remove_rows(&finished[admit.len()..]) {
            retire(done, first, row);
        }
    }

    fn finish(
        &self,
        requests: &[GenerationRequest],
        done: Vec<Option<RowState>>,
    ) -> Vec<Completion> {
        done.into_iter()
            .zip(requests)
            .map(|(row, request)| {
                let row = row.expect("every request finished");
                Completion {
                    prompt_ids: request.prompt_ids.clone(),
                    completion_ids: row.ids,
                    logprobs: row.logprobs,
                    finish_reason: row.finish.unwrap_or(FinishReason::Length),
                    policy_version: self.version,
                }
            })
            .collect()
    }
}

/// Each request's finished state if it has nothing to generate (it never takes a slot), and the
/// queue of the others, in order.
fn queue(
    requests: &[GenerationRequest],
    first: usize,
    params: &SamplingParams,
) -> (Vec<Option<RowState>>, VecDeque<usize>) {
    let mut done: Vec<Option<RowState>> = (0..requests.len()).map(|_| None).collect();
    let mut waiting: VecDeque<usize> = VecDeque::new();
    for (i, r) in requests.iter().enumerate() {
        let row = RowState::new(first + i, r, params);
        if row.limit == 0 {
            done[i] = Some(RowState {
                finish: Some(FinishReason::Length),
                ..row
            });
        } else {
            waiting.push_back(i);
        }
    }
    (done, waiting)
}

/// Every row's cache columns: its prompt (padded to the widest prompt of its prefill) then its
/// completion, plus one column for the token fed in the step it finishes.
fn cache_capacity(requests: &[GenerationRequest], params: &SamplingParams) -> i64 {
    let capacity = requests
        .iter()
        .map(|r| r.prompt_ids.len())
        .max()
        .unwrap_or(0)
        + requests
            .iter()
            .map(|r| r.max_new_tokens.unwrap_or(params.max_new_tokens))
            .max()
            .unwrap_or(0)
        + 1;
    capacity as i64
}

/// The LM head's oneDNN copy for an engine of `batch_size` rows: only when a decode step can have
/// more rows than [`alp_policy::few_rows_gemm`] takes (that kernel beats oneDNN up to there, and the
/// copy costs the head's size in memory).
fn onednn_head_for(model: &CausalLM, batch_size: usize) -> Option<OnednnLmHead> {
    if batch_size as i64 > alp_policy::few_rows_gemm::MAX_ROWS {
        model.onednn_lm_head()
    } else {
        None
    }
}

impl LocalEngine {
    /// [`GenerationBackend::generate`] with hooks that know which request each batch row serves (an
    /// evolution-strategies population: request `i`'s tokens come from its member's weights). Every
    /// forward, prefill and decode step alike, asks `row_hooks` for the hooks of its rows.
    pub fn generate_with_hooks(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        row_hooks: &dyn RowHooks,
    ) -> Result<Vec<Completion>, RolloutError> {
        params.validate()?;
        self.check(requests, params)?;
        let _span = tracing::info_span!("generate", requests = requests.len()).entered();
        let mut stats = DecodeStats::default();
        let out = match self.scheduling {
            Scheduling::Continuous => {
                let (out, s) = self.generate_batch(requests, 0, params, row_hooks);
                stats = s;
                out
            }
            Scheduling::Chunked => {
                let mut out = Vec::with_capacity(requests.len());
                for (c, chunk) in requests.chunks(self.batch_size).enumerate() {
                    let (done, s) =
                        self.generate_batch(chunk, c * self.batch_size, params, row_hooks);
                    out.extend(done);
                    stats.add(s);
                    tracing::debug!(done = out.len(), total = requests.len(), "generated chunk");
                }
                out
            }
        };
        self.last_stats = stats;
        Ok(out)
    }
}

impl GenerationBackend for LocalEngine {
    /// Requests that name a `member` are generated with that member's weights, from the installed
    /// population; all requests of a call name one, or none does.
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>, RolloutError> {
        let members: Vec<usize> = requests.iter().filter_map(|r| r.member).collect();
        if members.is_empty() {
            return self.generate_with_hooks(requests, params, &NoHooks);
        }
        if members.len() != requests.len() {
            let index = requests
                .iter()
                .position(|r| r.member.is_none())
                .unwrap_or(0);
            return Err(RolloutError::InvalidRequest {
                index,
                problem: "names no population member while other requests of the call do".into(),
            });
        }
        let Some(population) = self.members.clone() else {
            return Err(RolloutError::InvalidRequest {
                index: 0,
                problem: "names a population member but no population is installed \
                          (LocalEngine::set_members)"
                    .into(),
            });
        };
        let row_hooks = population.for_requests(&members);
        self.generate_with_hooks(requests, params, row_hooks.as_ref())
    }

    fn policy_version(&self) -> u64 {
        self.version
    }

    fn max_context(&self) -> Option<usize> {
        Some(self.model.config().max_position_embeddings.max(0) as usize)
    }

    /// [`LocalEngine::install`]: an in-process copy.
    fn apply_update(&mut self, update: &WeightUpdate) -> Result<SyncReport, RolloutError> {
        let start = std::time::Instant::now();
        self.install(update)?;
        Ok(SyncReport {
            version: update.version,
            probes: Vec::new(), // nothing to verify
            seconds: start.elapsed().as_secs_f64(),
            bytes: update.num_bytes(),
        })
    }
}
