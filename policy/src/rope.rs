//! Rotary position embeddings in the half-split ("rotate_half") layout of HF checkpoints.
use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies `theta^(-2i/d)`, with the config's long-context scaling applied.
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor,
}

/// `inv_freq` as HF's `ROPE_INIT_FUNCTIONS` compute it (in f32 for the default; the llama3 rule
/// works on the same f32 values).
fn inv_freq_values(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| {
            // HF: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), in f32 arithmetic.
            let exponent = i as f32 / d as f32;
            1.0f32 / (cfg.rope_theta as f32).powf(exponent)
        })
        .collect();
    match &cfg.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / *factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let f = f as f64;
                    let wavelen = 2.0 * PI / f;
                    let scaled = if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        f
                    };
                    // Wavelengths are finite and positive, so ">=" and "<=" are the negations HF writes.
                    let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    if medium {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect()
        }
    }
}

impl Rotary {
    pub fn new(cfg: &ModelConfig, device: Device) -> Self {
        let inv_freq = Tensor::from_slice(&inv_freq_values(cfg)).to_device(device);
        Rotary { inv_freq }
    }

    /// `(cos, sin)` of shape `[b, 1, s, head_dim]` for `positions` `[b, s]`, computed in f32 and cast
    /// to `kind` as HF does.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (
            emb.cos().to_kind(kind).unsqueeze(1),
            emb.sin().to_kind(kind).unsqueeze(1),
        )
    }

    /// `x * cos + rotate_half(x) * sin` for `x` `[b, heads, s, head_dim]`.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let x1 = x.narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
        x * cos + rotated * sin
    }
}
