//! Malformed LoRA adapters are refused with an error naming the file, the key and the fix, never a
//! panic, and nothing is loaded from them. Each case edits one thing of a valid adapter (saved here
//! on a tiny Qwen2, which loads back as saved: the control).
use std::path::Path;

use alp_policy::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use alp_policy::{CausalLM, LoraAdapter, LoraConfig, LoraError, TargetModules};
use alp_test_support::safetensors_edit::{edit_safetensors, Entry};
use alp_test_support::tiny_model::TinyModel;
use safetensors::tensor::Dtype;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

const BASE: &str = "Org/tiny-qwen2";
const Q0_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q0_B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

type Entries = Vec<Entry>;

/// A valid rank-2 adapter on q_proj and v_proj of `model`, with non-zero B, saved into `dir`.
fn save_valid(model: &CausalLM, dir: &Path) -> LoraAdapter {
    let targets = TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]);
    let mut config = LoraConfig::new(2, 4.0, targets);
    config.base_model_name_or_path = Some(BASE.into());
    let adapter = LoraAdapter::init(config, model, 3).unwrap();
    tch::manual_seed(0);
    let b: Vec<(String, Tensor)> = adapter
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| n.contains("lora_B"))
        .map(|(n, t)| (n, Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu))))
        .collect();
    adapter.set_named_tensors(&b).unwrap();
    adapter.save(dir).unwrap();
    adapter
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Entries)) {
    edit_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), edit);
}

fn rename(entries: &mut Entries, from: &str, to: &str) {
    entries.iter_mut().find(|e| e.0 == from).unwrap().0 = to.to_string();
}

/// One malformed adapter: what to change, then the file, key and words its error must hold.
struct Case {
    what: &'static str,
    edit: Box<dyn Fn(&Path)>,
    base: Option<&'static str>,
    file: &'static str,
    key: &'static str,
    says: &'static str,
}

fn config_case(what: &'static str, key: &'static str, value: Value, says: &'static str) -> Case {
    Case {
        what,
        edit: Box::new(move |d| edit_config(d, |c| drop(c.insert(key.into(), value.clone())))),
        base: Some(BASE),
        file: ADAPTER_CONFIG_FILE,
        key,
        says,
    }
}

fn weights_case(
    what: &'static str,
    edit: impl Fn(&mut Entries) + 'static,
    key: &'static str,
    says: &'static str,
) -> Case {
    Case {
        what,
        edit: Box::new(move |d| edit_weights(d, &edit)),
        base: Some(BASE),
        file: ADAPTER_WEIGHTS_FILE,
        key,
        says,
    }
}

fn cases() -> Vec<Case> {
    let no_layer = "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight";
    let up = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight";
    let with_default = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight";
    vec![
        weights_case(
            "a key naming no module",
            move |e| rename(e, Q0_A, no_layer),
            no_layer,
            "names no",
        ),
        weights_case(
            "a key PEFT did not strip",
            move |e| rename(e, Q0_A, with_default),
            with_default,
            "default",
        ),
        weights_case(
            "an untargeted projection",
            move |e| {
                let mut extra = e.iter().find(|x| x.0 == Q0_A).unwrap().clone();
                extra.0 = up.into();
                e.push(extra);
            },
            up,
            "does not select",
        ),
        weights_case(
            "a missing factor",
            |e| e.retain(|x| x.0 != Q0_B),
            Q0_B,
            "is missing",
        ),
        weights_case(
            "a shape that fits no projection",
            |e| {
                e.iter_mut().find(|x| x.0 == Q0_A).unwrap().2 = vec![4, 16];
            },
            Q0_A,
            "has shape [4, 16]",
        ),
        weights_case(
            "a non-finite value",
            |e| {
                let b = e.iter_mut().find(|x| x.0 == Q0_B).unwrap();
                b.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
            },
            Q0_B,
            "non-finite",
        ),
        weights_case(
            "an integer tensor",
            |e| {
                e.iter_mut().find(|x| x.0 == Q0_A).unwrap().1 = Dtype::I32;
            },
            Q0_A,
            "dtype",
        ),
        Case {
            file: ADAPTER_WEIGHTS_FILE,
            key: Q0_A,
            ..config_case(
                "a rank other than the config's",
                "r",
                json!(3),
                "has rank 2",
            )
        },
        config_case(
            "an unknown projection",
            "target_modules",
            json!(["q_proj", "attn_proj"]),
            "attn_proj",
        ),
        config_case(
            "the embedding as a target",
            "target_modules",
            json!(["embed_tokens"]),
            "embedding",
        ),
        config_case(
            "a regex target",
            "target_modules",
            json!(".*q_proj"),
            "regular expression",
        ),
        config_case("dropout", "lora_dropout", json!(0.1), "only 0"),
        config_case(
            "another adapter type",
            "peft_type",
            json!("LOHA"),
            "only LoRA",
        ),
        config_case("a bias", "bias", json!("all"), "biases"),
        config_case("DoRA", "use_dora", json!(true), "DoRA"),
        config_case(
            "per-module ranks",
            "rank_pattern",
            json!({"q_proj": 8}),
            "per-module",
        ),
        config_case("a zero rank", "r", json!(0), "at least 1"),
        config_case(
            "a PiSSA initialisation",
            "init_lora_weights",
            json!("pissa"),
            "base model",
        ),
        Case {
            base: Some("Org/other-model"),
            ..config_case(
                "another base model",
                "base_model_name_or_path",
                json!(BASE),
                "trained on another",
            )
        },
    ]
}

#[test]
fn malformed_adapters_are_refused_by_file_and_key() {
    tch::set_num_threads(1);
    let model = TinyModel::new("qwen2").random(0);
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        save_valid(&model, dir.path());
        (case.edit)(dir.path());
        let err: LoraError = LoraAdapter::load(dir.path(), &model, case.base).expect_err(case.what);
        let msg = err.to_string();
        assert!(msg.contains(case.file), "{}: no file in: {msg}", case.what);
        assert_eq!(err.key(), Some(case.key), "{}: {msg}", case.what);
        assert!(msg.contains(case.says), "{}: {msg}", case.what);
        assert!(msg.contains("fix:"), "{}: no fix in: {msg}", case.what);
    }
}

#[test]
fn a_valid_adapter_loads_back_as_saved_and_missing_files_are_named() {
    let model = TinyModel::new("qwen2").random(0);
    let dir = tempfile::tempdir().unwrap();
    let saved = save_valid(&model, dir.path());
    // The control: the unedited adapter loads, with the same factors, for a matching base name
    // spelled as a local directory.
    let loaded = LoraAdapter::load(dir.path(), &model, Some("/models/TINY-qwen2/")).unwrap();
    assert_eq!(loaded.config(), saved.config());
    for ((n1, t1), (n2, t2)) in saved.named_tensors().iter().zip(loaded.named_tensors()) {
        assert_eq!(n1, &n2);
        assert!(t1.equal(&t2), "{n1}");
    }
    let empty = tempfile::tempdir().unwrap();
    let msg = LoraAdapter::load(empty.path(), &model, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(ADAPTER_CONFIG_FILE), "{msg}");
    std::fs::remove_file(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let msg = LoraAdapter::load(dir.path(), &model, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(ADAPTER_WEIGHTS_FILE), "{msg}");
}
