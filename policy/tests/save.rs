//! What `CausalLM::save` writes, checked against the safetensors crate and the filesystem: the same
//! bytes as `safetensors::serialize`, ordinary file modes, no temporary files left.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use alp_policy::{CausalLM, LoadOptions, ModelConfig, SaveOptions};
use alp_test_support::tiny_model::TinyModel;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use tch::Kind;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn single_file_is_what_safetensors_serialize_writes() {
    let model = TinyModel::qwen2_checkpoint().random(0);
    for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
        let dir = tempfile::tempdir().unwrap();
        model.save_as(dir.path(), kind).unwrap();
        let dtype = match kind {
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            _ => Dtype::F32,
        };
        let params: Vec<(String, Vec<usize>, Vec<u8>)> = model
            .named_parameters()
            .into_iter()
            .map(|(name, t)| {
                let t = t.to_kind(kind).contiguous();
                let mut bytes = vec![0u8; t.numel() * kind.elt_size_in_bytes()];
                t.copy_data_u8(&mut bytes, t.numel());
                let shape = t.size().iter().map(|&d| d as usize).collect();
                (name, shape, bytes)
            })
            .collect();
        let views: Vec<(&str, TensorView)> = params
            .iter()
            .map(|(n, shape, bytes)| {
                (
                    n.as_str(),
                    TensorView::new(dtype, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let expected = safetensors::serialize(views, Some(metadata)).unwrap();
        let written = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        assert!(
            written == expected,
            "{kind:?}: model.safetensors differs from safetensors::serialize"
        );
    }
}

#[test]
fn saved_files_have_the_mode_of_any_new_file_and_no_temporaries() {
    let model = TinyModel::qwen2_checkpoint().random(0);
    let dir = tempfile::tempdir().unwrap();
    // What the process's umask gives a newly created file (0644 under the usual 022).
    let reference = dir.path().join("reference");
    std::fs::File::create(&reference).unwrap();
    let expected = mode(&reference);
    assert_eq!(
        expected & 0o600,
        0o600,
        "the test needs a umask that lets the owner read and write"
    );

    let check = |dir: &Path| {
        for name in file_names(dir) {
            let path = dir.join(&name);
            assert!(
                !name.starts_with('.'),
                "temporary file left: {}",
                path.display()
            );
            assert_eq!(
                mode(&path),
                expected,
                "{}: mode {:o}, a new file gets {expected:o}",
                path.display(),
                mode(&path)
            );
        }
    };
    let single = dir.path().join("single");
    model.save(&single).unwrap();
    assert_eq!(file_names(&single), ["config.json", "model.safetensors"]);
    check(&single);
    let sharded = dir.path().join("sharded");
    let opts = SaveOptions {
        max_shard_size: 4_000,
        ..SaveOptions::default()
    };
    model.save_with(&sharded, &opts).unwrap();
    let names = file_names(&sharded);
    assert!(
        names.len() > 3 && names.contains(&"model.safetensors.index.json".to_string()),
        "{names:?}"
    );
    check(&sharded);
}

/// `tied_head_copy` (for vLLM's live reload) adds `lm_head.weight`, byte for byte the embedding, to a
/// tied model's files and nothing to an untied one's; our loader still reads the checkpoint.
#[test]
fn tied_head_copy_writes_the_embedding_as_the_head() {
    let cfg = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32,
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "float32"
    });
    let cfg = ModelConfig::from_json_str(&cfg.to_string(), "test").unwrap();
    let tied = CausalLM::random(cfg, &LoadOptions::default(), 3).unwrap();
    let opts = SaveOptions {
        tied_head_copy: true,
        ..SaveOptions::default()
    };
    let tensors = |model: &CausalLM| {
        let dir = tempfile::tempdir().unwrap();
        model.save_with(dir.path(), &opts).unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let out: HashMap<String, Vec<u8>> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.data().to_vec()))
            .collect();
        let reloaded = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(
            reloaded.named_parameters().len(),
            model.named_parameters().len()
        );
        out
    };
    let written = tensors(&tied);
    assert_eq!(written.len(), tied.named_parameters().len() + 1);
    assert_eq!(
        written["lm_head.weight"],
        written["model.embed_tokens.weight"]
    );
    let untied = TinyModel::qwen2_checkpoint().random(0);
    let written = tensors(&untied);
    assert_eq!(written.len(), untied.named_parameters().len());
}
