//! Tiny random decoders of the shapes the tests and benchmarks use, built from the `config.json` text
//! HF would write, so that what a test changes is a field of that file.
use std::path::{Path, PathBuf};

use alp_policy::{CausalLM, LoadOptions, ModelConfig};
use serde_json::{json, Value};
use tch::{Device, Kind};

/// A model's `config.json`, edited field by field ([`TinyModel::with`]) and turned into a random
/// model ([`TinyModel::random`]) or checkpoint ([`TinyModel::save`]).
#[derive(Clone, Debug)]
pub struct TinyModel {
    config: Value,
}

impl TinyModel {
    /// The decoder the engine, hook and learner tests share, for `arch` (`qwen2`, `qwen3`, `llama`):
    /// vocabulary 64, 2 layers of hidden size 32 (4 heads of 8, 2 KV heads), MLP 64, untied, HF's
    /// default `initializer_range` (0.02) unless set.
    pub fn new(arch: &str) -> Self {
        Self {
            config: json!({
                "model_type": arch, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 8, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "tie_word_embeddings": false
            }),
        }
    }

    /// The smallest Qwen2 checkpoint, as `save_pretrained` writes its config (`architectures`,
    /// `torch_dtype`): vocabulary 32, 2 layers of hidden size 16 (2 heads, 1 KV head), MLP 32, untied.
    pub fn qwen2_checkpoint() -> Self {
        Self {
            config: json!({
                "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32,
                "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": false, "torch_dtype": "float32"
            }),
        }
    }

    /// A Qwen2 of benchmark size, with the HF fields transformers reads it by and 1024 positions:
    /// `layers` layers of hidden size `hidden` (`heads` heads, `kv_heads` KV heads), MLP
    /// `intermediate`, vocabulary `vocab`, untied.
    pub fn qwen2_bench(
        vocab: i64,
        hidden: i64,
        intermediate: i64,
        layers: i64,
        heads: i64,
        kv_heads: i64,
    ) -> Self {
        Self {
            config: json!({
                "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab,
                "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "max_position_embeddings": 1024, "tie_word_embeddings": false,
                "hidden_act": "silu", "torch_dtype": "float32"
            }),
        }
    }

    /// The built-in default's model (`configs/math.toml`: `new_model = "tiny"`, the `tiny` preset of
    /// `alp-rl new-model`) with the char tokenizer's 101 tokens, for benchmarks: 2 layers of hidden
    /// size 64 (4 heads, 2 KV heads), MLP 192.
    pub fn math_default() -> Self {
        Self::qwen2_bench(101, 64, 192, 2, 4, 2)
    }

    /// Qwen2.5-0.5B's shape (24 layers, hidden 896, GQA 14/2, MLP 4864, Qwen's 151,936-token
    /// vocabulary, tied embeddings), for the GPU benchmarks.
    pub fn qwen2_5_0_5b() -> Self {
        Self::qwen2_bench(151_936, 896, 4864, 24, 14, 2).with("tie_word_embeddings", true)
    }

    /// SmolLM2-135M's shape (Llama, 30 layers, hidden 576, 9 heads of 64 with 3 KV heads, MLP 1536,
    /// 49,152 tokens, tied embeddings), for the real-model benchmarks where the checkpoint is missing.
    pub fn smollm2_135m() -> Self {
        TinyModel::new("llama")
            .with("vocab_size", 49_152)
            .with("hidden_size", 576)
            .with("intermediate_size", 1536)
            .with("num_hidden_layers", 30)
            .with("num_attention_heads", 9)
            .with("num_key_value_heads", 3)
            .with("head_dim", 64)
            .with("max_position_embeddings", 8192)
            .with("rms_norm_eps", 1e-5)
            .with("tie_word_embeddings", true)
            .with("initializer_range", 0.02)
    }

    /// Sets field `key` of the config to `value`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.config[key] = value.into();
        self
    }

    /// The config as `config.json` would hold it.
    pub fn json(&self) -> Value {
        self.config.clone()
    }

    /// The config as the policy reads it.
    pub fn config(&self) -> ModelConfig {
        ModelConfig::from_json_str(&self.config.to_string(), "tiny test model").unwrap()
    }

    /// A random f32 model on the CPU, the same for the same `seed`.
    pub fn random(&self, seed: u64) -> CausalLM {
        self.random_as(Kind::Float, seed)
    }

    /// A random model with parameters of `kind` on the CPU, the same for the same `seed`.
    pub fn random_as(&self, kind: Kind, seed: u64) -> CausalLM {
        self.random_on(kind, Device::Cpu, seed)
    }

    /// A random model with parameters of `kind` on `device`.
    pub fn random_on(&self, kind: Kind, device: Device, seed: u64) -> CausalLM {
        let opts = LoadOptions {
            kind,
            device,
            ..LoadOptions::default()
        };
        CausalLM::random(self.config(), &opts, seed).unwrap()
    }

    /// Writes [`TinyModel::random`]`(seed)` as a checkpoint in `dir`.
    pub fn save(&self, dir: &Path, seed: u64) {
        self.random(seed).save(dir).unwrap();
    }
}

/// A model with `model`'s config and a copy of its weights (separate storage).
pub fn copy_of(model: &CausalLM) -> CausalLM {
    let copy = CausalLM::random(model.config().clone(), &LoadOptions::default(), 99).unwrap();
    copy.copy_weights_from(model);
    copy
}

/// Where `scripts/get-smollm2.sh` caches SmolLM2-135M-Instruct.
pub fn smollm2_cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/alp-rl/models/smollm2-135m-instruct")
}

/// The cached SmolLM2-135M-Instruct (and `true`), or a random model of its shape written into
/// `tmp` (and `false`) when it is missing.
pub fn smollm2_or_random(tmp: &Path) -> (PathBuf, bool) {
    let real = smollm2_cache_dir();
    if real.join("model.safetensors").is_file() {
        return (real, true);
    }
    TinyModel::smollm2_135m().save(tmp, 0);
    (tmp.to_path_buf(), false)
}
