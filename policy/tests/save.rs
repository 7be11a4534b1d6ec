//! What `CausalLM::save` writes, checked against the safetensors crate and the filesystem: the same
//! bytes as `safetensors::serialize`, ordinary file modes, no temporary files left.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use alp_policy::SaveOptions;
use alp_test_support::tiny_model::TinyModel;
use safetensors::tensor::{Dtype, TensorView};
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
