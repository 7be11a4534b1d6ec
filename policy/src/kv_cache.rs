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
            let _ = self.keys[layer].scatter_(2, cols, k);
            let _ = self.values[layer].scatter_(2, cols, v);
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
