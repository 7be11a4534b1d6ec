//! Malformed checkpoints are refused with an error that names the problem, never a panic.
use std::collections::HashMap;
use std::path::Path;

use alp_policy::{CausalLM, LoadOptions, ModelConfig, PolicyError};
use alp_test_support::safetensors_edit::{edit_safetensors, Entry};
use alp_test_support::tiny_model::TinyModel;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::json;

/// Rewrites `dir/model.safetensors` through `edit`, which gets (name, dtype, shape, bytes) entries.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    edit_safetensors(&dir.join("model.safetensors"), edit);
}

fn load_err(dir: &Path) -> String {
    let err: PolicyError = CausalLM::load(dir, &LoadOptions::default()).unwrap_err();
    err.to_string()
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    rewrite_weights(dir.path(), |e| {
        e.retain(|(n, ..)| n != "model.layers.1.mlp.up_proj.weight")
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("model.layers.1.mlp.up_proj.weight"), "{msg}");
    assert!(msg.contains("missing") && msg.contains("[32, 16]"), "{msg}");
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    rewrite_weights(dir.path(), |e| {
        let t = e
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        t.2 = vec![16, 8]; // 128 elements in a [8, 16] slot
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.0.self_attn.k_proj.weight"),
        "{msg}"
    );
    assert!(msg.contains("[16, 8]") && msg.contains("[8, 16]"), "{msg}");
}

#[test]
fn truncated_file_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated or corrupt"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    let mut cfg = TinyModel::qwen2_checkpoint().json();
    cfg["model_type"] = json!("gpt_neox");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("gpt_neox") && msg.contains("unknown architecture"),
        "{msg}"
    );
    // The supported list comes from the family table, with the transformers class names.
    for name in [
        "qwen2",
        "qwen3",
        "llama",
        "Qwen2ForCausalLM",
        "LlamaForCausalLM",
    ] {
        assert!(msg.contains(name), "{name} missing from: {msg}");
    }
}

#[test]
fn wrong_dtype_on_disk_is_named() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    rewrite_weights(dir.path(), |e| {
        let t = e
            .iter_mut()
            .find(|(n, ..)| n == "model.norm.weight")
            .unwrap();
        t.1 = Dtype::I32; // same byte size as f32
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.norm.weight") && msg.contains("I32"),
        "{msg}"
    );
}

#[test]
fn unsupported_compute_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    let opts = LoadOptions {
        kind: tch::Kind::Int64,
        ..LoadOptions::default()
    };
    let msg = CausalLM::load(dir.path(), &opts).unwrap_err().to_string();
    assert!(
        msg.contains("Int64") && msg.contains("f32, bf16 or f16"),
        "{msg}"
    );
}

#[test]
fn missing_config_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    let mut cfg = TinyModel::qwen2_checkpoint().json();
    cfg.as_object_mut().unwrap().remove("intermediate_size");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("`intermediate_size` is missing"),
        "{msg}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    rewrite_weights(dir.path(), |e| {
        e.push((
            "model.layers.0.self_attn.q_norm.weight".into(),
            Dtype::F32,
            vec![8],
            vec![0; 32],
        ))
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.0.self_attn.q_norm.weight") && msg.contains("Qwen2ForCausalLM"),
        "{msg}"
    );
}

#[test]
fn missing_weights_and_missing_config_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
    std::fs::write(
        dir.path().join("config.json"),
        TinyModel::qwen2_checkpoint().json().to_string(),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("no weights found"), "{msg}");
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_checkpoint().save(dir.path(), 0);
    let single = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();
    // Split the file into two shards with an index, as transformers does for large models.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(
            views,
            None::<HashMap<String, String>>,
            &dir.path().join(file),
        )
        .unwrap();
        for n in part {
            weight_map.insert(n.clone(), json!(file));
        }
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let sharded = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();
    for ((n, a), (_, b)) in single
        .named_parameters()
        .iter()
        .zip(sharded.named_parameters())
    {
        assert!(a.equal(&b), "{n} differs between single and sharded loads");
    }
}

#[test]
fn config_spellings_of_transformers_4_and_5_agree() {
    let mut v4 = TinyModel::qwen2_checkpoint().json();
    v4["rope_theta"] = json!(500000.0);
    v4["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let mut v5 = TinyModel::qwen2_checkpoint().json();
    let obj = v5.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.remove("torch_dtype");
    obj.insert("dtype".into(), json!("bfloat16"));
    obj.insert(
        "rope_parameters".into(),
        json!({"rope_type": "llama3", "rope_theta": 500000.0,
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    );
    let a = ModelConfig::from_json_str(&v4.to_string(), "v4").unwrap();
    let b = ModelConfig::from_json_str(&v5.to_string(), "v5").unwrap();
    assert_eq!(a.rope_theta, b.rope_theta);
    assert_eq!(a.rope_scaling, b.rope_scaling);
    assert_eq!(b.stored_dtype.as_deref(), Some("bfloat16"));
    assert!(matches!(
        a.rope_scaling,
        alp_policy::RopeScaling::Llama3 { .. }
    ));
}

#[test]
fn impossible_config_values_are_refused_by_field() {
    for (field, value) in [
        ("rope_theta", json!(-5.0)),
        ("rope_theta", json!(0.0)),
        ("rms_norm_eps", json!(-1.0)),
        ("vocab_size", json!(0)),
        ("hidden_size", json!(-16)),
        ("max_position_embeddings", json!(0)),
        ("head_dim", json!(7)),
    ] {
        let mut cfg = TinyModel::qwen2_checkpoint().json();
        cfg[field] = value.clone();
        let msg = ModelConfig::from_json_str(&cfg.to_string(), "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("m/config.json") && msg.contains(&format!("`{field}`")),
            "{field} = {value}: {msg}"
        );
    }
    let mut cfg = TinyModel::qwen2_checkpoint().json();
    cfg["rope_scaling"] = json!({"rope_type": "linear", "factor": -2.0});
    let msg = ModelConfig::from_json_str(&cfg.to_string(), "m/config.json")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`rope_scaling`"), "{msg}");
}

#[test]
fn a_weight_map_outside_the_checkpoint_is_refused() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    TinyModel::qwen2_checkpoint().save(&dir, 0);
    // A valid shard outside the checkpoint directory: it must not be read.
    std::fs::rename(
        dir.join("model.safetensors"),
        outer.path().join("elsewhere.safetensors"),
    )
    .unwrap();
    for shard in [
        "../elsewhere.safetensors".to_string(),
        outer
            .path()
            .join("elsewhere.safetensors")
            .display()
            .to_string(),
        String::new(),
    ] {
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            json!({"weight_map": {"model.embed_tokens.weight": shard}}).to_string(),
        )
        .unwrap();
        let msg = load_err(&dir);
        assert!(
            msg.contains("weight_map") && msg.contains("not a file inside"),
            "{shard}: {msg}"
        );
    }
}

/// `cfg` with `edits` applied, parsed.
fn parse_edited(
    mut cfg: serde_json::Value,
    edits: &[(&str, serde_json::Value)],
) -> Result<ModelConfig, PolicyError> {
    for (key, value) in edits {
        cfg[*key] = value.clone();
    }
    ModelConfig::from_json_str(&cfg.to_string(), "m/config.json")
}

/// Asserts that `edits` on `arch`'s tiny config are refused with an error naming `field` and the file.
fn assert_refused(arch: &str, edits: &[(&str, serde_json::Value)], field: &str) {
    let msg = parse_edited(TinyModel::new(arch).json(), edits)
        .map(|_| "accepted".to_string())
        .unwrap_or_else(|e| e.to_string());
    assert!(
        msg.contains("m/config.json") && msg.contains(&format!("`{field}`")),
        "{arch} {edits:?}: {msg}"
    );
}

#[test]
fn hidden_act_other_than_silu_is_refused() {
    assert_refused("llama", &[("hidden_act", json!("gelu"))], "hidden_act");
}

#[test]
fn sliding_window_attention_is_refused_when_a_layer_would_use_it() {
    // HF's rule: with use_sliding_window, layers from max_window_layers on (or those layer_types
    // marks) attend through the window; sliding_window absent means 4096.
    for arch in ["qwen2", "qwen3"] {
        assert_refused(
            arch,
            &[
                ("use_sliding_window", json!(true)),
                ("max_window_layers", json!(0)),
            ],
            "use_sliding_window",
        );
        assert_refused(
            arch,
            &[
                ("use_sliding_window", json!(true)),
                ("sliding_window", json!(16)),
                ("max_window_layers", json!(1)),
            ],
            "use_sliding_window",
        );
        assert_refused(
            arch,
            &[
                ("use_sliding_window", json!(true)),
                ("max_window_layers", json!(5)),
                (
                    "layer_types",
                    json!(["full_attention", "sliding_attention"]),
                ),
            ],
            "use_sliding_window",
        );
        // No layer slides: the window is off, null, or starts past the last layer.
        let qwen = TinyModel::new(arch).json();
        for edits in [
            vec![
                ("use_sliding_window", json!(false)),
                ("sliding_window", json!(32768)),
                ("max_window_layers", json!(0)),
            ],
            vec![
                ("use_sliding_window", json!(true)),
                ("sliding_window", json!(null)),
            ],
            vec![
                ("use_sliding_window", json!(true)),
                ("sliding_window", json!(64)),
                ("max_window_layers", json!(2)),
            ],
            // The default max_window_layers (28) is past the tiny model's 2 layers.
            vec![("use_sliding_window", json!(true))],
        ] {
            parse_edited(qwen.clone(), &edits).unwrap_or_else(|e| panic!("{edits:?}: {e}"));
        }
    }
}

#[test]
fn biases_a_family_does_not_have_are_refused() {
    assert_refused("qwen2", &[("mlp_bias", json!(true))], "mlp_bias");
    assert_refused("qwen3", &[("mlp_bias", json!(true))], "mlp_bias");
    assert_refused(
        "qwen2",
        &[("attention_bias", json!(true))],
        "attention_bias",
    );
    // Where the family has them, they are parameters.
    let llama = parse_edited(
        TinyModel::new("llama").json(),
        &[("mlp_bias", json!(true)), ("attention_bias", json!(true))],
    )
    .unwrap();
    assert!(llama.mlp_bias && llama.qkv_bias && llama.o_bias);
    let qwen3 = parse_edited(
        TinyModel::new("qwen3").json(),
        &[("attention_bias", json!(true))],
    )
    .unwrap();
    assert!(qwen3.qkv_bias && qwen3.o_bias && !qwen3.mlp_bias);
}

#[test]
fn partial_rotary_embeddings_are_refused() {
    assert_refused(
        "llama",
        &[("partial_rotary_factor", json!(0.5))],
        "partial_rotary_factor",
    );
    assert_refused(
        "qwen2",
        &[(
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}),
        )],
        "partial_rotary_factor",
    );
    parse_edited(
        TinyModel::new("llama").json(),
        &[("partial_rotary_factor", json!(1.0))],
    )
    .unwrap();
}

#[test]
fn logit_softcapping_is_refused() {
    for field in ["attn_logit_softcapping", "final_logit_softcapping"] {
        assert_refused("qwen3", &[(field, json!(30.0))], field);
        parse_edited(TinyModel::new("qwen3").json(), &[(field, json!(null))]).unwrap();
    }
}

#[test]
fn attention_dropout_is_refused() {
    assert_refused(
        "qwen2",
        &[("attention_dropout", json!(0.1))],
        "attention_dropout",
    );
    parse_edited(
        TinyModel::new("qwen2").json(),
        &[("attention_dropout", json!(0.0))],
    )
    .unwrap();
}

#[test]
fn rope_scaling_types_not_implemented_are_refused() {
    for rope_type in ["dynamic", "yarn", "longrope"] {
        assert_refused(
            "llama",
            &[(
                "rope_scaling",
                json!({"rope_type": rope_type, "factor": 4.0}),
            )],
            "rope_scaling",
        );
    }
}

#[test]
fn quantized_checkpoints_are_refused() {
    assert_refused(
        "qwen2",
        &[(
            "quantization_config",
            json!({"quant_method": "gptq", "bits": 4}),
        )],
        "quantization_config",
    );
}

#[test]
fn released_model_configs_load() {
    // The computation-relevant keys of Qwen2.5-0.5B-Instruct, Qwen3-0.6B, Llama-3.2-1B and
    // SmolLM2-135M's config.json files, on the tiny shapes.
    let qwen25 = [
        ("architectures", json!(["Qwen2ForCausalLM"])),
        ("attention_dropout", json!(0.0)),
        ("hidden_act", json!("silu")),
        ("max_window_layers", json!(21)),
        ("rope_scaling", json!(null)),
        ("sliding_window", json!(32768)),
        ("use_sliding_window", json!(false)),
    ];
    let qwen3 = [
        ("architectures", json!(["Qwen3ForCausalLM"])),
        ("attention_bias", json!(false)),
        ("attention_dropout", json!(0.0)),
        ("max_window_layers", json!(28)),
        ("sliding_window", json!(null)),
        ("use_sliding_window", json!(false)),
    ];
    let llama32 = [
        ("architectures", json!(["LlamaForCausalLM"])),
        ("attention_bias", json!(false)),
        ("mlp_bias", json!(false)),
        ("pretraining_tp", json!(1)),
        (
            "rope_scaling",
            json!({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
        ),
    ];
    let smollm2 = [
        ("architectures", json!(["LlamaForCausalLM"])),
        ("attention_bias", json!(false)),
        ("attention_dropout", json!(0.0)),
        ("mlp_bias", json!(false)),
        ("pretraining_tp", json!(1)),
        ("rope_scaling", json!(null)),
    ];
    for (arch, edits) in [
        ("qwen2", &qwen25[..]),
        ("qwen3", &qwen3[..]),
        ("llama", &llama32[..]),
        ("llama", &smollm2[..]),
    ] {
        let cfg = parse_edited(TinyModel::new(arch).json(), edits)
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(cfg.architecture.as_str(), arch);
    }
    // A file naming only the transformers class is that family.
    let mut by_class = TinyModel::new("qwen3").json();
    by_class.as_object_mut().unwrap().remove("model_type");
    by_class["architectures"] = json!(["Qwen3ForCausalLM"]);
    let cfg = ModelConfig::from_json_str(&by_class.to_string(), "m/config.json").unwrap();
    assert_eq!(cfg.architecture.as_str(), "qwen3");
}
