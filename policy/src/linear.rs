//! The CPU GEMM dispatch of every projection: `x W^T + b`, routed to the fastest libtorch (or own)
//! kernel for the shape at hand (weight-first for a few f32 rows, the few-rows kernel in generation,
//! oneDNN for a large LM head), all the same product up to float reassociation.
use std::ops::Deref;

use tch::Tensor;

use crate::onednn_head::OnednnLmHead;

/// A projection's weight as the decoder hands it to [`linear`] and the hooks receive it: the parameter (what it dereferences
/// to) and, for the LM head in a generation call that made one, a copy for oneDNN
/// ([`OnednnLmHead`]) that [`linear`] multiplies by instead of the parameter.
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    tensor: &'a Tensor,
    onednn: Option<&'a OnednnLmHead>,
}

impl<'a> Weight<'a> {
    /// A plain parameter.
    pub fn new(tensor: &'a Tensor) -> Self {
        Weight {
            tensor,
            onednn: None,
        }
    }

    /// `tensor` with its oneDNN copy (made from `tensor`'s current values).
    pub fn with_onednn(tensor: &'a Tensor, onednn: Option<&'a OnednnLmHead>) -> Self {
        Weight { tensor, onednn }
    }
}

impl Deref for Weight<'_> {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        self.tensor
    }
}

/// Rows of `x` up to which [`linear`] multiplies weight-first on CPU.
const FEW_ROWS: i64 = 64;

/// `x W^T + b`. On CPU in f32 with few rows (a decode step), MKL runs `W x^T` 25-50% faster than
/// `x W^T` with a transposed weight (measured for every projection shape of a 512-wide model, batch
/// 16; bf16 goes through oneDNN and gains nothing), so that is what we compute there; the result is
/// the same product up to float reassociation.
///
/// Inside the rollout engine's generation (see [`crate::few_rows_gemm::enable`]), where no gradient is
/// wanted, f32 products of up to [`crate::few_rows_gemm::MAX_ROWS`] rows on an x86 CPU go through
/// the few-rows kernel, which streams the weight once instead of repacking it.
///
/// A weight with a oneDNN copy is multiplied by that copy (no gradient flows through it: it exists
/// only in generation calls). An f32 `x` with a lower-precision weight (a residual stream ALP widened
/// to f32) multiplies by the weight upcast to f32, so the activations keep their precision (and the
/// gradient flows to the weight).
pub fn linear(x: &Tensor, w: &Weight, b: Option<&Tensor>) -> Tensor {
    let with_bias = |y: Tensor| match b {
        Some(b) => y + b,
        None => y,
    };
    if crate::few_rows_gemm::enabled() && !wants_gradient(x, w.tensor) {
        if let Some(y) = crate::few_rows_gemm::linear(x, w.tensor) {
            return with_bias(y);
        }
    }
    if let Some(onednn) = w.onednn {
        if x.kind() == tch::Kind::Float && x.device() == tch::Device::Cpu {
            return with_bias(onednn.forward(x));
        }
    }
    let w = w.tensor;
    if x.kind() != w.kind() {
        let kind = x.kind();
        return linear(
            x,
            &Weight::new(&w.to_kind(kind)),
            b.map(|b| b.to_kind(kind)).as_ref(),
        );
    }
    let size = x.size();
    let in_features = *size.last().expect("x has a feature dimension");
    let rows = x.numel() as i64 / in_features.max(1);
    if x.device() != tch::Device::Cpu
        || x.kind() != tch::Kind::Float
        || rows > FEW_ROWS
        || size.len() < 2
    {
        return x.linear(w, b);
    }
    let y = w.mm(&x.reshape([rows, in_features]).tr()).tr();
    let y = match b {
        Some(b) => y + b,
        None => y.contiguous(),
    };
    let mut out_size = size;
    *out_size.last_mut().expect("non-empty") = w.size()[0];
    y.reshape(out_size.as_slice())
}

/// Whether autograd would record `x W^T`: gradient mode is on and either operand requires a gradient.
fn wants_gradient(x: &Tensor, w: &Tensor) -> bool {
    (x.requires_grad() || w.requires_grad()) && grad_enabled()
}

/// libtorch's gradient mode (set to itself again: libtorch has no getter that tch exposes).
fn grad_enabled() -> bool {
    // SAFETY: sets and restores a thread-local flag.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(1);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}
