//! PEFT's adapter files: `adapter_config.json` ([`LoraConfig::to_peft_json`]) and
//! `adapter_model.safetensors` (A and B under PEFT's names, without the adapter name `default`).
//! [`LoraAdapter::load`] checks everything (config, base model, every key, shape, dtype and value)
//! before it builds anything, so a refused adapter leaves nothing half-loaded.
use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use tch::{Kind, Tensor};

use super::config::{model_sites, same_base_model, LoraConfig};
use super::error::LoraError;
use super::{all_finite, site_weight, LoraAdapter};
use crate::checkpoint::{owned_tensor, write_file, write_safetensors};
use crate::hooks::LinearSite;
use crate::model::CausalLM;
use crate::names;

/// The adapter's settings, PEFT's file name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's factors, PEFT's file name.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Which factor a tensor of the file is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Factor {
    A,
    B,
}

impl LoraAdapter {
    /// Writes the adapter in PEFT's format into `dir` ([`save_peft`]).
    pub fn save(&self, dir: &Path) -> Result<(), LoraError> {
        save_peft(dir, &self.config, &self.named_tensors())
    }

    /// Reads the adapter PEFT (or [`Self::save`]) wrote into `dir`, for `model`. `base_model` names
    /// the model (a hub id or directory) when known; where the file names one too, they must be the
    /// same model ([`same_base_model`]). Refused, naming the file, the key and the fix: a config
    /// [`LoraConfig::from_peft_json`] refuses, `target_modules` naming no projection of the model,
    /// another base model, a tensor naming no adapted projection, a rank or shape that disagrees
    /// with the config and the model, a targeted projection without its tensors, a dtype other than
    /// f32/bf16/f16, non-finite values.
    pub fn load(
        dir: &Path,
        model: &CausalLM,
        base_model: Option<&str>,
    ) -> Result<LoraAdapter, LoraError> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let config_name = config_path.display().to_string();
        let text = std::fs::read_to_string(&config_path).map_err(|e| LoraError::Read {
            path: config_name.clone(),
            error: format!("{e} (a PEFT adapter directory holds {ADAPTER_CONFIG_FILE})"),
        })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            LoraError::invalid(
                &config_name,
                "(file)",
                format!("is not valid JSON: {e}"),
                "write the adapter again with PEFT's save_pretrained",
            )
        })?;
        let mut config = LoraConfig::from_peft_json(&json, &config_name)?;
        check_base_model(&config, base_model, &config_name)?;
        let sites = config.sites(model.config(), &config_name)?;
        let parts = read_factors(dir, model, &config, &sites)?;
        if config.base_model_name_or_path.is_none() {
            config.base_model_name_or_path = base_model.map(str::to_string);
        }
        Ok(LoraAdapter::from_parts(config, model.device(), parts))
    }
}

fn check_base_model(
    config: &LoraConfig,
    base_model: Option<&str>,
    source: &str,
) -> Result<(), LoraError> {
    match (&config.base_model_name_or_path, base_model) {
        (Some(theirs), Some(ours)) if !same_base_model(theirs, ours) => Err(LoraError::invalid(
            source,
            "base_model_name_or_path",
            format!(
                "is {theirs:?}, but the model is {ours:?} (compared by their last path component, \
                 ignoring case): the adapter was trained on another model"
            ),
            "load the adapter with the model it was trained on, or, if it does fit this model \
             (a renamed copy), set base_model_name_or_path to null or the model's name",
        )),
        _ => Ok(()),
    }
}

/// Every `(site, A, B)` of the file, in the order of `sites`, each checked; nothing is kept when one
/// fails.
fn read_factors(
    dir: &Path,
    model: &CausalLM,
    config: &LoraConfig,
    sites: &[LinearSite],
) -> Result<Vec<(LinearSite, Tensor, Tensor)>, LoraError> {
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let file = path.display().to_string();
    if !path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(LoraError::invalid(
            &file,
            "(file)",
            "is missing; the adapter has only adapter_model.bin (a pickle, which alp-rl does not read)",
            "save it again with PEFT's save_pretrained(..., safe_serialization=True)",
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| LoraError::Read {
        path: file.clone(),
        error: e.to_string(),
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        LoraError::invalid(
            &file,
            "(header)",
            format!("is not a valid safetensors file: {e}"),
            "write the adapter again with PEFT's save_pretrained",
        )
    })?;
    let expected = expected_keys(sites);
    let params: HashMap<String, Tensor> = model.var_store().variables();
    let mut found: HashMap<(LinearSite, Factor), Tensor> = HashMap::new();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
        let (site, factor) = expected
            .get(&name)
            .copied()
            .ok_or_else(|| unexpected_key(&file, &name, model, config))?;
        let size = site_weight(model, &params, site).size();
        let shape = match factor {
            Factor::A => vec![config.r, size[1]],
            Factor::B => vec![size[0], config.r],
        };
        let t = checked_tensor(&file, &name, &view, &shape, factor, config.r)?;
        found.insert((site, factor), t);
    }
    sites
        .iter()
        .map(|&site| {
            let mut take = |factor: Factor, name: String| {
                found.remove(&(site, factor)).ok_or_else(|| {
                    LoraError::invalid(
                        &file,
                        name,
                        format!(
                            "is missing, though target_modules in {ADAPTER_CONFIG_FILE} selects {}",
                            site.path()
                        ),
                        "save the whole adapter again, or take the projection out of target_modules",
                    )
                })
            };
            let a = take(Factor::A, names::lora_a(site))?;
            let b = take(Factor::B, names::lora_b(site))?;
            Ok((site, a, b))
        })
        .collect()
}

/// The PEFT names of A and B of every targeted site.
fn expected_keys(sites: &[LinearSite]) -> HashMap<String, (LinearSite, Factor)> {
    sites
        .iter()
        .flat_map(|&s| {
            [
                (names::lora_a(s), (s, Factor::A)),
                (names::lora_b(s), (s, Factor::B)),
            ]
        })
        .collect()
}

/// The error for a tensor that is not a factor of a targeted projection: of an untargeted projection
/// of the model, or of no projection at all (with a hint for the usual causes).
fn unexpected_key(file: &str, name: &str, model: &CausalLM, config: &LoraConfig) -> LoraError {
    let untargeted = model_sites(model.config())
        .into_iter()
        .find(|&s| names::lora_a(s) == name || names::lora_b(s) == name);
    if let Some(site) = untargeted {
        return LoraError::invalid(
            file,
            name,
            format!(
                "adapts {}, which target_modules {} in {ADAPTER_CONFIG_FILE} does not select",
                site.path(),
                config.target_modules
            ),
            "add the projection to target_modules, or remove the tensor",
        );
    }
    let hint = if name.contains(".default.") {
        " (it holds PEFT's adapter name `default`, which save_pretrained removes)"
    } else if name.contains("lora_embedding") || name.contains("lora_magnitude") {
        " (an embedding adapter or DoRA magnitude, which alp-rl does not load)"
    } else if !name.starts_with("base_model.model.") {
        " (PEFT names start with base_model.model.)"
    } else {
        ""
    };
    LoraError::invalid(
        file,
        name,
        format!(
            "names no LoRA factor of a projection of this {} with {} layers{hint}",
            model.config().architecture.hf_class(),
            model.config().num_hidden_layers
        ),
        "use the adapter made for this model (keys like base_model.model.model.layers.0.self_attn.\
         q_proj.lora_A.weight), or remove the tensor",
    )
}

/// The tensor `name` of `file` as f32, after checking its dtype, shape (`[r, in]` for A, `[out, r]`
/// for B; a rank that differs from the config's `r` is named as such) and values.
fn checked_tensor(
    file: &str,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
    shape: &[i64],
    factor: Factor,
    r: i64,
) -> Result<Tensor, LoraError> {
    let bad = |problem: String, fix: &str| LoraError::invalid(file, name, problem, fix);
    let kind = crate::dtype::kind_of_safetensors(view.dtype()).ok_or_else(|| {
        bad(
            format!(
                "has dtype {:?}; adapters load from F32, BF16 or F16",
                view.dtype()
            ),
            "save the adapter in float32, bfloat16 or float16",
        )
    })?;
    let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    if found != shape {
        let rank_axis = if factor == Factor::A { 0 } else { 1 };
        let other = 1 - rank_axis;
        let problem = if found.len() == 2 && found[other] == shape[other] {
            format!(
                "has rank {} (shape {found:?}), but {ADAPTER_CONFIG_FILE} says r = {r}",
                found[rank_axis]
            )
        } else {
            format!("has shape {found:?}; this model and r = {r} need {shape:?}")
        };
        return Err(bad(
            problem,
            "use the adapter_config.json saved with these tensors, for the model they were trained on",
        ));
    }
    let t = Tensor::f_from_data_size(view.data(), &found, kind)?.to_kind(Kind::Float);
    if !all_finite(&t) {
        return Err(bad(
            "holds non-finite values (NaN or infinity)".into(),
            "the adapter diverged or is corrupt: use an earlier checkpoint of it",
        ));
    }
    Ok(t)
}

/// Writes an adapter in PEFT's format into `dir` (created if needed): `tensors` (its factors under
/// PEFT's names, any float dtype or device) as f32 in `adapter_model.safetensors`, then `config` as
/// `adapter_config.json`, each through a temporary file and a rename, so a reader never sees a
/// half-written file. [`LoraAdapter::save`] of a trained adapter, and the vLLM backend's adapters
/// (the policy's, a population's members), are written by it.
pub fn save_peft(
    dir: &Path,
    config: &LoraConfig,
    tensors: &[(String, Tensor)],
) -> Result<(), LoraError> {
    let write_err = |path: &Path, message: String| LoraError::Write {
        path: path.display().to_string(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let tensors = tensors
        .iter()
        .map(|(name, t)| {
            Ok((
                name.clone(),
                owned_tensor(t, Kind::Float, safetensors::Dtype::F32)?,
            ))
        })
        .collect::<Result<Vec<_>, crate::error::PolicyError>>()?;
    write_safetensors(&weights, tensors)?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config.to_peft_json())
        .map_err(|e| write_err(&config_path, e.to_string()))?;
    write_file(&config_path, format!("{text}\n").as_bytes())?;
    Ok(())
}
