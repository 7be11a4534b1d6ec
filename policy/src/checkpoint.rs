//! Checkpoint IO in the HF layout: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, f32/bf16/f16 on disk, so transformers and vLLM read what we write.
//!
//! Loading memory-maps one shard at a time and copies each tensor into a parameter of the chosen
//! compute dtype; every tensor is checked against the shape the config implies.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::PolicyError;
use crate::model::{parameter_specs, CausalLM, LoadOptions, ParamInit};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The HF spelling of a dtype (`config.json`'s `torch_dtype`).
pub fn hf_dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// Parses a user-facing dtype name (`f32`, `bf16`, `f16` or the HF spellings).
pub fn parse_kind(name: &str) -> Result<Kind, PolicyError> {
    match name {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        other => Err(PolicyError::UnsupportedComputeDtype(other.to_string())),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError + '_ {
    move |source| PolicyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The weight files of a checkpoint directory, in order.
fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, PolicyError> {
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        return Err(PolicyError::NoWeights {
            dir: dir.display().to_string(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
    let parsed: Value = serde_json::from_str(&text).map_err(|e| PolicyError::ConfigParse {
        path: index.display().to_string(),
        message: e.to_string(),
    })?;
    let map = parsed
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| PolicyError::ConfigField {
            path: index.display().to_string(),
            field: "weight_map",
            problem: "is missing or not an object".to_string(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    files.sort();
    files.dedup();
    // Shards are files inside the checkpoint: an absolute path or `..` would read outside it.
    let inside = |f: &str| {
        let p = Path::new(f);
        !f.is_empty()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    if let Some(f) = files.iter().find(|f| !inside(f)) {
        return Err(PolicyError::ConfigField {
            path: index.display().to_string(),
            field: "weight_map",
            problem: format!(
                "names the shard {f:?}, which is not a file inside {}; shards must be plain \
                 relative file names",
                dir.display()
            ),
        });
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        _ => None,
    }
}

/// Tensors in checkpoints that are buffers, not parameters, and carry nothing we need.
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        // Some tied checkpoints also store the (identical) head.
        || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

impl CausalLM {
    /// Loads `DIR/config.json` and the safetensors weights, converting them to `opts.kind`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<CausalLM, PolicyError> {
        let _span = tracing::info_span!("load_model", dir = %dir.display()).entered();
        check_compute_kind(opts.kind)?;
        let config = ModelConfig::from_dir(dir)?;
        let specs = parameter_specs(&config);
        let expected: HashMap<&str, &Vec<i64>> =
            specs.iter().map(|s| (s.name.as_str(), &s.shape)).collect();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for file in weight_files(dir)? {
            let path = file.display().to_string();
            let handle = std::fs::File::open(&file).map_err(io_err(&file))?;
            // SAFETY: the map is read-only and dropped before this function returns; every tensor is
            // copied out of it (`f_from_data_size` copies).
            let mmap = unsafe { memmap2::Mmap::map(&handle) }.map_err(io_err(&file))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| PolicyError::CorruptWeights {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for (name, view) in st.tensors() {
                if ignorable(&name, &config) {
                    continue;
                }
                let Some(shape) = expected.get(name.as_str()) else {
                    return Err(PolicyError::UnexpectedTensor {
                        path,
                        name,
                        architecture: config.architecture.hf_class(),
                    });
                };
                let tensor = tensor_from_view(&view, &name, shape, &path)?;
                tensors.insert(name, tensor.to_device(opts.device).to_kind(opts.kind));
            }
        }
        if let Some(missing) = specs.iter().find(|s| !tensors.contains_key(&s.name)) {
            return Err(PolicyError::MissingTensor {
                dir: dir.display().to_string(),
                name: missing.name.clone(),
                expected: missing.shape.clone(),
            });
        }
        Ok(CausalLM::from_tensors(config, tensors, opts.device))
    }

    /// A randomly initialised model (HF conventions: N(0, initializer_range) for matrices, ones for
    /// norms, zeros for biases), deterministic for a seed on any device.
    pub fn random(
        config: ModelConfig,
        opts: &LoadOptions,
        seed: u64,
    ) -> Result<CausalLM, PolicyError> {
        check_compute_kind(opts.kind)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for spec in parameter_specs(&config) {
            let numel: i64 = spec.shape.iter().product();
            let values: Vec<f32> = match spec.init {
                ParamInit::Ones => vec![1.0; numel as usize],
                ParamInit::Zeros => vec![0.0; numel as usize],
                ParamInit::Normal(std) => (0..numel)
                    .map(|_| (standard_normal(&mut rng) * std) as f32)
                    .collect(),
            };
            let t = Tensor::from_slice(&values)
                .view(spec.shape.as_slice())
                .to_device(opts.device)
                .to_kind(opts.kind);
            tensors.insert(spec.name, t);
        }
        Ok(CausalLM::from_tensors(config, tensors, opts.device))
    }

    /// Writes `DIR/config.json` and `DIR/model.safetensors` with the parameters in their current dtype
    /// (no `lm_head.weight` for tied models). Files are written under temporary names and renamed, so a
    /// crash never leaves a half-written file that looks whole.
    pub fn save(&self, dir: &Path) -> Result<(), PolicyError> {
        self.save_as(dir, self.kind())
    }

    /// Like [`Self::save`], converting the weights to `kind` on the way out.
    pub fn save_as(&self, dir: &Path, kind: Kind) -> Result<(), PolicyError> {
        check_compute_kind(kind)?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dtype = match kind {
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            _ => Dtype::F32,
        };
        let mut owned: BTreeMap<String, OwnedTensor> = BTreeMap::new();
        for (name, tensor) in self.named_parameters() {
            let t = tensor
                .detach()
                .to_device(Device::Cpu)
                .to_kind(kind)
                .contiguous();
            let numel = t.numel();
            let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
            t.f_copy_data_u8(&mut data, numel)?;
            let shape = t.size().iter().map(|&d| d as usize).collect();
            owned.insert(name, OwnedTensor { dtype, shape, data });
        }
        let weights = dir.join(SINGLE_FILE);
        let tmp = dir.join(format!(".{SINGLE_FILE}.tmp"));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(owned.iter(), Some(metadata), &tmp).map_err(|e| {
            PolicyError::Write {
                path: tmp.display().to_string(),
                message: e.to_string(),
            }
        })?;
        std::fs::rename(&tmp, &weights).map_err(io_err(&weights))?;

        let config_path = dir.join("config.json");
        let tmp = dir.join(".config.json.tmp");
        let text = serde_json::to_string_pretty(&self.config().to_json(hf_dtype_name(kind)))
            .expect("a JSON value serialises");
        std::fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &config_path).map_err(io_err(&config_path))?;
        Ok(())
    }
}

fn check_compute_kind(kind: Kind) -> Result<(), PolicyError> {
    match kind {
        Kind::Float | Kind::BFloat16 | Kind::Half => Ok(()),
        other => Err(PolicyError::UnsupportedComputeDtype(format!("{other:?}"))),
    }
}

fn tensor_from_view(
    view: &TensorView<'_>,
    name: &str,
    expected: &[i64],
    path: &str,
) -> Result<Tensor, PolicyError> {
    let kind = kind_of(view.dtype()).ok_or_else(|| PolicyError::UnsupportedDtype {
        path: path.to_string(),
        name: name.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    if found != expected {
        return Err(PolicyError::ShapeMismatch {
            path: path.to_string(),
            name: name.to_string(),
            expected: expected.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    Ok(Tensor::f_from_data_size(view.data(), &found, kind)?)
}

/// Box-Muller: a standard normal from two uniforms (keeps `rand` as the only RNG dependency).
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}
