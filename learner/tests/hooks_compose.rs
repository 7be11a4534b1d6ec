//! Two forward hooks on one forward: ALP's noise on the layer inputs and a toy LoRA-style adapter
//! (`scale * x A^T B^T` added to some projections), composed by [`Stack`], against a brute force:
//! the adapter merged into the weights (`W + scale B A`) with ALP's noise alone.
use std::collections::BTreeMap;

use alp_learner::noise::{standard_normal, NoiseKey};
use alp_learner::{AlpPerturbation, AlpSettings};
use alp_policy::hooks::Stack;
use alp_policy::{CausalLM, ForwardHooks, LinearSite, NoHooks, Weight};
use alp_test_support::tiny_model::{copy_of, TinyModel};
use tch::{Device, Kind, Tensor};

/// A low-rank adapter on some projections: `scale * x A^T B^T`, `A` `[r, in]`, `B` `[out, r]`, keyed
/// by the HF name of the weight it adapts.
struct ToyAdapter {
    factors: BTreeMap<String, (Tensor, Tensor)>,
    scale: f64,
}

impl ToyAdapter {
    /// Rank-`rank` factors with N(0, 0.3^2) entries (B is nonzero, unlike a fresh LoRA, so that the
    /// adapter acts) for the named weights of `model`.
    fn new(model: &CausalLM, targets: &[&str], rank: i64, scale: f64) -> Self {
        let params: BTreeMap<String, Tensor> = model.named_parameters().into_iter().collect();
        let factors = targets
            .iter()
            .enumerate()
            .map(|(i, &name)| {
                let (out, inp) = params[name].size2().unwrap();
                let key = |slot| NoiseKey {
                    seed: 7,
                    step: 0,
                    forward: i as u64,
                    slot,
                };
                let a = standard_normal(&[rank, inp], key(0), Device::Cpu) * 0.3;
                let b = standard_normal(&[out, rank], key(1), Device::Cpu) * 0.3;
                (name.to_string(), (a, b))
            })
            .collect();
        ToyAdapter { factors, scale }
    }

    /// A copy of `model` with every adapted weight replaced by `W + scale B A`.
    fn merged_into(&self, model: &CausalLM) -> CausalLM {
        let merged = copy_of(model);
        let vars = merged.var_store().variables();
        tch::no_grad(|| {
            for (name, (a, b)) in &self.factors {
                let mut w = vars[name].shallow_clone();
                let updated = &w + b.matmul(a) * self.scale;
                w.copy_(&updated);
            }
        });
        merged
    }
}

impl ForwardHooks for ToyAdapter {
    fn linear_delta(&self, site: LinearSite, x: &Tensor, _w: &Weight) -> Option<Tensor> {
        let (a, b) = self.factors.get(&site.weight_name())?;
        Some(x.matmul(&a.tr()).matmul(&b.tr()) * self.scale)
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn alp_noise_and_an_adapter_act_on_one_forward() {
    tch::set_num_threads(1);
    let model = TinyModel::new("qwen2")
        .with("num_hidden_layers", 3)
        .with("initializer_range", 0.2)
        .random(11);
    let adapter = ToyAdapter::new(
        &model,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.2.self_attn.o_proj.weight",
            "lm_head.weight",
        ],
        2,
        0.5,
    );
    let merged = adapter.merged_into(&model);
    let settings = AlpSettings {
        sigma0: 0.05,
        ..Default::default()
    };
    let alp = AlpPerturbation::new(&settings, model.num_layers(), 3, Device::Cpu).unwrap();
    let noise = alp.hooks(4, 1);
    let ids = Tensor::from_slice(&[5i64, 9, 13, 2, 7, 1, 30, 31, 0, 4]).view([2, 5]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1]).view([2, 5]);
    let forward = |m: &CausalLM, hooks: &dyn ForwardHooks| {
        tch::no_grad(|| m.forward(&ids, Some(&mask), hooks)).to_kind(Kind::Double)
    };

    // Both hooks on one forward of the base model = ALP alone on the merged model.
    let composed = forward(&model, &Stack(vec![&noise, &adapter]));
    let reference = forward(&merged, &noise);
    let scale = reference.abs().max().double_value(&[]);
    let diff = max_diff(&composed, &reference);
    assert!(
        diff < 1e-5 * scale.max(1.0),
        "ALP + adapter differs from ALP on the merged model by {diff} (logits up to {scale})"
    );
    // The order of the parts does not matter here: one changes layer inputs, the other adds terms.
    let swapped = forward(&model, &Stack(vec![&adapter, &noise]));
    assert!(swapped.equal(&composed));

    // The adapter alone = the merged model without hooks.
    let adapted = forward(&model, &adapter);
    let plain_merged = forward(&merged, &NoHooks);
    let diff = max_diff(&adapted, &plain_merged);
    assert!(
        diff < 1e-5 * scale.max(1.0),
        "adapter differs from the merged model by {diff}"
    );

    // Each part really acted: the noise moved the adapted logits, the adapter moved the plain ones.
    let plain = forward(&model, &NoHooks);
    assert!(
        max_diff(&composed, &adapted) > 1e-3,
        "ALP's noise did not act"
    );
    assert!(max_diff(&adapted, &plain) > 1e-3, "the adapter did not act");
    assert!(max_diff(&forward(&model, &noise), &plain) > 1e-3);
}
