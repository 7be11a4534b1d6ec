//! How a requested compute dtype becomes the dtype parameters are stored and computed in.
//!
//! bf16 is the usual inference dtype (the training-inference mismatch it causes is what the learner's
//! corrections exist for), but a CPU without bf16 arithmetic (AVX2 only, no AVX512_BF16 or AMX) runs
//! libtorch's bf16 matmuls about ten times slower than f32. There a bf16 model is better held as
//! **bf16-rounded f32**: every weight is rounded to the nearest bf16 value and stored as f32, and so
//! are every projection's output (the logits too) and the residual stream after each attention and
//! MLP block and at the final norm, the points where a bf16 model's activations are bf16; the
//! arithmetic runs in f32 at f32 speed. What it does not round are the intermediates inside attention
//! and the norms, which a bf16 model also rounds, so its mismatch against an f32 learner is real and of
//! the same size as native bf16's (`policy/tests/precision.rs` measures both against libtorch's native
//! bf16).
use tch::{Device, Kind, Tensor};

alp_macros::string_enum! {
    /// How a model asked to run in bf16 computes (`model.bf16_compute`).
    #[derive(Default)]
    pub enum Bf16Compute: "bf16_compute" {
        /// Native bf16 on CUDA and on CPUs with bf16 arithmetic (AVX512_BF16 or AMX), bf16-rounded
        /// f32 on the others.
        #[default]
        Auto => "auto",
        /// libtorch's bf16 kernels whatever the device.
        Native => "native",
        /// bf16-rounded weights, projection outputs and residual stream; f32 arithmetic.
        RoundedF32 => "rounded-f32" | "rounded_f32",
    }
}

impl Bf16Compute {
    /// The choice made for `device`: `Native` or `RoundedF32`, never `Auto`.
    pub fn resolve(self, device: Device) -> Bf16Compute {
        match self {
            Bf16Compute::Auto if device != Device::Cpu || cpu_has_bf16_arithmetic() => {
                Bf16Compute::Native
            }
            Bf16Compute::Auto => Bf16Compute::RoundedF32,
            chosen => chosen,
        }
    }
}

/// Whether this CPU has bf16 arithmetic that libtorch's kernels use (x86 AVX512_BF16, which every
/// AMX CPU has too), and nothing caps libtorch below it: `ATEN_CPU_CAPABILITY` set to `avx2` or
/// `default`, or `ONEDNN_MAX_CPU_ISA` set to an ISA without bf16, make libtorch run as on a CPU
/// without it, so they count as its absence.
pub fn cpu_has_bf16_arithmetic() -> bool {
    let capped_aten = std::env::var("ATEN_CPU_CAPABILITY")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "avx2" | "default"))
        .unwrap_or(false);
    let capped_onednn = std::env::var("ONEDNN_MAX_CPU_ISA")
        .map(|v| {
            let v = v.to_ascii_uppercase();
            !(v.contains("BF16") || v.contains("AMX") || v.contains("FP16") || v == "ALL")
        })
        .unwrap_or(false);
    !capped_aten && !capped_onednn && cpu_reports_bf16()
}

#[cfg(target_arch = "x86_64")]
fn cpu_reports_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_reports_bf16() -> bool {
    false
}

/// The storage dtype of a model's parameters and the rounding applied to them and to its residual
/// stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// The dtype parameters are stored and computed in.
    pub storage: Kind,
    /// `Some(BFloat16)` for bf16-rounded f32: values are rounded to it, then stored as `storage`.
    pub rounding: Option<Kind>,
}

impl Precision {
    /// The precision of a model requested in `kind` on `device`.
    pub fn new(kind: Kind, bf16: Bf16Compute, device: Device) -> Precision {
        if kind == Kind::BFloat16 && bf16.resolve(device) == Bf16Compute::RoundedF32 {
            Precision {
                storage: Kind::Float,
                rounding: Some(Kind::BFloat16),
            }
        } else {
            Precision {
                storage: kind,
                rounding: None,
            }
        }
    }

    /// `t` in this precision: rounded if the precision rounds, in the storage dtype.
    pub fn apply(&self, t: &Tensor) -> Tensor {
        match self.rounding {
            Some(r) => t.to_kind(r).to_kind(self.storage),
            None => t.to_kind(self.storage),
        }
    }

    /// Rounds activations in place of a bf16 model's own rounding (identity without rounding).
    pub(crate) fn round_activations(&self, t: Tensor) -> Tensor {
        match self.rounding {
            Some(r) if t.kind() != r => t.to_kind(r).to_kind(t.kind()),
            _ => t,
        }
    }

    /// How the model computes, for logs and benchmarks: `Float (native)`, `BFloat16 (native)` or
    /// `bf16-rounded f32 (...)`.
    pub fn describe(&self) -> String {
        match self.rounding {
            Some(_) => {
                "bf16-rounded f32 (bf16 weights, projection outputs and residual stream; f32 \
                 arithmetic)"
                    .into()
            }
            None => format!("{:?} (native)", self.storage),
        }
    }
}
