//! Training a LoRA adapter ([`alp_policy::LoraAdapter`]) instead of the policy's own weights
//! ([`crate::PgLearner::with_adapter`]).
//!
//! - The policy's parameters are frozen (`requires_grad` false): no backward ever keeps a gradient
//!   for a base weight, and the base weights are never written.
//! - The optimizer's model group ([`crate::MODEL_GROUP`]) holds the adapter's A and B of every
//!   adapted projection, under their PEFT names, at the settings' learning rate and weight decay
//!   (plus ALP's `log_sigma` group when ALP is on, as without an adapter). The gradient sync receives
//!   exactly these.
//! - Every forward that scores with the trained policy runs the adapter as a hook: the training
//!   forward (stacked after ALP's noise), `lp_old`, the mismatch forward and
//!   [`crate::PgLearner::log_probs`]. The reference policy's forward does not.
//! - The learner's saved state holds the adapter in PEFT's format in the subfolder
//!   [`ADAPTER_DIR`], next to the optimizer state, so a resume continues exactly.
use std::collections::BTreeSet;
use std::path::Path;

use alp_policy::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use alp_policy::{ForwardHooks, LoraAdapter, LoraConfig, LoraError, NoHooks};
use tch::Tensor;

use crate::error::{LearnerError, Result};
use crate::optimizer::ParamGroup;
use crate::settings::OptimizerSettings;
use crate::trainable::TrainablePolicy;

/// The subfolder of a learner's saved state that holds the trained adapter (PEFT's files).
pub const ADAPTER_DIR: &str = "adapter";

/// Freezes every parameter of `policy` (`requires_grad` false), so that a backward through it
/// reaches only the adapter (and ALP's scales).
pub(crate) fn freeze(policy: &dyn TrainablePolicy) {
    for (_, p) in policy.trainable_parameters() {
        let _ = p.set_requires_grad(false);
    }
}

/// The optimizer's model group for training `adapter`: its factors under their PEFT names (sorted),
/// at the settings' learning rate and weight decay.
pub(crate) fn param_group(adapter: &LoraAdapter, s: &OptimizerSettings) -> ParamGroup {
    ParamGroup::model(adapter.named_tensors(), s)
}

/// The hooks of a no-grad forward of the trained policy: the adapter, or the plain model.
pub(crate) fn scoring_hooks(adapter: Option<&LoraAdapter>) -> &dyn ForwardHooks {
    match adapter {
        Some(a) => a,
        None => &NoHooks,
    }
}

/// Writes `adapter` in PEFT's format into `dir` ([`LoraAdapter::save`]).
pub(crate) fn save(adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    Ok(adapter.save(dir)?)
}

/// Copies the adapter saved in `dir` by [`save`] into `adapter`, after checking that it is the same
/// adapter: the same rank, alpha and scaling rule in `adapter_config.json`, and exactly the same
/// factors (names and shapes) in `adapter_model.safetensors`. Nothing is copied when it is not.
pub(crate) fn load(adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let source = config_path.display().to_string();
    let text = std::fs::read_to_string(&config_path).map_err(|e| LearnerError::Io {
        path: source.clone(),
        source: e,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        LoraError::invalid(
            &source,
            "(file)",
            format!("is not valid JSON: {e}"),
            "resume from a state this learner saved",
        )
    })?;
    let saved = LoraConfig::from_peft_json(&json, &source)?;
    check_same_shape(adapter.config(), &saved, &source)?;
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let tensors = Tensor::read_safetensors(&weights)?;
    let ours: BTreeSet<String> = adapter
        .named_tensors()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let theirs: BTreeSet<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    if ours != theirs {
        let missing: Vec<&String> = ours.difference(&theirs).collect();
        let extra: Vec<&String> = theirs.difference(&ours).collect();
        return Err(LearnerError::State(format!(
            "{}: the saved adapter's factors differ from the trained adapter's (missing {missing:?}, \
             extra {extra:?}); resume with the adapter settings the state was saved with",
            weights.display()
        )));
    }
    Ok(adapter.set_named_tensors(&tensors)?)
}

/// Refuses a saved adapter whose rank, alpha or scaling rule differs from the trained one's.
fn check_same_shape(ours: &LoraConfig, saved: &LoraConfig, source: &str) -> Result<()> {
    let fields = [
        ("r", ours.r as f64, saved.r as f64),
        ("lora_alpha", ours.lora_alpha, saved.lora_alpha),
        (
            "use_rslora",
            f64::from(u8::from(ours.use_rslora)),
            f64::from(u8::from(saved.use_rslora)),
        ),
    ];
    for (key, a, b) in fields {
        if a != b {
            return Err(LoraError::invalid(
                source,
                key,
                format!("is {b}, the trained adapter's {a}"),
                "resume with the adapter settings the state was saved with",
            )
            .into());
        }
    }
    Ok(())
}

/// Copies of the adapter's factors, to measure a step's update against ([`metrics`]).
pub(crate) fn snapshot(adapter: &LoraAdapter) -> Vec<Tensor> {
    tch::no_grad(|| {
        adapter
            .named_tensors()
            .into_iter()
            .map(|(_, t)| t.detach().copy())
            .collect()
    })
}

/// The `lora/*` metrics after a step: the factors' norm, the norm of their change to the weights
/// (`scale B A` over every adapted projection) and the norm of the step's update against `before`
/// ([`snapshot`], taken before the step).
pub(crate) fn metrics(adapter: &LoraAdapter, before: &[Tensor]) -> Vec<(&'static str, f64)> {
    use crate::metric_names as names;
    tch::no_grad(|| {
        let factors: Vec<Tensor> = adapter
            .named_tensors()
            .into_iter()
            .map(|(_, t)| t.detach())
            .collect();
        let sq = |t: &Tensor| t.to_kind(tch::Kind::Double).square().sum(tch::Kind::Double);
        let norm = |ts: &mut dyn Iterator<Item = Tensor>| {
            ts.fold(0.0, |acc, t| acc + sq(&t).double_value(&[])).sqrt()
        };
        let adapter_norm = norm(&mut factors.iter().map(|t| t.shallow_clone()));
        let update_norm = norm(&mut factors.iter().zip(before).map(|(a, b)| a - b));
        let delta_norm = norm(
            &mut adapter
                .sites()
                .into_iter()
                .filter_map(|site| adapter.delta_weight(site)),
        );
        vec![
            (names::LORA_ADAPTER_NORM, adapter_norm),
            (names::LORA_DELTA_NORM, delta_norm),
            (names::LORA_UPDATE_NORM, update_norm),
        ]
    })
}
