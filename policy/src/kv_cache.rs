//! A preallocated key/value cache: new keys are written in place, so a decode step costs no copy of
//! the past (no re-concatenation per step).
use tch::{Device, Kind, Tensor};

/// Per-layer `[batch, kv_heads, capacity, head_dim]` buffers and the number of filled positions.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
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
    }

    /// Keeps only the given rows (`rows`: int64 indices), e.g. to drop finished sequences.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, rows);
        }
    }
}
