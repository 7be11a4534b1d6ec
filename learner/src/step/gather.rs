//! Gather phase, for a learner spread over several processes: every process sends its step sums
//! (ratio statistics, mismatch sums, rejection counts, losses, entropy, rewards and lengths of its
//! samples) to every other, so each reports the metrics of the whole batch, as one process on it would. The losses are
//! already shares of the global loss (each process divides by the global denominators), so they add;
//! the gradient norm and the skipped updates follow the summed gradient and are equal everywhere.
use crate::error::{LearnerError, Result};
use crate::metrics::RatioStats;
use crate::rejection::RejectionStats;
use crate::step::micro::StepTotals;
use crate::step::sync::GradientSync;

/// What a finished step's metrics read from its samples, besides the running sums.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct SampleSums {
    pub rewards: Vec<f64>,
    pub lengths: Vec<usize>,
}

/// Replaces this process's `totals` and `samples` by their union over all processes of `sync`
/// (nothing to do in one process).
pub(crate) fn gather_step_sums(
    totals: &mut StepTotals,
    samples: &mut SampleSums,
    sync: &mut dyn GradientSync,
) -> Result<()> {
    if sync.world_size() <= 1 {
        return Ok(());
    }
    let mine = encode(totals, samples);
    let all = sync.all_gather_bytes(&to_bytes(&mine))?;
    let rank = sync.rank();
    let mut merged = StepTotals {
        norm_sum: totals.norm_sum,
        skipped: totals.skipped,
        forwards: totals.forwards,
        ..Default::default()
    };
    let mut merged_samples = SampleSums::default();
    for (q, bytes) in all.iter().enumerate() {
        let values = from_bytes(bytes).map_err(|e| {
            LearnerError::Sync(format!(
                "the step sums of rank {q} (this is rank {rank}): {e}"
            ))
        })?;
        decode_into(&values, &mut merged, &mut merged_samples).map_err(|e| {
            LearnerError::Sync(format!(
                "the step sums of rank {q} (this is rank {rank}): {e}"
            ))
        })?;
    }
    *totals = merged;
    *samples = merged_samples;
    Ok(())
}

/// The sums as one list of numbers: each list prefixed by its length, then the counts and scalars.
fn encode(t: &StepTotals, s: &SampleSums) -> Vec<f64> {
    let mut v = Vec::new();
    let r = &t.ratios;
    for list in [&r.token_ratios, &r.seq_ratios, &r.loss_ratios, &r.weights] {
        v.push(list.len() as f64);
        v.extend_from_slice(list);
    }
    v.extend([r.clip_high, r.clip_low, r.clip_dual, r.masked].map(|c| c as f64));
    v.extend(t.mismatch.values());
    v.extend([
        t.ent_sum,
        t.ent_tokens,
        t.pg_sum,
        t.total_sum,
        t.kl_sum,
        t.processed_tokens as f64,
    ]);
    let r = t.rejection;
    v.push(f64::from(u8::from(r.is_some())));
    let r = r.unwrap_or_default();
    v.extend(
        [
            r.tokens,
            r.rejected_tokens,
            r.sequences,
            r.rejected_sequences,
        ]
        .map(|c| c as f64),
    );
    v.push(s.rewards.len() as f64);
    v.extend_from_slice(&s.rewards);
    v.extend(s.lengths.iter().map(|&l| l as f64));
    v
}

/// Adds one process's [`encode`]d sums to `t` and `s`.
fn decode_into(
    v: &[f64],
    t: &mut StepTotals,
    s: &mut SampleSums,
) -> std::result::Result<(), String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> std::result::Result<&[f64], String> {
        let part = v
            .get(at..at + n)
            .ok_or_else(|| format!("{} numbers, more expected", v.len()))?;
        at += n;
        Ok(part)
    };
    let mut lists: Vec<Vec<f64>> = Vec::with_capacity(4);
    for _ in 0..4 {
        let n = take(1)?[0] as usize;
        lists.push(take(n)?.to_vec());
    }
    let counts: Vec<usize> = take(4)?.iter().map(|&c| c as usize).collect();
    let mut lists = lists.into_iter();
    let mut next = || lists.next().expect("four lists");
    t.ratios.merge(RatioStats {
        token_ratios: next(),
        seq_ratios: next(),
        loss_ratios: next(),
        weights: next(),
        clip_high: counts[0],
        clip_low: counts[1],
        clip_dual: counts[2],
        masked: counts[3],
    });
    let mismatch: [f64; 8] = take(8)?.try_into().expect("eight numbers");
    t.mismatch.merge_values(mismatch);
    let x = take(6)?;
    t.ent_sum += x[0];
    t.ent_tokens += x[1];
    t.pg_sum += x[2];
    t.total_sum += x[3];
    t.kl_sum += x[4];
    t.processed_tokens += x[5] as usize;
    let r = take(5)?;
    if r[0] > 0.0 {
        let mut total = t.rejection.unwrap_or_default();
        total.add(&RejectionStats {
            tokens: r[1] as usize,
            rejected_tokens: r[2] as usize,
            sequences: r[3] as usize,
            rejected_sequences: r[4] as usize,
        });
        t.rejection = Some(total);
    }
    let n = take(1)?[0] as usize;
    s.rewards.extend_from_slice(take(n)?);
    s.lengths.extend(take(n)?.iter().map(|&l| l as usize));
    if at != v.len() {
        return Err(format!("{} numbers, {at} expected", v.len()));
    }
    Ok(())
}

fn to_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8]) -> std::result::Result<Vec<f64>, String> {
    if !bytes.len().is_multiple_of(8) {
        return Err(format!("{} bytes is not a list of f64", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MismatchStats;

    /// Two processes' sums, encoded and decoded, equal the sums of their samples taken in one.
    #[test]
    fn decoded_sums_add_up_like_one_process() {
        let stats = |seed: f64| {
            let mut t = StepTotals::default();
            t.ratios.token_ratios = vec![seed, seed + 1.0];
            t.ratios.seq_ratios = vec![seed * 2.0];
            t.ratios.loss_ratios = vec![1.0, 0.5, seed];
            t.ratios.weights = vec![0.25];
            t.ratios.clip_high = 2;
            t.ratios.masked = 1;
            t.mismatch = MismatchStats::default();
            t.mismatch.add(&[seed, -1.0], &[0.0, -1.5], &[1.0, 1.0], 1);
            t.pg_sum = seed;
            t.ent_sum = 3.0;
            t.ent_tokens = 2.0;
            t.processed_tokens = 7;
            t.rejection = Some(RejectionStats {
                tokens: 10,
                rejected_tokens: 2,
                sequences: 3,
                rejected_sequences: 1,
            });
            let s = SampleSums {
                rewards: vec![seed, 0.0],
                lengths: vec![3, 4],
            };
            (t, s)
        };
        let (a, sa) = stats(0.5);
        let (b, sb) = stats(2.0);
        let mut t = StepTotals::default();
        let mut s = SampleSums::default();
        decode_into(&encode(&a, &sa), &mut t, &mut s).unwrap();
        decode_into(&encode(&b, &sb), &mut t, &mut s).unwrap();
        assert_eq!(t.ratios.token_ratios, vec![0.5, 1.5, 2.0, 3.0]);
        assert_eq!(t.ratios.loss_ratios.len(), 6);
        assert_eq!((t.ratios.clip_high, t.ratios.masked), (4, 2));
        assert_eq!(t.pg_sum, 2.5);
        assert_eq!(t.processed_tokens, 14);
        let r = t.rejection.unwrap();
        assert_eq!(
            (
                r.tokens,
                r.rejected_tokens,
                r.sequences,
                r.rejected_sequences
            ),
            (20, 4, 6, 2)
        );
        assert_eq!(s.rewards, vec![0.5, 0.0, 2.0, 0.0]);
        assert_eq!(s.lengths, vec![3, 4, 3, 4]);
        // The mismatch sums of both, as if one process had seen both rows.
        let mut one = MismatchStats::default();
        one.add(
            &[0.5, -1.0, 2.0, -1.0],
            &[0.0, -1.5, 0.0, -1.5],
            &[1.0; 4],
            2,
        );
        for (x, y) in t.mismatch.values().iter().zip(one.values()) {
            assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{x} vs {y}");
        }
        assert!(decode_into(&encode(&a, &sa)[1..], &mut t, &mut s).is_err());
    }
}
