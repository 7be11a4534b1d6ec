//! Adaptive Layerwise Perturbation (arXiv 2603.19470): learnable Gaussian noise on each decoder layer's
//! input hidden state, in the training forward only.
//!
//! `h_l <- h_l + sigma_l * eps`, `eps ~ N(0, I)` per token and dimension, injected through the
//! `layer_input` hook, i.e. before the layer's input norm so the noise also rides the residual stream.
//! `sigma_l = exp(log_sigma_l)` with one learnable scalar per perturbed layer, initialised to `sigma0`
//! and trained by the same loss (reparameterisation gradient `sum(dL/dh * eps) * sigma`). The
//! logits-only ablation adds `sigma * eps` to the final logits with a single learnable scale.
//!
//! Noise is a pure function of (run seed, learner step, forward index within the step, layer) through
//! the counter-based generator of [`crate::noise`], so recomputing a forward reproduces it bit for bit
//! and no global RNG state is touched. The forward index counts the training forwards of every process
//! of a learner spread over several (`crate::step::prepare::GlobalLayout`), so processes never draw
//! the same noise, and N processes holding the parts of each mini-batch draw one process's noise.
//! The hooks exist only while the learner runs a training forward: rollouts, evaluation, `lp_old` and
//! the mismatch forward use the plain model.
use std::collections::BTreeMap;
use std::ops::Range;

use alp_policy::ForwardHooks;
use tch::{Device, Kind, Tensor};

use crate::metric_names as names;
use crate::noise::{standard_normal, NoiseKey};
use crate::settings::{AlpSettings, AlpTarget, SettingsError};

/// The noise slot of the logits-only variant (layers use their index).
pub const LOGITS_SLOT: u64 = u64::MAX;

/// The learnable noise scales and the noise recipe.
#[derive(Debug)]
pub struct AlpPerturbation {
    target: AlpTarget,
    layers: Range<usize>,
    /// `[n]` f32 leaf with grad: one entry per perturbed layer, or one for the logits.
    log_sigma: Tensor,
    seed: u64,
}

impl AlpPerturbation {
    /// Scales initialised to `sigma0` for the configured layers of a `num_layers`-layer model.
    pub fn new(
        settings: &AlpSettings,
        num_layers: usize,
        seed: u64,
        device: Device,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        let layers = match settings.target {
            AlpTarget::Layers => settings.layer_range(num_layers)?,
            AlpTarget::Logits => 0..0,
        };
        let n = if settings.target == AlpTarget::Logits {
            1
        } else {
            layers.len() as i64
        };
        let log_sigma =
            Tensor::full([n], settings.sigma0.ln(), (Kind::Float, device)).set_requires_grad(true);
        Ok(Self {
            target: settings.target,
            layers,
            log_sigma,
            seed,
        })
    }

    pub fn target(&self) -> AlpTarget {
        self.target
    }

    /// Perturbed decoder layers (empty for the logits-only variant).
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// The learnable `[n]` log-scales (a leaf with grad; the optimizer updates it in place).
    pub fn log_sigma(&self) -> &Tensor {
        &self.log_sigma
    }

    /// Current `sigma` per perturbed layer (or the single logits scale).
    pub fn sigmas(&self) -> Vec<f64> {
        let s = self
            .log_sigma
            .detach()
            .exp()
            .to_kind(Kind::Double)
            .to_device(Device::Cpu);
        Vec::<f64>::try_from(s).expect("log_sigma is a 1-d float tensor")
    }

    /// The noise identity of one forward's slot (layer index, or [`LOGITS_SLOT`]).
    pub fn noise_key(&self, step: u64, forward: u64, slot: u64) -> NoiseKey {
        NoiseKey {
            seed: self.seed,
            step,
            forward,
            slot,
        }
    }

    /// Hooks for training forward number `forward` of learner step `step`.
    pub fn hooks(&self, step: u64, forward: u64) -> AlpHooks<'_> {
        AlpHooks {
            alp: self,
            step,
            forward,
        }
    }

    /// `alp/sigma_{mean,min,max}` and `alp/sigma_l{i}` (or `alp/sigma_logits`).
    pub fn metrics(&self, out: &mut BTreeMap<String, f64>) {
        let sig = self.sigmas();
        let n = sig.len().max(1) as f64;
        out.insert(names::ALP_SIGMA_MEAN.into(), sig.iter().sum::<f64>() / n);
        out.insert(
            names::ALP_SIGMA_MIN.into(),
            sig.iter().copied().fold(f64::INFINITY, f64::min),
        );
        out.insert(
            names::ALP_SIGMA_MAX.into(),
            sig.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        match self.target {
            AlpTarget::Layers => {
                for (l, s) in self.layers.clone().zip(&sig) {
                    out.insert(names::alp_sigma_layer(l), *s);
                }
            }
            AlpTarget::Logits => {
                out.insert(names::ALP_SIGMA_LOGITS.into(), sig[0]);
            }
        }
    }

    /// `x + sigma * eps`, returned in f32 whatever `x`'s dtype: rounding back to bf16 would erase noise
    /// below half an ulp of the activations (sigma ~1e-6..1e-3 against activations of order 1, while
    /// `log_sigma` still got a gradient for it), and a bf16 forward after it would bury what is left
    /// in its own rounding. The decoder computes in f32 from here on (bf16 weights upcast per matmul),
    /// so the perturbation moves the log-probs by what sigma implies.
    fn perturb(&self, x: Tensor, index: i64, key: NoiseKey) -> Tensor {
        let eps = standard_normal(&x.size(), key, x.device());
        let sigma = self.log_sigma.get(index).exp();
        x.to_kind(Kind::Float) + eps * sigma
    }
}

/// The forward hooks of one training forward.
#[derive(Debug, Clone, Copy)]
pub struct AlpHooks<'a> {
    alp: &'a AlpPerturbation,
    step: u64,
    forward: u64,
}

impl ForwardHooks for AlpHooks<'_> {
    fn layer_input(&self, layer: usize, h: Tensor) -> Tensor {
        let alp = self.alp;
        if alp.target != AlpTarget::Layers || !alp.layers.contains(&layer) {
            return h;
        }
        let key = alp.noise_key(self.step, self.forward, layer as u64);
        alp.perturb(h, (layer - alp.layers.start) as i64, key)
    }

    fn logits(&self, logits: Tensor) -> Tensor {
        let alp = self.alp;
        if alp.target != AlpTarget::Logits {
            return logits;
        }
        alp.perturb(
            logits,
            0,
            alp.noise_key(self.step, self.forward, LOGITS_SLOT),
        )
    }
}
