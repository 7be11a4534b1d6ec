//! LoRA adapters: low-rank terms on a frozen model's projections, `W x + scale * B A x`, in PEFT's
//! format (`adapter_config.json` + `adapter_model.safetensors`, read and written by `peft_io.rs`).
//!
//! ```text
//! config.rs   LoraConfig (r, lora_alpha, target_modules, use_rslora, ...) <-> adapter_config.json
//! peft_io.rs  LoraAdapter::{save, load}: PEFT's files, everything checked before anything is built
//! error.rs    LoraError: the file, the key, what is wrong, the fix
//! ```
//!
//! A [`LoraAdapter`] holds, per adapted projection ([`LinearSite`]), A `[r, in]` and B `[out, r]` in
//! f32 on the model's device, as trainable variables of its own [`VarStore`] under their PEFT names
//! (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, [`crate::names::lora_a`]). It
//! acts on a forward as a hook ([`ForwardHooks::linear_delta`]: `scale * (x A^T) B^T` in f32, which
//! the decoder casts to the product's dtype), so it composes with ALP through [`crate::Stack`]; or it
//! is merged into a model's weights ([`LoraAdapter::merge_into`]: `W + scale B A`, rounded once to
//! the model's dtype).
mod config;
mod error;
mod peft_io;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use config::{model_sites, same_base_model, LoraConfig, TargetModules};
pub use error::LoraError;
pub use peft_io::{save_peft, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

use crate::hooks::{ForwardHooks, LinearSite, Weight};
use crate::model::CausalLM;
use crate::names;

/// The two factors adapting one projection.
#[derive(Debug)]
pub struct LoraFactors {
    pub site: LinearSite,
    /// `[r, in]`, f32.
    pub a: Tensor,
    /// `[out, r]`, f32.
    pub b: Tensor,
}

/// A LoRA adapter for one model: its settings and the factors of each adapted projection.
pub struct LoraAdapter {
    config: LoraConfig,
    scale: f64,
    factors: Vec<LoraFactors>,
    index: HashMap<LinearSite, usize>,
    vs: VarStore,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("config", &self.config)
            .field("sites", &self.factors.len())
            .finish()
    }
}

/// The weight projection `site` multiplies in `model` (`[out, in]`; the embedding for a tied head).
pub(crate) fn site_weight(
    model: &CausalLM,
    params: &HashMap<String, Tensor>,
    site: LinearSite,
) -> Tensor {
    match site.layer {
        None => model.lm_head_weight().shallow_clone(),
        Some(_) => params
            .get(&site.weight_name())
            .expect("every site of the model config has a weight")
            .shallow_clone(),
    }
}

impl LoraAdapter {
    /// A fresh adapter on `model` as PEFT initialises one: A kaiming-uniform (`a = sqrt(5)`, i.e.
    /// uniform in `+-1/sqrt(in)`) from `seed`, B zero, so the adapted model starts as the base model.
    pub fn init(config: LoraConfig, model: &CausalLM, seed: u64) -> Result<Self, LoraError> {
        let source = "the LoRA settings";
        config.validate(source)?;
        let sites = config.sites(model.config(), source)?;
        let params: HashMap<String, Tensor> = model.var_store().variables();
        let mut rng = StdRng::seed_from_u64(seed);
        let parts = sites
            .into_iter()
            .map(|site| {
                let size = site_weight(model, &params, site).size();
                let (out, inp) = (size[0], size[1]);
                let bound = 1.0 / (inp as f32).sqrt();
                let values: Vec<f32> = (0..config.r * inp)
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect();
                let a = Tensor::from_slice(&values).view([config.r, inp]);
                let b = Tensor::zeros([out, config.r], (Kind::Float, Device::Cpu));
                (site, a, b)
            })
            .collect();
        Ok(Self::from_parts(config, model.device(), parts))
    }

    /// The adapter from already-checked factors (f32 or convertible, any device), moved to `device`
    /// and registered as trainable variables under their PEFT names.
    fn from_parts(
        config: LoraConfig,
        device: Device,
        parts: Vec<(LinearSite, Tensor, Tensor)>,
    ) -> Self {
        let vs = VarStore::new(device);
        let register = |name: String, t: Tensor| {
            let mut path = vs.root();
            let mut segments: Vec<&str> = name.split('.').collect();
            let leaf = segments.pop().expect("PEFT names have a leaf");
            for s in segments {
                path = path.sub(s);
            }
            path.add(leaf, t.to_kind(Kind::Float).to_device(device), true)
        };
        let factors: Vec<LoraFactors> = parts
            .into_iter()
            .map(|(site, a, b)| LoraFactors {
                site,
                a: register(names::lora_a(site), a),
                b: register(names::lora_b(site), b),
            })
            .collect();
        let index = factors
            .iter()
            .enumerate()
            .map(|(i, f)| (f.site, i))
            .collect();
        LoraAdapter {
            scale: config.scale(),
            config,
            factors,
            index,
            vs,
        }
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The factor on `B A x` ([`LoraConfig::scale`]).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The adapted projections, in the model's order.
    pub fn sites(&self) -> Vec<LinearSite> {
        self.factors.iter().map(|f| f.site).collect()
    }

    /// The factors of every adapted projection, in the model's order.
    pub fn factors(&self) -> &[LoraFactors] {
        &self.factors
    }

    /// The factors adapting `site`, if it is adapted.
    pub fn site(&self, site: LinearSite) -> Option<&LoraFactors> {
        self.index.get(&site).map(|&i| &self.factors[i])
    }

    /// The var store holding every A and B (trainable, f32) under its PEFT name: what an optimizer
    /// over the adapter alone is built from.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Every factor under its PEFT name (`...q_proj.lora_A.weight`), sorted by name; the tensors
    /// share storage with the adapter.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// Copies `(PEFT name, tensor)` pairs into the adapter's factors (any float dtype, converted to
    /// f32): how a checkpoint's or a trainer's values are installed. Refused, with nothing copied,
    /// when a name is not one of this adapter's, a shape differs or a value is not finite.
    pub fn set_named_tensors(&self, tensors: &[(String, Tensor)]) -> Result<(), LoraError> {
        let vars = self.vs.variables();
        let bad = |name: &str, problem: String, fix: &str| {
            LoraError::invalid("the adapter update", name, problem, fix)
        };
        for (name, t) in tensors {
            let var = vars.get(name).ok_or_else(|| {
                bad(
                    name,
                    "is not a factor of this adapter".into(),
                    "send the adapter's own PEFT names (LoraAdapter::named_tensors)",
                )
            })?;
            if var.size() != t.size() {
                let problem = format!("is {:?}, the adapter's {:?}", t.size(), var.size());
                return Err(bad(
                    name,
                    problem,
                    "send factors of the adapter's rank and shapes",
                ));
            }
            if !all_finite(t) {
                let problem = "holds non-finite values".to_string();
                return Err(bad(name, problem, "send finite values"));
            }
        }
        tch::no_grad(|| {
            for (name, t) in tensors {
                let mut var = vars[name].shallow_clone();
                var.copy_(&t.to_kind(Kind::Float));
            }
        });
        Ok(())
    }

    /// `scale * B A` (`[out, in]`, f32) for an adapted `site`: what merging adds to its weight.
    pub fn delta_weight(&self, site: LinearSite) -> Option<Tensor> {
        let f = self.site(site)?;
        Some(tch::no_grad(|| f.b.matmul(&f.a) * self.scale))
    }

    /// `(HF weight name, W + scale B A)` in f32 for every adapted projection of `base` (whose
    /// weights are the un-adapted ones): a subset weight update that turns a copy of `base` into the
    /// merged model. Refused for an adapted LM head of a tied model (merging it would change the
    /// embedding too).
    pub fn merged_weights(&self, base: &CausalLM) -> Result<Vec<(String, Tensor)>, LoraError> {
        if base.config().tie_word_embeddings && self.site(LinearSite::lm_head()).is_some() {
            return Err(LoraError::invalid(
                "the merge",
                names::lora_a(LinearSite::lm_head()),
                "adapts the LM head of a model with tied embeddings: merged, it would change the \
                 token embedding as well",
                "apply this adapter unmerged (as a forward hook), or untie the model first",
            ));
        }
        let params: HashMap<String, Tensor> = base.var_store().variables();
        Ok(tch::no_grad(|| {
            self.factors
                .iter()
                .map(|f| {
                    let w = site_weight(base, &params, f.site).to_kind(Kind::Float);
                    let delta = f.b.matmul(&f.a) * self.scale;
                    (f.site.weight_name(), w + delta.to_device(base.device()))
                })
                .collect()
        }))
    }

    /// Merges the adapter into `model` (its base weights): each adapted weight becomes
    /// `W + scale B A`, computed in f32 and rounded once to the model's dtype (and its bf16 rounding
    /// where it has one). The model is unchanged when refused ([`Self::merged_weights`]).
    pub fn merge_into(&self, model: &CausalLM) -> Result<(), LoraError> {
        let merged = self.merged_weights(model)?;
        model
            .copy_named_weights_subset(&merged)
            .map_err(LoraError::Model)
    }
}

/// Whether every element of `t` is finite.
pub(crate) fn all_finite(t: &Tensor) -> bool {
    tch::no_grad(|| t.isfinite().all().int64_value(&[]) != 0)
}

impl ForwardHooks for LoraAdapter {
    /// `scale * (x A^T) B^T` in f32 for an adapted projection (as PEFT: x cast to the factors'
    /// dtype, then `lora_B(lora_A(x)) * scaling`), `None` elsewhere.
    fn linear_delta(&self, site: LinearSite, x: &Tensor, _w: &Weight) -> Option<Tensor> {
        let f = self.site(site)?;
        let x = if x.kind() == Kind::Float {
            x.shallow_clone()
        } else {
            x.to_kind(Kind::Float)
        };
        Some(x.linear::<Tensor>(&f.a, None).linear::<Tensor>(&f.b, None) * self.scale)
    }
}
