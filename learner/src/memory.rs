//! Memory of a learner step: the measured peak resident set of the process, and an estimate of what a
//! run will hold that the app prints before it starts.
//!
//! The measure is Linux's `VmHWM` (peak resident set) from `/proc/self/status`. Writing `5` to
//! `/proc/self/clear_refs` resets it to the current resident set (Linux 4.0 on), so
//! [`PeakRss::start`] before a step and [`PeakRss::gb`] after it give the step's own peak; where the
//! reset is refused (an old kernel, a sandbox) the peak is the process's since it started, and
//! [`PeakRss::per_step`] says so.
//!
//! The estimate ([`estimate`]) counts what a policy-gradient step of a decoder holds: the weights, their
//! gradients, AdamW's two f32 moments (plus the f32 master copy of non-f32 weights), the activations
//! autograd keeps for one micro-batch (all layers' without checkpointing; the kept layer inputs plus
//! one layer's with it), the LM head's logits of one row chunk, the rollout's inference copy and a
//! frozen reference. The activation bytes per token and layer are the tensors the decoder's backward
//! saves (norms, projections, RoPE, attention output, the SwiGLU MLP) in f32; `learner/examples/
//! memory_step.rs` prints the estimate beside the measured peak.
use std::fmt;

use alp_policy::model::parameter_specs;
use alp_policy::ModelConfig;

/// The process's peak resident set, in bytes (`VmHWM`); `None` off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// The process's current resident set, in bytes (`VmRSS`); `None` off Linux.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak resident set to the current one (writes `5` to `/proc/self/clear_refs`); false
/// where that is refused, and the peak stays the process's.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The size from which [`tune_allocator`] has glibc's malloc serve a block by its own `mmap`.
pub const MMAP_THRESHOLD_BYTES: i32 = 128 << 10;

/// Has glibc's malloc give the memory of freed tensors back to the system at once. By default glibc
/// raises its mmap threshold up to 32 MiB as large blocks are freed, after which a layer's
/// activations (a few MiB to tens of MiB each) are carved out of heaps it keeps and fragments: a
/// checkpointed SmolLM2 step at 16 x 256 tokens peaked at 4.7-5.2 GB where its tensors need 2.9
/// (`cargo bench -p alp-learner --bench memory_step`). The checkpointed backward already trims the
/// heaps after each layer ([`release_free_memory`]: 3.1 GB); this goes further, fixing the threshold at
/// [`MMAP_THRESHOLD_BYTES`] (fixing it also stops the raising) and capping the arenas at 2, so every
/// large tensor is a fresh mapping (2.9 GB, and 8.2 GB instead of 11.7 without checkpointing), at the
/// price of page faults on every large allocation: 3x the minor faults and 2.5x the system time of
/// that step. Call it once, early (before threads start, for the arena cap). Returns false (and does
/// nothing) where the allocator is not glibc's.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only sets malloc's parameters; any value is accepted or refused (0).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 && mallopt(M_ARENA_MAX, 2) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Gives the free memory inside glibc's heaps back to the system (`malloc_trim(0)`); false (and
/// nothing) where the allocator is not glibc's.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free pages of malloc's own heaps to the system.
        unsafe { malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The peak resident set of a span of work (a learner step).
#[derive(Debug, Clone, Copy)]
pub struct PeakRss {
    per_step: bool,
}

impl PeakRss {
    /// Starts a span: resets the peak where permitted.
    pub fn start() -> Self {
        Self {
            per_step: reset_peak_rss(),
        }
    }

    /// Whether the peak is the span's own (the reset worked) rather than the process's.
    pub fn per_step(&self) -> bool {
        self.per_step
    }

    /// The peak so far in GB (1e9 bytes); NaN where it cannot be read.
    pub fn gb(&self) -> f64 {
        peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / 1e9)
    }
}

/// What the trained parameters are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trained {
    /// Every weight of the model.
    Full,
    /// This many parameters of an adapter (f32), the model frozen.
    Adapter(u64),
}

/// What [`estimate`] needs to know about a run besides the model's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan {
    /// Bytes per weight of the trained model (4 for f32, 2 for bf16).
    pub weight_bytes: u64,
    pub trained: Trained,
    /// Rows per micro-batch.
    pub micro_batch_rows: u64,
    /// Longest prompt + completion of a row (tokens, padding counted).
    pub seq_len: u64,
    /// Longest completion of a row (tokens): the positions the LM head runs on.
    pub completion_len: u64,
    pub checkpointing: bool,
    /// Most f32 logits bytes per LM head chunk ([`crate::batch::HEAD_CHUNK_BYTES`]).
    pub head_chunk_bytes: u64,
    /// Bytes per weight of the rollout's inference copy; 0 when the rollout shares the learner's
    /// weights or runs elsewhere.
    pub inference_bytes: u64,
    /// A frozen reference model (KL penalty) of the trained model's dtype.
    pub reference: bool,
}

/// Bytes by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub grads: u64,
    pub optimizer: u64,
    /// Activations autograd keeps for one micro-batch.
    pub activations: u64,
    /// Logits (and their log-softmax and gradients) of one LM head chunk.
    pub logits: u64,
    pub inference_copy: u64,
    pub reference: u64,
    /// The process before any tensor: libtorch's code and thread pools ([`RUNTIME_BYTES`]).
    pub runtime: u64,
}

/// Resident set of a learner process before its tensors: libtorch's code and data, its thread pools
/// (0.44 GB measured on the CPU by the memory_step benchmark: resident set before a LoRA step less the
/// model's weights).
pub const RUNTIME_BYTES: u64 = 450_000_000;

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights
            + self.grads
            + self.optimizer
            + self.activations
            + self.logits
            + self.inference_copy
            + self.reference
            + self.runtime
    }

    /// `(label, bytes)` per part, then the total.
    pub fn parts(&self) -> [(&'static str, u64); 9] {
        [
            ("runtime", self.runtime),
            ("weights", self.weights),
            ("gradients", self.grads),
            ("optimizer", self.optimizer),
            ("activations / micro-batch", self.activations),
            ("logits chunk", self.logits),
            ("inference copy", self.inference_copy),
            ("reference", self.reference),
            ("total", self.total()),
        ]
    }
}

impl fmt::Display for MemoryEstimate {
    /// One line: `weights 0.54 GB, gradients ..., total 2.9 GB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .parts()
            .iter()
            .filter(|(name, b)| *b > 0 || *name == "total")
            .map(|(name, b)| format!("{name} {:.2} GB", *b as f64 / 1e9))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Number of parameters of a model with `config` (a tied LM head counted once).
pub fn parameter_count(config: &ModelConfig) -> u64 {
    parameter_specs(config)
        .iter()
        .map(|s| s.shape.iter().product::<i64>() as u64)
        .sum()
}

/// f32 values autograd keeps per token for one decoder layer's backward: the two RMSNorms' normalised
/// and scaled outputs, q, k and v, their rotated copies and `rotate_half`'s, the attention output, the
/// residual sum after attention, and the MLP's gate, up, SiLU and product. (Calibrated on SmolLM2's
/// shape: the trunk of a 16 x 256 step held 11.8k floats per token and layer against 12.1k counted.)
pub fn activation_floats_per_token(config: &ModelConfig) -> u64 {
    let d = config.hidden_size as u64;
    let q = (config.num_attention_heads * config.head_dim) as u64;
    let kv = (config.num_key_value_heads * config.head_dim) as u64;
    let i = config.intermediate_size as u64;
    let norms = 2 * 2 * d;
    let attention = (q + 2 * kv) + 2 * (q + kv) + q;
    let residual = d;
    let mlp = 4 * i;
    norms + attention + residual + mlp
}

/// The estimate of a step of a model with `config` under `plan`: a bound, since the parts are summed
/// although the logits chunk and (with checkpointing) the recomputed layer are not alive at once.
pub fn estimate(config: &ModelConfig, plan: &MemoryPlan) -> MemoryEstimate {
    let params = parameter_count(config);
    let weights = params * plan.weight_bytes;
    let (grads, optimizer) = match plan.trained {
        Trained::Full => {
            let master = if plan.weight_bytes == 4 { 0 } else { 4 };
            (weights, params * (8 + master))
        }
        Trained::Adapter(n) => (n * 4, n * 8),
    };
    let tokens = plan.micro_batch_rows * plan.seq_len;
    let per_layer = tokens * activation_floats_per_token(config) * 4;
    let layers = config.num_hidden_layers as u64;
    let hidden = tokens * config.hidden_size as u64 * 4;
    // The final hidden states, their detached copy and its gradient.
    let top = 3 * hidden;
    let activations = if plan.checkpointing {
        layers * hidden + per_layer + top
    } else {
        layers * per_layer + top
    };
    let row_logits = plan.completion_len * config.vocab_size as u64 * 4;
    let rows = (plan.head_chunk_bytes / row_logits.max(1)).clamp(1, plan.micro_batch_rows.max(1));
    // Logits, their log-softmax, the entropy's product and the gradient of the logits.
    let logits = 4 * rows * row_logits;
    MemoryEstimate {
        weights,
        grads,
        optimizer,
        activations,
        logits,
        inference_copy: params * plan.inference_bytes,
        reference: if plan.reference { weights } else { 0 },
        runtime: RUNTIME_BYTES,
    }
}

/// With `ALP_MEMORY_TRACE` set, prints the resident set and the peak so far at `label` to stderr, and
/// the seconds since the previous trace of this thread (the phases of a learner step call it; for
/// finding where a step's memory and time go).
pub fn trace(label: &str) {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    if std::env::var_os("ALP_MEMORY_TRACE").is_some() {
        let gb = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / 1e9);
        let now = std::time::Instant::now();
        let since = LAST
            .with(|l| l.replace(Some(now)))
            .map(|t| (now - t).as_secs_f64());
        eprintln!(
            "[memory] {label}: resident {:.3} GB, peak {:.3} GB, {:.2} s since the last trace",
            gb(rss_bytes()),
            gb(peak_rss_bytes()),
            since.unwrap_or(f64::NAN)
        );
    }
}
