//! Gathers of plain values: what EGGROLL's ranks exchange (one fitness per population member).
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;

impl ProcessGroup {
    /// Every rank's `values`, in rank order (lengths may differ). Exact: the f64 bits travel.
    pub fn all_gather_f64(&self, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.all_gather_bytes(&bytes)?
            .into_iter()
            .enumerate()
            .map(|(rank, b)| {
                if b.len() % 8 != 0 {
                    return Err(DistError::Argument {
                        op: "all_gather_f64",
                        message: format!("rank {rank} sent {} bytes, not f64s", b.len()),
                    });
                }
                Ok(b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect())
            })
            .collect()
    }

    /// Assembles `total` values of which each rank holds some, as `(index, value)` pairs: every
    /// rank gets the whole vector in index order. An index that no rank, or two ranks, sent is an
    /// error on every rank (naming the index and ranks), so no rank goes on with a vector another
    /// rank does not have. EGGROLL: each rank evaluates its members, and every rank then makes the
    /// same update from the whole population's fitness.
    pub fn gather_indexed(&self, mine: &[(usize, f64)], total: usize) -> Result<Vec<f64>> {
        let flat: Vec<f64> = mine.iter().flat_map(|&(i, v)| [i as f64, v]).collect();
        let mut out: Vec<Option<(usize, f64)>> = vec![None; total];
        for (rank, pairs) in self.all_gather_f64(&flat)?.into_iter().enumerate() {
            for pair in pairs.chunks_exact(2) {
                let (index, value) = (pair[0] as usize, pair[1]);
                let err = |message: String| DistError::Argument {
                    op: "gather_indexed",
                    message,
                };
                let slot = out.get_mut(index).ok_or_else(|| {
                    err(format!(
                        "rank {rank} sent index {index}, past the {total} expected"
                    ))
                })?;
                if let Some((other, _)) = slot {
                    return Err(err(format!(
                        "index {index} came from rank {other} and rank {rank}"
                    )));
                }
                *slot = Some((rank, value));
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.map(|(_, x)| x).ok_or_else(|| DistError::Argument {
                    op: "gather_indexed",
                    message: format!("no rank sent index {i} of {total}"),
                })
            })
            .collect()
    }
}
