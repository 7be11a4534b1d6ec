//! What the learner trains on, and how it becomes tensors.
//!
//! Sequences are `prompt ++ completion`, right-padded, so position ids are the plain `0..len` whatever
//! the model does with the attention mask. The logit at position `p` predicts token `p + 1`; the logits
//! of completion tokens are picked with one `index_select` on the flattened `[b * s, vocab]` logits
//! before the f32 `log_softmax`, so the vocabulary-wide softmax runs only over completion positions;
//! for a [`CausalLM`] the head and softmax run over row chunks ([`PackedBatch::head_chunks`]), so
//! f32 logits of the whole vocabulary never exist for a whole micro-batch at once.
use std::ops::Range;

use tch::{Device, Kind, Tensor};

use alp_policy::{CausalLM, ForwardHooks};

use crate::error::{LearnerError, Result};
use crate::trainable::TrainablePolicy;

/// One rollout sample (the learner's view of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub prompt_ids: Vec<i64>,
    pub completion_ids: Vec<i64>,
    /// Per completion token: whether it is trained on (tool results and the like are not).
    pub loss_mask: Vec<bool>,
    /// Per completion token: its log-prob under the inference (sampling) policy.
    pub mu: Vec<f32>,
    pub reward: f64,
    /// Version of the policy that generated the sample.
    pub policy_version: u64,
}

/// The `G` samples of one prompt; advantages are computed within a group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Group {
    pub samples: Vec<Sample>,
}

impl Sample {
    /// Checks the invariants packing relies on.
    pub fn validate(&self) -> Result<()> {
        let n = self.completion_ids.len();
        let bad = |m: String| Err(LearnerError::Batch(m));
        if self.prompt_ids.is_empty() {
            return bad("a sample has an empty prompt (the first completion token needs a preceding position)".into());
        }
        if n == 0 {
            return bad("a sample has an empty completion".into());
        }
        if self.loss_mask.len() != n || self.mu.len() != n {
            return bad(format!(
                "completion has {n} tokens but loss_mask has {} and mu has {}",
                self.loss_mask.len(),
                self.mu.len()
            ));
        }
        if self
            .mu
            .iter()
            .zip(&self.loss_mask)
            .any(|(m, &k)| k && !m.is_finite())
        {
            return bad("mu is not finite on a trained token".into());
        }
        if !self.reward.is_finite() {
            return bad(format!("reward {} is not finite", self.reward));
        }
        Ok(())
    }

    /// Number of trained (loss-mask 1) completion tokens.
    pub fn num_loss_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&k| k).count()
    }
}

/// A micro-batch as tensors. Token-level tensors are `[b, t]` with `t` the longest completion.
#[derive(Debug)]
pub struct PackedBatch {
    /// `[b, s]` int64, right-padded with 0.
    pub input_ids: Tensor,
    /// `[b, s]` int64, 1 on real tokens and 0 on padding.
    pub attention_mask: Tensor,
    /// `[b, t]` int64: the completion tokens (0 on padding).
    pub targets: Tensor,
    /// `[b * t]` int64: row of the flattened `[b * s, vocab]` logits that predicts each target.
    pub positions: Tensor,
    /// `[b, t]` f32: 1 where the token is trained on (loss mask and not padding).
    pub mask: Tensor,
    /// `[b, t]` f32: inference log-probs, 0 where `mask` is 0.
    pub mu: Tensor,
    /// `[b]` f32 advantages.
    pub advantages: Tensor,
    /// Trained tokens per row.
    pub row_tokens: Vec<usize>,
    /// The logits are divided by this before the softmax: the temperature `mu` was sampled at, so the
    /// learner scores tokens under the distribution that produced them (1 after [`PackedBatch::pack`]).
    pub temperature: f64,
    /// Most bytes of f32 logits one row chunk of the LM head holds ([`PackedBatch::head_chunks`]);
    /// [`HEAD_CHUNK_BYTES`] after [`PackedBatch::pack`].
    pub head_chunk_bytes: usize,
}

impl PackedBatch {
    /// Packs samples and their advantages onto `device`.
    pub fn pack(samples: &[&Sample], advantages: &[f64], device: Device) -> Result<Self> {
        if samples.is_empty() || samples.len() != advantages.len() {
            return Err(LearnerError::Batch(format!(
                "cannot pack {} samples with {} advantages",
                samples.len(),
                advantages.len()
            )));
        }
        for s in samples {
            s.validate()?;
        }
        let b = samples.len();
        let seq = samples
            .iter()
            .map(|s| s.prompt_ids.len() + s.completion_ids.len())
            .max()
            .unwrap_or(0);
        let t = samples
            .iter()
            .map(|s| s.completion_ids.len())
            .max()
            .unwrap_or(0);
        let mut ids = vec![0i64; b * seq];
        let mut attn = vec![0i64; b * seq];
        let mut targets = vec![0i64; b * t];
        let mut positions = vec![0i64; b * t];
        let mut mask = vec![0f32; b * t];
        let mut mu = vec![0f32; b * t];
        let mut row_tokens = Vec::with_capacity(b);
        for (r, s) in samples.iter().enumerate() {
            let p = s.prompt_ids.len();
            let row = &mut ids[r * seq..(r + 1) * seq];
            row[..p].copy_from_slice(&s.prompt_ids);
            row[p..p + s.completion_ids.len()].copy_from_slice(&s.completion_ids);
            attn[r * seq..r * seq + p + s.completion_ids.len()].fill(1);
            for (j, &tok) in s.completion_ids.iter().enumerate() {
                let k = r * t + j;
                targets[k] = tok;
                positions[k] = (r * seq + p + j - 1) as i64;
                if s.loss_mask[j] {
                    mask[k] = 1.0;
                    mu[k] = s.mu[j];
                }
            }
            // Padding targets point at the row's first position: any valid row works, it is masked.
            for j in s.completion_ids.len()..t {
                positions[r * t + j] = (r * seq) as i64;
            }
            row_tokens.push(s.num_loss_tokens());
        }
        let (b, seq, t) = (b as i64, seq as i64, t as i64);
        let adv: Vec<f32> = advantages.iter().map(|&a| a as f32).collect();
        Ok(Self {
            input_ids: Tensor::from_slice(&ids).reshape([b, seq]).to_device(device),
            attention_mask: Tensor::from_slice(&attn)
                .reshape([b, seq])
                .to_device(device),
            targets: Tensor::from_slice(&targets)
                .reshape([b, t])
                .to_device(device),
            positions: Tensor::from_slice(&positions).to_device(device),
            mask: Tensor::from_slice(&mask).reshape([b, t]).to_device(device),
            mu: Tensor::from_slice(&mu).reshape([b, t]).to_device(device),
            advantages: Tensor::from_slice(&adv).to_device(device),
            row_tokens,
            temperature: 1.0,
            head_chunk_bytes: HEAD_CHUNK_BYTES,
        })
    }

    /// Scores this batch at sampling temperature `t` (see [`PackedBatch::temperature`]).
    pub fn at_temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }

    /// Runs the LM head over row chunks of at most `bytes` of f32 logits (see
    /// [`PackedBatch::head_chunk_bytes`]); the log-probs are the same whatever the chunks.
    pub fn with_head_chunk_bytes(mut self, bytes: usize) -> Self {
        self.head_chunk_bytes = bytes;
        self
    }

    pub fn num_rows(&self) -> usize {
        self.row_tokens.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.row_tokens.iter().sum()
    }

    /// Completion log-probs `[b, t]` (and entropy) of this batch under `policy` with `hooks`. A
    /// [`CausalLM`] runs its trunk once and the LM head and log-softmax over the row chunks of
    /// [`PackedBatch::head_chunks`] (so `hooks.logits` sees one chunk's `[rows * t, vocab]` logits at a
    /// time); other policies go through [`TrainablePolicy::selected_logits`] whole.
    pub fn log_probs<P: TrainablePolicy + ?Sized>(
        &self,
        policy: &P,
        hooks: &dyn ForwardHooks,
        entropy: Entropy,
    ) -> (Tensor, Option<Tensor>) {
        if let Some(model) = policy.as_causal_lm() {
            let h = model.hidden_states(&self.input_ids, Some(&self.attention_mask), hooks);
            let flat = flatten_rows(&h);
            let vocab = model.lm_head_weight().size()[0];
            let (lps, ents): (Vec<Tensor>, Vec<Option<Tensor>>) = self
                .head_chunks(vocab)
                .into_iter()
                .map(|rows| self.head_log_probs(model, &flat, rows, hooks, entropy))
                .unzip();
            let ents: Option<Vec<Tensor>> = ents.into_iter().collect();
            return (Tensor::cat(&lps, 0), ents.map(|e| Tensor::cat(&e, 0)));
        }
        let picked = policy.selected_logits(
            &self.input_ids,
            Some(&self.attention_mask),
            &self.positions,
            hooks,
        );
        completion_log_probs(&picked, self, entropy)
    }

    /// Longest completion `t` (the width of the token-level tensors).
    pub fn completion_len(&self) -> usize {
        self.targets.size()[1] as usize
    }

    /// The rows cut into consecutive ranges whose f32 logits (`rows * t * vocab`) hold at most
    /// [`PackedBatch::head_chunk_bytes`], at least one row each: how the LM head and the log-softmax
    /// run.
    pub fn head_chunks(&self, vocab: i64) -> Vec<Range<usize>> {
        let per_row = (self.completion_len() as i64 * vocab * 4).max(1) as usize;
        let step = (self.head_chunk_bytes / per_row).max(1);
        let b = self.num_rows();
        (0..b)
            .step_by(step)
            .map(|lo| lo..(lo + step).min(b))
            .collect()
    }

    /// Log-probs `[rows.len(), t]` (and entropy) of rows `rows` of this batch from the final hidden
    /// states of the whole batch flattened to `[b * s, hidden]`: the LM head on those rows'
    /// predicting positions only, then [`completion_log_probs`]'s log-softmax.
    pub fn head_log_probs(
        &self,
        model: &CausalLM,
        hidden: &Tensor,
        rows: Range<usize>,
        hooks: &dyn ForwardHooks,
        entropy: Entropy,
    ) -> (Tensor, Option<Tensor>) {
        let t = self.completion_len() as i64;
        let (lo, n) = (rows.start as i64, rows.len() as i64);
        let positions = self.positions.narrow(0, lo * t, n * t);
        let picked = model.logits(&hidden.index_select(0, &positions), hooks);
        let targets = self.targets.narrow(0, lo, n);
        log_probs_of(&picked, &targets, self.temperature, entropy)
    }
}

/// Bytes of f32 logits one row chunk of the LM head may hold (its log-softmax, and in a training
/// forward their gradients, are as large again): 64 MiB, 2 rows of 128 tokens over SmolLM2's 49,152
/// tokens. A row longer than that is its own chunk.
pub const HEAD_CHUNK_BYTES: usize = 64 << 20;

/// `[b, s, hidden]` to `[b * s, hidden]`.
pub fn flatten_rows(h: &Tensor) -> Tensor {
    let (b, s, d) = h.size3().expect("hidden states are [batch, seq, hidden]");
    h.reshape([b * s, d])
}

/// What to compute about the entropy of the distribution at each completion position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entropy {
    Skip,
    /// For metrics only: computed without building an autograd graph.
    Detached,
    /// For an entropy bonus in the loss.
    WithGrad,
}

/// Per-token log-probs `[b, t]` of the completion tokens from the logits at their predicting positions
/// (`[b * t, vocab]`, as selected by `packed.positions`), in f32 whatever the logits' dtype, and
/// optionally the entropy `[b, t]` at each of those positions, both of `softmax(logits / T)` with
/// `T = packed.temperature`.
pub fn completion_log_probs(
    picked: &Tensor,
    packed: &PackedBatch,
    entropy: Entropy,
) -> (Tensor, Option<Tensor>) {
    log_probs_of(picked, &packed.targets, packed.temperature, entropy)
}

/// [`completion_log_probs`] for `targets` (`[b, t]`) and their logits `[b * t, vocab]`.
fn log_probs_of(
    picked: &Tensor,
    targets: &Tensor,
    temperature: f64,
    entropy: Entropy,
) -> (Tensor, Option<Tensor>) {
    let (b, t) = targets.size2().expect("targets are [batch, completion]");
    let logp = if temperature == 1.0 {
        picked.log_softmax(-1, Kind::Float)
    } else {
        (picked.to_kind(Kind::Float) / temperature).log_softmax(-1, Kind::Float)
    };
    let lp = logp
        .gather(1, &targets.reshape([b * t, 1]), false)
        .reshape([b, t]);
    let ent = |logp: &Tensor| {
        -(logp.exp() * logp)
            .sum_dim_intlist(-1, false, Kind::Float)
            .reshape([b, t])
    };
    let entropy = match entropy {
        Entropy::Skip => None,
        Entropy::Detached => Some(tch::no_grad(|| ent(&logp.detach()))),
        Entropy::WithGrad => Some(ent(&logp)),
    };
    (lp, entropy)
}

/// [`completion_log_probs`] from full `[b, s, vocab]` logits.
pub fn token_log_probs(
    logits: &Tensor,
    packed: &PackedBatch,
    entropy: Entropy,
) -> (Tensor, Option<Tensor>) {
    let (b, s, v) = logits.size3().expect("logits must be [batch, seq, vocab]");
    let picked = logits
        .reshape([b * s, v])
        .index_select(0, &packed.positions);
    completion_log_probs(&picked, packed, entropy)
}
