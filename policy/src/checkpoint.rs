//! Checkpoint IO in the HF layout: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, f32/bf16/f16 on disk, so transformers and vLLM read what we write.
//!
//! Saving follows `save_pretrained`: one `model.safetensors` up to `max_shard_size` (5 GB by default) of
//! tensor data, `model-0000i-of-0000n.safetensors` shards and the index above it.
//!
//! Loading memory-maps one shard at a time and copies each tensor into a parameter of the chosen
//! compute dtype; every tensor is checked against the shape the config implies.
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, Metadata, TensorInfo, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::PolicyError;
use crate::model::{parameter_specs, CausalLM, LoadOptions, ParamInit};
use crate::names;

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

/// Tensors in checkpoints that are buffers, not parameters, and carry nothing we need.
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        // Some tied checkpoints also store the (identical) head.
        || (cfg.tie_word_embeddings && name == names::lm_head().weight())
}

impl CausalLM {
    /// Loads `DIR/config.json` and the safetensors weights, converting them to `opts.kind`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<CausalLM, PolicyError> {
        let _span = tracing::info_span!("load_model", dir = %dir.display()).entered();
        check_compute_kind(opts.kind)?;
        let precision = opts.precision();
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
                tensors.insert(name, precision.apply(&tensor.to_device(opts.device)));
            }
        }
        if let Some(missing) = specs.iter().find(|s| !tensors.contains_key(&s.name)) {
            return Err(PolicyError::MissingTensor {
                dir: dir.display().to_string(),
                name: missing.name.clone(),
                expected: missing.shape.clone(),
            });
        }
        Ok(CausalLM::from_tensors(
            config,
            tensors,
            opts.device,
            precision,
        ))
    }

    /// A randomly initialised model (HF conventions: N(0, initializer_range) for matrices, ones for
    /// norms, zeros for biases), deterministic for a seed on any device.
    pub fn random(
        config: ModelConfig,
        opts: &LoadOptions,
        seed: u64,
    ) -> Result<CausalLM, PolicyError> {
        check_compute_kind(opts.kind)?;
        let precision = opts.precision();
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
                .to_device(opts.device);
            tensors.insert(spec.name, precision.apply(&t));
        }
        Ok(CausalLM::from_tensors(
            config,
            tensors,
            opts.device,
            precision,
        ))
    }

    /// Writes `DIR/config.json` and the weights with the parameters in their current dtype (no
    /// `lm_head.weight` for tied models): one `model.safetensors` up to [`DEFAULT_MAX_SHARD_SIZE`] of
    /// tensor data, shards plus `model.safetensors.index.json` above it. See [`Self::save_with`].
    pub fn save(&self, dir: &Path) -> Result<(), PolicyError> {
        self.save_with(dir, &SaveOptions::default())
    }

    /// Like [`Self::save`], converting the weights to `kind` on the way out.
    pub fn save_as(&self, dir: &Path, kind: Kind) -> Result<(), PolicyError> {
        self.save_with(
            dir,
            &SaveOptions {
                kind: Some(kind),
                ..SaveOptions::default()
            },
        )
    }

    /// Writes the checkpoint as transformers' `save_pretrained` does. Tensors are taken in module order
    /// (embeddings, layers, final norm, head) and cut into shards of at most `opts.max_shard_size`
    /// bytes of tensor data (a larger tensor gets a shard of its own); one shard is `model.safetensors`,
    /// several are `model-00001-of-0000N.safetensors` listed in `model.safetensors.index.json`
    /// (`metadata.total_size`, `metadata.total_parameters`, `weight_map`). Only one shard's bytes are
    /// held in host memory at a time.
    ///
    /// Every file is written under a temporary name, synced and renamed, with the ordinary mode of a
    /// new file (0666 less the umask). Weight files of the other layout left by an earlier save into
    /// `dir` are removed once the new weights are complete, and `config.json` is written last.
    pub fn save_with(&self, dir: &Path, opts: &SaveOptions) -> Result<(), PolicyError> {
        let kind = opts.kind.unwrap_or_else(|| self.kind());
        check_compute_kind(kind)?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dtype = crate::dtype::safetensors_dtype_of(kind)
            .expect("check_compute_kind accepted f32, bf16 or f16");
        let params = self.var_store().variables();
        let tied_head_name = names::lm_head().weight();
        let mut ordered: Vec<(&str, &Tensor)> = parameter_specs(self.config())
            .iter()
            .filter_map(|spec| params.get_key_value(spec.name.as_str()))
            .map(|(name, t)| (name.as_str(), t))
            .collect();
        assert_eq!(
            ordered.len(),
            params.len(),
            "every parameter has a spec (the var store is built from them)"
        );
        if opts.tied_head_copy && self.config().tie_word_embeddings {
            let embed = params
                .get(&names::embed_tokens().weight())
                .expect("every decoder has an embedding");
            ordered.push((tied_head_name.as_str(), embed));
        }
        let sizes: Vec<u64> = ordered
            .iter()
            .map(|(_, t)| (t.numel() * kind.elt_size_in_bytes()) as u64)
            .collect();
        let shards = plan_shards(&sizes, opts.max_shard_size);
        let names: Vec<String> = if shards.len() == 1 {
            vec![SINGLE_FILE.to_string()]
        } else {
            (1..=shards.len())
                .map(|i| shard_name(i, shards.len()))
                .collect()
        };
        let mut weight_map = serde_json::Map::new();
        for (shard, file) in shards.iter().zip(&names) {
            let mut owned: Vec<(String, OwnedTensor)> = Vec::with_capacity(shard.len());
            for &i in shard {
                let (name, tensor) = ordered[i];
                owned.push((name.to_string(), owned_tensor(tensor, kind, dtype)?));
                weight_map.insert(name.to_string(), Value::String(file.clone()));
            }
            write_safetensors(&dir.join(file), owned)?;
        }
        if names.len() > 1 {
            let total_parameters: i64 = ordered.iter().map(|(_, t)| t.numel() as i64).sum();
            let index = serde_json::json!({
                "metadata": {
                    "total_parameters": total_parameters,
                    "total_size": sizes.iter().sum::<u64>(),
                },
                "weight_map": weight_map,
            });
            let text = serde_json::to_string_pretty(&index).expect("a JSON value serialises");
            write_file(&dir.join(INDEX_FILE), (text + "\n").as_bytes())?;
        }
        remove_stale_weights(dir, &names)?;

        let text = serde_json::to_string_pretty(&self.config().to_json(hf_dtype_name(kind)))
            .expect("a JSON value serialises");
        write_file(&dir.join("config.json"), (text + "\n").as_bytes())?;
        Ok(())
    }
}

/// transformers' default `max_shard_size`, "5GB": decimal gigabytes, 5 * 10^9 bytes of tensor data.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// How [`CausalLM::save_with`] writes a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaveOptions {
    /// dtype on disk (f32, bf16 or f16); `None` keeps the parameters' dtype.
    pub kind: Option<Kind>,
    /// The most tensor bytes in one weight file (headers not counted, as in transformers); a single
    /// tensor larger than this gets a shard of its own.
    pub max_shard_size: u64,
    /// For a model with tied embeddings, also write `lm_head.weight` (a copy of the embedding). HF
    /// checkpoints leave it out, and [`CausalLM::load`] ignores it; vLLM's in-place weight reload needs
    /// it (without it the served LM head keeps the old weights).
    pub tied_head_copy: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            kind: None,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            tied_head_copy: false,
        }
    }
}

/// huggingface_hub's `split_state_dict_into_shards_factory`: walk the tensors in order, start a new
/// shard when the next one would tip the current shard over `max`, and give a tensor larger than `max`
/// a shard of its own. Returns the tensor indices of each shard (never an empty shard).
fn plan_shards(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut current_size = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max {
            shards.push(vec![i]);
            continue;
        }
        if current_size + size > max && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += size;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

/// `model-00002-of-00003.safetensors`, transformers' shard name (1-based, five digits).
fn shard_name(i: usize, n: usize) -> String {
    format!("model-{i:05}-of-{n:05}.safetensors")
}

fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let Some((i, n)) = rest.split_once("-of-") else {
        return false;
    };
    [i, n]
        .iter()
        .all(|p| p.len() >= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the weight files of `dir` that are not in `keep`: a single file replaced by shards, shards
/// (and their index) replaced by a single file or by a different number of shards.
fn remove_stale_weights(dir: &Path, keep: &[String]) -> Result<(), PolicyError> {
    let sharded = keep.len() > 1;
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if keep.contains(&name) {
            false
        } else {
            name == SINGLE_FILE || is_shard_name(&name) || (name == INDEX_FILE && !sharded)
        };
        if stale {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// One parameter's bytes on the host in `kind`.
pub(crate) fn owned_tensor(
    tensor: &Tensor,
    kind: Kind,
    dtype: Dtype,
) -> Result<OwnedTensor, PolicyError> {
    let t = tensor
        .detach()
        .to_device(Device::Cpu)
        .to_kind(kind)
        .contiguous();
    let numel = t.numel();
    let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok(OwnedTensor { dtype, shape, data })
}

/// The temporary sibling a file is written to before its rename.
fn tmp_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` through a temporary file: created as a new file (mode 0666 less the umask),
/// synced, renamed.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PolicyError> {
    write_through_tmp(path, |file| file.write_all(bytes))
}

fn write_through_tmp(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), PolicyError> {
    let tmp = tmp_path(path);
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    write(&mut out).map_err(io_err(&tmp))?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes one safetensors file: the 8-byte little-endian header length, the JSON header (padded with
/// spaces to a multiple of 8, `format: pt` metadata) and the tensors' bytes, in the layout and order
/// of `safetensors::serialize` (which writes through a private 0600 tempfile, hence this writer).
pub(crate) fn write_safetensors(
    path: &Path,
    mut tensors: Vec<(String, OwnedTensor)>,
) -> Result<(), PolicyError> {
    // safetensors' order: descending dtype alignment, then name (all our tensors share one dtype).
    tensors.sort_by(|(a, x), (b, y)| y.dtype.cmp(&x.dtype).then(a.cmp(b)));
    let mut offset = 0;
    let mut infos = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let info = TensorInfo {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data_offsets: (offset, offset + t.data.len()),
        };
        offset += t.data.len();
        infos.push((name.clone(), info));
    }
    let bad = |message: String| PolicyError::Write {
        path: path.display().to_string(),
        message,
    };
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let header = Metadata::new(Some(metadata), infos).map_err(|e| bad(e.to_string()))?;
    let mut header = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    write_through_tmp(path, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for (_, t) in &tensors {
            out.write_all(&t.data)?;
        }
        Ok(())
    })
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
    let kind = crate::dtype::kind_of_safetensors(view.dtype()).ok_or_else(|| {
        PolicyError::UnsupportedDtype {
            path: path.to_string(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        }
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

pub(crate) struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// huggingface_hub's own splitter on the same sizes (it only needs `get_storage_size`, so plain
    /// integers stand in for tensors), as lists of indices.
    fn hub_plan(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
        let script = r#"
import json, sys
from huggingface_hub.serialization._base import split_state_dict_into_shards_factory
sizes, limit = json.loads(sys.argv[1]), int(sys.argv[2])
split = split_state_dict_into_shards_factory(
    {str(i): s for i, s in enumerate(sizes)},
    get_storage_size=lambda s: s, filename_pattern="m{suffix}.st", max_shard_size=limit)
print(json.dumps([[int(k) for k in ks] for ks in split.filename_to_tensors.values()]))
"#;
        let out = alp_oracle::python_command()
            .args([
                "-c",
                script,
                &serde_json::to_string(sizes).unwrap(),
                &max.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn shard_plan_matches_huggingface_hub() {
        let cases: &[(&[u64], u64)] = &[
            // The example of huggingface_hub's docstring (GB): [6], [6+2], [6+2+2].
            (&[6, 6, 2, 6, 2, 2], 10),
            // A tensor over the limit gets its own shard, listed before the shard being filled.
            (&[3, 12, 3, 9, 1], 10),
            (&[10, 10, 10], 10),
            (&[1, 2, 3], 100),
            (
                &[
                    65_536, 4_096, 16_384, 8_192, 8_192, 16_384, 32_768, 32_768, 32_768, 256,
                ],
                60_000,
            ),
        ];
        for &(sizes, max) in cases {
            assert_eq!(
                plan_shards(sizes, max),
                hub_plan(sizes, max),
                "{sizes:?} max {max}"
            );
        }
        assert_eq!(plan_shards(&[], 10), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn shard_names_are_transformers_names() {
        assert_eq!(shard_name(2, 3), "model-00002-of-00003.safetensors");
        assert!(is_shard_name("model-00002-of-00003.safetensors"));
        assert!(!is_shard_name("model.safetensors"));
        assert!(!is_shard_name("model-2-of-3.safetensors"));
        assert!(!is_shard_name("model-00002-of-00003.safetensors.tmp"));
    }
}
