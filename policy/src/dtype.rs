//! The compute dtypes a model runs in, by the names configs and flags use.
use tch::Kind;

use crate::error::PolicyError;

alp_macros::string_enum! {
    /// A compute dtype: `f32`, `bf16` or `f16` (the HF and PyTorch spellings parse too).
    pub enum Dtype: "dtype" {
        F32 => "f32" | "float32" | "float",
        Bf16 => "bf16" | "bfloat16",
        F16 => "f16" | "float16" | "half",
    }
}

impl Dtype {
    /// The libtorch kind of this dtype.
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
        }
    }
}

/// Parses a dtype name to its libtorch kind (for names that are not a typed [`Dtype`] already, such
/// as an environment variable of a benchmark).
pub fn parse_kind(name: &str) -> Result<Kind, PolicyError> {
    name.parse::<Dtype>()
        .map(Dtype::kind)
        .map_err(|_| PolicyError::UnsupportedComputeDtype(name.to_string()))
}

/// The libtorch kind of a safetensors dtype we read and write (f32, bf16, f16); `None` for others.
pub fn kind_of_safetensors(dtype: safetensors::Dtype) -> Option<Kind> {
    match dtype {
        safetensors::Dtype::F32 => Some(Kind::Float),
        safetensors::Dtype::BF16 => Some(Kind::BFloat16),
        safetensors::Dtype::F16 => Some(Kind::Half),
        _ => None,
    }
}

/// The safetensors dtype of a libtorch kind we read and write (f32, bf16, f16); `None` for others.
pub fn safetensors_dtype_of(kind: Kind) -> Option<safetensors::Dtype> {
    match kind {
        Kind::Float => Some(safetensors::Dtype::F32),
        Kind::BFloat16 => Some(safetensors::Dtype::BF16),
        Kind::Half => Some(safetensors::Dtype::F16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_names_its_kind() {
        for (name, kind) in [
            ("f32", Kind::Float),
            ("float32", Kind::Float),
            ("float", Kind::Float),
            ("bf16", Kind::BFloat16),
            ("bfloat16", Kind::BFloat16),
            ("f16", Kind::Half),
            ("float16", Kind::Half),
            ("half", Kind::Half),
        ] {
            assert_eq!(parse_kind(name).unwrap(), kind, "{name}");
        }
        assert_eq!("float32".parse::<Dtype>().unwrap().as_str(), "f32");
        assert!(parse_kind("f64").is_err());
    }
}
