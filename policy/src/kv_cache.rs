//! A preallocated key/value cache: new keys are written in place, so a decode step costs no copy of
//! the past (no re-concatenation per step).
use tch::{Device, Kind, Tensor};

/// Per-layer `[batch, kv_heads, capacity, head_dim]` buffers and the number of filled positions.
///
/// Two ways to write: every row at the same column `len` (a batch whose rows started together), or,
/// for continuous batching, one decode token per row at that row's own column
/// ([`KvCache::set_row_columns`]); rows then occupy different column ranges and the caller's key mask
/// says which columns of a row are real.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
    /// `[b, kv_heads, 1, head_dim]` int64: the column each row's next single-token write goes to.
    row_columns: Option<Tensor>,
}

impl KvCache {
    /// An empty cache for `layers` layers holding up to `capacity` positions per row.
    pub fn new(
        layers: usize,
        batch: i64,
        kv_heads: i64,
        head_dim: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let buffer = || Tensor::zeros([batch, kv_heads, capacity, head_dim], (kind, device));
        KvCache {
            keys: (0..layers).map(|_| buffer()).collect(),
            values: (0..layers).map(|_| buffer()).collect(),
            len: 0,
            capacity,
            row_columns: None,
        }
    }

    /// Positions filled so far (the same for every row; padding is masked, not skipped).
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Writes `k`, `v` (`[b, kv_heads, s, d]`) of `layer` after the filled part and returns views of
    /// all keys and values so far. [`Self::advance`] moves the length once every layer has written.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let s = k.size()[2];
        if let Some(cols) = &self.row_columns {
            assert_eq!(s, 1, "per-row columns take one decode token per row");
            scatter_columns(&self.keys[layer], cols, k);
            scatter_columns(&self.values[layer], cols, v);
            return (
                self.keys[layer].narrow(2, 0, self.len + 1),
                self.values[layer].narrow(2, 0, self.len + 1),
            );
        }
        assert!(
            self.len + s <= self.capacity,
            "KV cache overflow: {} + {s} positions exceed the capacity {}",
            self.len,
            self.capacity
        );
        self.keys[layer].narrow(2, self.len, s).copy_(k);
        self.values[layer].narrow(2, self.len, s).copy_(v);
        (
            self.keys[layer].narrow(2, 0, self.len + s),
            self.values[layer].narrow(2, 0, self.len + s),
        )
    }

    pub(crate) fn advance(&mut self, s: i64) {
        self.len += s;
        self.row_columns = None;
    }

    /// The next forward writes one token per row, row `r` at column `columns[r]` (each below the
    /// capacity), and attends over columns `0..=max(columns)`: queries then sit at column
    /// `len() = max(columns)` for the attention bias, so the key mask alone decides what a row sees.
    pub fn set_row_columns(&mut self, columns: &[i64]) {
        let b = self.keys[0].size()[0];
        assert_eq!(columns.len() as i64, b, "one column per cache row");
        let max = columns.iter().copied().max().unwrap_or(0);
        assert!(
            max < self.capacity && columns.iter().all(|&c| c >= 0),
            "KV cache overflow: column {max} with capacity {}",
            self.capacity
        );
        let (_, heads, _, d) = self.keys[0].size4().expect("cache buffers are 4-d");
        let device = self.keys[0].device();
        let cols = Tensor::from_slice(columns)
            .to_device(device)
            .view([b, 1, 1, 1])
            .expand([b, heads, 1, d], false)
            .contiguous();
        self.row_columns = Some(cols);
        self.len = max;
    }

    /// Copies columns `0..width` of every row of `source` into rows `rows` (int64 indices) of this
    /// cache: how a continuous batch takes in newly prefilled requests.
    pub fn copy_rows_from(&mut self, source: &KvCache, rows: &Tensor, width: i64) {
        for (mine, theirs) in self
            .keys
            .iter_mut()
            .zip(&source.keys)
            .chain(self.values.iter_mut().zip(&source.values))
        {
            let _ = mine
                .narrow(2, 0, width)
                .index_copy_(0, rows, &theirs.narrow(2, 0, width));
        }
    }

    /// Keeps only the given rows (`rows`: int64 indices), e.g. to drop finished sequences.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, rows);
        }
    }
}

/// Writes `src` into `cache` at the per-row columns `cols` (dim 2). libtorch's scatter of 16-bit floats
/// is an order of magnitude slower than of 16-bit integers, so bf16/f16 are scattered as their bits
/// (the same bytes land in the same places).
fn scatter_columns(cache: &Tensor, cols: &Tensor, src: &Tensor) {
    match cache.kind() {
        Kind::BFloat16 | Kind::Half => {
            let _ = cache.view_dtype(Kind::Int16).scatter_(
                2,
                cols,
                &src.contiguous().view_dtype(Kind::Int16),
            );
        }
        _ => {
            let _ = cache.shallow_clone().scatter_(2, cols, src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-row column writes put each row's key and value at its own column, bit for bit, in every
    /// dtype (bf16 and f16 take the integer-bits path), and touch nothing else.
    #[test]
    fn per_row_columns_write_each_row_at_its_column() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let (b, heads, cap, d) = (3, 2, 6, 4);
            let mut cache = KvCache::new(1, b, heads, d, cap, kind, Device::Cpu);
            let columns = [4i64, 0, 2];
            cache.set_row_columns(&columns);
            let k = Tensor::randn([b, heads, 1, d], (Kind::Float, Device::Cpu)).to_kind(kind);
            let v = Tensor::randn([b, heads, 1, d], (Kind::Float, Device::Cpu)).to_kind(kind);
            let _ = cache.append(0, &k, &v);
            for (buffer, written) in [(&cache.keys[0], &k), (&cache.values[0], &v)] {
                let expected = Tensor::zeros([b, heads, cap, d], (kind, Device::Cpu));
                for (r, &c) in columns.iter().enumerate() {
                    expected
                        .get(r as i64)
                        .narrow(1, c, 1)
                        .copy_(&written.get(r as i64));
                }
                assert!(buffer.equal(&expected), "{kind:?}");
            }
        }
    }
}
