//! Evaluation: `k` samples per problem through the episode runner, scored by the environment.
//! Reports accuracy (avg@k, the mean of all samples' correctness) and pass@k with the unbiased
//! estimator of Chen et al. (2021): `1 - C(n - c, k) / C(n, k)` per problem, averaged.
use std::collections::BTreeMap;

use alp_envs::{Environment, Example};
use alp_tokenizer::Tokenizer;
use serde::Serialize;

use crate::backend::GenerationBackend;
use crate::episode::{run_episodes, EpisodeSettings};
use crate::error::RolloutError;
use crate::sampling::SamplingParams;

/// Unbiased pass@k for one problem with `n` samples of which `c` are correct (`k <= n`).
///
/// Computed as the product `prod_{i = n-c+1}^{n} (1 - k / i)`, which equals `C(n-c, k) / C(n, k)`
/// without overflowing factorials.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        k >= 1 && k <= n && c <= n,
        "pass@k needs 1 <= k <= n and c <= n (n={n}, c={c}, k={k})"
    );
    if n - c < k {
        return 1.0;
    }
    let all_wrong: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - all_wrong
}

/// The result of an evaluation, as `alp-rl eval` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    pub problems: usize,
    pub samples_per_problem: usize,
    /// Mean correctness over every sample (avg@k).
    pub accuracy: f64,
    pub mean_reward: f64,
    /// `pass@k` for k = 1, 2, 4, ... up to the samples per problem (and that number itself).
    pub pass_at_k: BTreeMap<String, f64>,
    /// Fraction of episodes that ended in an error.
    pub error_rate: f64,
}

/// The report's pass@k keys: `pass@{k}`.
pub const PASS_AT_PREFIX: &str = "pass@";

/// Correct counts per problem -> the report's pass@k table for k = 1, 2, 4, ..., n.
pub fn pass_at_k_table(correct_counts: &[usize], n: usize) -> BTreeMap<String, f64> {
    let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| Some(k * 2))
        .take_while(|&k| k <= n)
        .collect();
    if ks.last() != Some(&n) {
        ks.push(n);
    }
    ks.into_iter()
        .map(|k| {
            let mean = correct_counts
                .iter()
                .map(|&c| pass_at_k(n, c, k))
                .sum::<f64>()
                / correct_counts.len().max(1) as f64;
            (format!("{PASS_AT_PREFIX}{k}"), mean)
        })
        .collect()
}

/// Plays `k` episodes per example and summarises them.
pub fn evaluate(
    backend: &mut dyn GenerationBackend,
    tokenizer: &Tokenizer,
    env: &dyn Environment,
    examples: &[Example],
    k: usize,
    params: &SamplingParams,
    settings: &EpisodeSettings,
) -> Result<EvalReport, RolloutError> {
    assert!(k >= 1, "evaluate needs at least one sample per problem");
    let repeated: Vec<Example> = examples
        .iter()
        .flat_map(|ex| std::iter::repeat_n(ex.clone(), k))
        .collect();
    let trajectories = run_episodes(backend, tokenizer, env, &repeated, params, settings)?;
    let correct_counts: Vec<usize> = trajectories
        .chunks(k)
        .map(|group| group.iter().filter(|t| t.correct).count())
        .collect();
    let total = trajectories.len().max(1) as f64;
    Ok(EvalReport {
        problems: examples.len(),
        samples_per_problem: k,
        accuracy: correct_counts.iter().sum::<usize>() as f64 / total,
        mean_reward: trajectories.iter().map(|t| t.reward).sum::<f64>() / total,
        pass_at_k: pass_at_k_table(&correct_counts, k),
        error_rate: trajectories.iter().filter(|t| t.error.is_some()).count() as f64 / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: the probability that a uniformly random k-subset of the n samples holds at least one
    /// correct sample, by enumerating every subset.
    fn brute_force(n: usize, c: usize, k: usize) -> f64 {
        let (mut hit, mut all) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize == k {
                all += 1;
                // Samples 0..c are the correct ones.
                if mask & ((1u32 << c) - 1) != 0 {
                    hit += 1;
                }
            }
        }
        hit as f64 / all as f64
    }

    #[test]
    fn pass_at_k_equals_subset_enumeration() {
        for n in 1..=10 {
            for c in 0..=n {
                for k in 1..=n {
                    let (ours, truth) = (pass_at_k(n, c, k), brute_force(n, c, k));
                    assert!(
                        (ours - truth).abs() < 1e-12,
                        "n={n} c={c} k={k}: {ours} vs {truth}"
                    );
                }
            }
        }
    }

    #[test]
    fn hand_made_example() {
        // Three problems, four samples each, with 0, 1 and 4 correct.
        // pass@1 = mean(0, 1/4, 1) = 5/12; pass@2 = mean(0, 1 - C(3,2)/C(4,2) = 1/2, 1) = 1/2;
        // pass@4 = mean(0, 1, 1) = 2/3.
        let table = pass_at_k_table(&[0, 1, 4], 4);
        assert!((table["pass@1"] - 5.0 / 12.0).abs() < 1e-12);
        assert!((table["pass@2"] - 0.5).abs() < 1e-12);
        assert!((table["pass@4"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(table.len(), 3);
        // A non-power-of-two sample count still reports pass@n.
        assert!(pass_at_k_table(&[3], 3).contains_key("pass@3"));
    }
}
