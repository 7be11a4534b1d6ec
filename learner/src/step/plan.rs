//! Plan phase: each sample's group advantage, and how the batch is cut into mini-batches (one
//! optimizer step each) and micro-batches (one forward and backward each).
//!
//! Mini-batches are contiguous slices of the batch in the order given (no shuffling); micro-batches
//! are up to `micro_batch_size` consecutive samples of a mini-batch (the last one may be shorter), cut
//! earlier where `micro_batch_tokens` (padded tokens) would be exceeded.
use std::ops::Range;

use crate::advantage::group_advantages;
use crate::batch::{Group, Sample};
use crate::error::{LearnerError, Result};
use crate::settings::LearnerSettings;

/// Micro-batches as sample ranges, and mini-batches as ranges of micro-batch indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    pub micro_batches: Vec<Range<usize>>,
    pub mini_batches: Vec<Range<usize>>,
}

impl BatchLayout {
    /// The layout of samples of `lengths` tokens (prompt + completion) each; `lengths.len() >=
    /// mini_batches`, so that no mini-batch is empty. A micro-batch takes at most `micro_batch_size`
    /// samples and, with `micro_batch_tokens > 0`, at most that many padded tokens (rows times the
    /// longest of them); a sample over the budget alone is a micro-batch of its own.
    fn new(
        lengths: &[usize],
        mini_batches: usize,
        micro_batch_size: usize,
        micro_batch_tokens: usize,
    ) -> Self {
        let n = lengths.len();
        let fits = |range: std::ops::Range<usize>| {
            let longest = lengths[range.clone()].iter().copied().max().unwrap_or(0);
            micro_batch_tokens == 0 || range.len() * longest <= micro_batch_tokens
        };
        let mut micro = Vec::new();
        let mut mini = Vec::new();
        for m in 0..mini_batches {
            let (lo, hi) = (m * n / mini_batches, (m + 1) * n / mini_batches);
            let first = micro.len();
            let mut i = lo;
            while i < hi {
                let mut j = i + 1;
                while j < hi && j - i < micro_batch_size && fits(i..j + 1) {
                    j += 1;
                }
                micro.push(i..j);
                i = j;
            }
            mini.push(first..micro.len());
        }
        Self {
            micro_batches: micro,
            mini_batches: mini,
        }
    }
}

/// What a learner step will train on: the samples of all groups in order, one advantage each, and
/// their layout. The train loop reads the advantages from here for its logs, so they are computed once.
#[derive(Debug)]
pub struct StepPlan<'a> {
    samples: Vec<&'a Sample>,
    advantages: Vec<f64>,
    /// `None` when there are fewer samples than mini-batches.
    layout: Option<BatchLayout>,
    mini_batches: usize,
}

impl<'a> StepPlan<'a> {
    /// Advantages within each group (`settings.advantage`) and the layout of `settings`; fails on an
    /// empty group. Too few samples for the mini-batches is reported by [`StepPlan::layout`] instead,
    /// so that a caller may still log the advantages of a step it skips.
    pub fn new(groups: &'a [Group], settings: &LearnerSettings) -> Result<Self> {
        let mut samples: Vec<&Sample> = Vec::new();
        let mut advantages = Vec::new();
        for g in groups {
            if g.samples.is_empty() {
                return Err(LearnerError::Batch("a group has no samples".into()));
            }
            let rewards: Vec<f64> = g.samples.iter().map(|x| x.reward).collect();
            advantages.extend(group_advantages(&rewards, settings.advantage));
            samples.extend(g.samples.iter());
        }
        let n = samples.len();
        let lengths: Vec<usize> = samples
            .iter()
            .map(|x| x.prompt_ids.len() + x.completion_ids.len())
            .collect();
        let layout = (n >= settings.mini_batches).then(|| {
            BatchLayout::new(
                &lengths,
                settings.mini_batches,
                settings.micro_batch_size,
                settings.micro_batch_tokens,
            )
        });
        Ok(Self {
            samples,
            advantages,
            layout,
            mini_batches: settings.mini_batches,
        })
    }

    /// The samples of all groups, in the groups' order.
    pub fn samples(&self) -> &[&'a Sample] {
        &self.samples
    }

    /// One advantage per sample of [`StepPlan::samples`].
    pub fn advantages(&self) -> &[f64] {
        &self.advantages
    }

    /// Whether every mini-batch gets at least one sample (otherwise the step cannot run).
    pub fn fills_mini_batches(&self) -> bool {
        self.layout.is_some()
    }

    /// The mini- and micro-batches; an error when the samples cannot fill the mini-batches.
    pub fn layout(&self) -> Result<&BatchLayout> {
        self.layout.as_ref().ok_or_else(|| {
            LearnerError::Batch(format!(
                "{} samples cannot fill {} mini-batches",
                self.samples.len(),
                self.mini_batches
            ))
        })
    }
}
