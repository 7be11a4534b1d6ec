//! Parity with HF transformers on tiny random checkpoints written by `save_pretrained`:
//! logits of a ragged, padded batch against each prompt run alone in transformers, and the save
//! round trip (bit-exact reload; transformers reads what we write, single-file or sharded, and gives
//! the same logits), and bf16/f16 load and save.
use alp_policy::{CausalLM, LoadOptions, NoHooks, SaveOptions};
use alp_test_support::{hf_models, oracle};
use tch::{Kind, Tensor};

const TOL: f32 = 1e-4;
/// Largest logit difference of the bf16 and f16 models from the f32 one, relative to the largest f32
/// logit. Measured on the qwen2 test checkpoint: bf16 2.02e-2, f16 2.95e-3, the same as transformers'
/// own bf16 and f16 forwards of that checkpoint give against its f32 one (2.02e-2, 2.95e-3); the bounds
/// leave about 1.5x of that.
const BF16_TOL: f64 = 0.03;
const F16_TOL: f64 = 0.005;

/// Pads `prompts` into `[b, max_len]` ids and mask, on the left or the right.
fn pad(prompts: &[Vec<i64>], left: bool) -> (Tensor, Tensor, Vec<i64>) {
    let max = prompts.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut offsets = Vec::new();
    for p in prompts {
        let padding = max - p.len();
        let (pre, post) = if left { (padding, 0) } else { (0, padding) };
        offsets.push(pre as i64);
        ids.extend(
            std::iter::repeat_n(0, pre)
                .chain(p.iter().copied())
                .chain(std::iter::repeat_n(0, post)),
        );
        mask.extend(
            std::iter::repeat_n(0i64, pre)
                .chain(std::iter::repeat_n(1, p.len()))
                .chain(std::iter::repeat_n(0, post)),
        );
    }
    let b = prompts.len() as i64;
    (
        Tensor::from_slice(&ids).view([b, max as i64]),
        Tensor::from_slice(&mask).view([b, max as i64]),
        offsets,
    )
}

/// Max abs difference between our padded-batch logits and the per-prompt references.
fn max_diff(
    model: &CausalLM,
    prompts: &[Vec<i64>],
    reference: &[hf_models::OracleResult],
    left: bool,
) -> f32 {
    let (ids, mask, offsets) = pad(prompts, left);
    let logits = tch::no_grad(|| model.forward(&ids, Some(&mask), &NoHooks));
    let mut worst = 0f32;
    for (row, (prompt, refr)) in prompts.iter().zip(reference).enumerate() {
        let ours = logits
            .get(row as i64)
            .narrow(0, offsets[row], prompt.len() as i64)
            .to_kind(Kind::Float);
        let theirs = Tensor::from_slice2(&refr.logits);
        let d = f32::try_from((ours - theirs).abs().max()).unwrap();
        worst = worst.max(d);
    }
    worst
}

#[test]
fn logits_match_transformers_for_ragged_batches_and_save_round_trips() {
    tch::set_num_threads(1);
    let prompts = hf_models::ragged_prompts();
    for &(arch, tied, kv_heads) in hf_models::CASES {
        let dir = tempfile::tempdir().unwrap();
        let reference =
            hf_models::make_model_with_reference(arch, dir.path(), tied, kv_heads, &prompts, 0);
        let model = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(model.config().tie_word_embeddings, tied);
        for left in [false, true] {
            let d = max_diff(&model, &prompts, &reference, left);
            assert!(
                d < TOL,
                "{arch} tied={tied} kv={kv_heads} left_pad={left}: max abs diff {d} >= {TOL}"
            );
        }

        // Save, reload bit-exactly, and let transformers read our checkpoint.
        let saved = tempfile::tempdir().unwrap();
        model.save(saved.path()).unwrap();
        let reloaded = CausalLM::load(saved.path(), &LoadOptions::default()).unwrap();
        for ((n1, t1), (n2, t2)) in model
            .named_parameters()
            .iter()
            .zip(reloaded.named_parameters())
        {
            assert_eq!(n1, &n2);
            assert!(t1.equal(&t2), "{arch}: {n1} differs after save/load");
        }
        let header = std::fs::read(saved.path().join("model.safetensors")).unwrap();
        let names = safetensors::SafeTensors::deserialize(&header)
            .unwrap()
            .names()
            .len();
        let has_head = safetensors::SafeTensors::deserialize(&header)
            .unwrap()
            .names()
            .iter()
            .any(|n| n == &"lm_head.weight");
        assert_eq!(names, model.named_parameters().len());
        assert_eq!(
            has_head, !tied,
            "{arch}: tied models must not save lm_head.weight"
        );
        let from_ours = hf_models::reference(saved.path(), &prompts, 0);
        let d = max_diff(&model, &prompts, &from_ours, false);
        assert!(
            d < TOL,
            "{arch}: transformers on our saved checkpoint differs by {d}"
        );
    }
}

/// Loading an f32 checkpoint in `kind` (bf16 or f16) converts every weight, and the logits stay within
/// `rel_tol` of the f32 model's (relative to the largest f32 logit) without being equal. A save in
/// `kind` writes `kind` tensors (`torch_dtype` `hf_name`), reloads bit-exactly in `kind`, loads in f32
/// as exactly the rounded weights, and transformers reading it gives that f32 model's logits.
fn low_precision_load_and_save(
    kind: Kind,
    st_dtype: safetensors::Dtype,
    hf_name: &str,
    rel_tol: f64,
) {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    hf_models::make_model("qwen2", dir.path(), false, 2);
    let f32_model = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();
    let low = LoadOptions {
        kind,
        ..LoadOptions::default()
    };
    let low_model = CausalLM::load(dir.path(), &low).unwrap();
    assert_eq!(low_model.kind(), kind);
    for ((name, x), (_, y)) in f32_model
        .named_parameters()
        .iter()
        .zip(low_model.named_parameters())
    {
        assert_eq!(y.kind(), kind, "{name}");
        // Conversion is round-to-nearest, as torch's `.to(dtype)` does.
        assert!(
            x.to_kind(kind).equal(&y),
            "{name} is not the rounded f32 weight"
        );
    }
    let ids = Tensor::from_slice(&[1i64, 17, 42, 99, 3]).view([1, 5]);
    let a = tch::no_grad(|| f32_model.forward(&ids, None, &NoHooks));
    let b = tch::no_grad(|| low_model.forward(&ids, None, &NoHooks)).to_kind(Kind::Float);
    let diff = f64::try_from((&a - &b).abs().max()).unwrap();
    let scale = f64::try_from(a.abs().max()).unwrap();
    eprintln!(
        "{hf_name} vs f32: max abs logit diff {diff:.4e}, relative {:.4e}",
        diff / scale
    );
    assert!(
        diff > 0.0 && diff < rel_tol * scale,
        "{hf_name} vs f32 diff {diff}, scale {scale}, relative {} (tolerance {rel_tol})",
        diff / scale
    );

    let saved = tempfile::tempdir().unwrap();
    low_model.save(saved.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], hf_name);
    let bytes = std::fs::read(saved.path().join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in file.tensors() {
        assert_eq!(view.dtype(), st_dtype, "{name} on disk");
    }
    let again = CausalLM::load(saved.path(), &low).unwrap();
    assert_same_parameters(&low_model, &again, &format!("{hf_name} round trip"));
    let widened = CausalLM::load(saved.path(), &LoadOptions::default()).unwrap();
    for ((name, x), (_, y)) in low_model
        .named_parameters()
        .iter()
        .zip(widened.named_parameters())
    {
        assert!(
            x.to_kind(Kind::Float).equal(&y),
            "{name}: {hf_name} file read as f32"
        );
    }
    let prompts = hf_models::ragged_prompts();
    let from_ours = hf_models::reference(saved.path(), &prompts, 0);
    let d = max_diff(&widened, &prompts, &from_ours, false);
    assert!(
        d < TOL,
        "transformers on our {hf_name} checkpoint differs by {d}"
    );
}

#[test]
fn bf16_load_converts_and_stays_close_to_f32() {
    low_precision_load_and_save(
        Kind::BFloat16,
        safetensors::Dtype::BF16,
        "bfloat16",
        BF16_TOL,
    );
}

#[test]
fn f16_load_converts_and_stays_close_to_f32() {
    low_precision_load_and_save(Kind::Half, safetensors::Dtype::F16, "float16", F16_TOL);
}

/// safetensors (Python) and the index agree on a sharded checkpoint: transformers' shard names, every
/// tensor in the file the `weight_map` names, `metadata.total_size` the sum of the tensors' bytes, no
/// shard over `max` bytes unless it holds a single tensor. Returns the number of shards.
fn check_index_with_python(dir: &std::path::Path, max: u64) -> usize {
    let script = r#"
import json, sys
from safetensors import safe_open
d, limit = sys.argv[1], int(sys.argv[2])
index = json.load(open(f"{d}/model.safetensors.index.json"))
wm = index["weight_map"]
files = sorted(set(wm.values()))
n = len(files)
assert files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)], files
total, params, seen = 0, 0, {}
for f in files:
    with safe_open(f"{d}/{f}", "pt") as st:
        assert st.metadata() == {"format": "pt"}, st.metadata()
        keys = list(st.keys())
        size = 0
        for k in keys:
            t = st.get_tensor(k)
            size += t.numel() * t.element_size()
            params += t.numel()
            seen[k] = f
        assert size <= limit or len(keys) == 1, (f, size, keys)
        total += size
assert seen == wm, (seen, wm)
assert index["metadata"]["total_size"] == total, (index["metadata"], total)
assert index["metadata"]["total_parameters"] == params, (index["metadata"], params)
print(n)
"#;
    let out = oracle::run(
        oracle::python_command().args(["-c", script, dir.to_str().unwrap(), &max.to_string()]),
        "the safetensors index check",
    );
    out.trim().parse().unwrap()
}

fn assert_same_parameters(a: &CausalLM, b: &CausalLM, what: &str) {
    let (pa, pb) = (a.named_parameters(), b.named_parameters());
    assert_eq!(pa.len(), pb.len(), "{what}");
    for ((n1, t1), (n2, t2)) in pa.iter().zip(&pb) {
        assert_eq!(n1, n2, "{what}");
        assert!(t1.equal(t2), "{what}: {n1} differs");
    }
}

#[test]
fn sharded_save_round_trips_and_transformers_loads_it() {
    tch::set_num_threads(1);
    let prompts = hf_models::ragged_prompts();
    let dir = tempfile::tempdir().unwrap();
    let reference =
        hf_models::make_model_with_reference("qwen2", dir.path(), false, 2, &prompts, 0);
    let model = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();

    // 60 kB: the f32 embedding and head (65,536 bytes each) exceed it and get shards of their own,
    // the layers' projections fill the others.
    let max = 60_000;
    let saved = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        max_shard_size: max,
        ..SaveOptions::default()
    };
    model.save_with(saved.path(), &opts).unwrap();
    assert!(!saved.path().join("model.safetensors").exists());
    let shards = check_index_with_python(saved.path(), max);
    assert!(shards >= 4, "{shards} shards");
    let reloaded = CausalLM::load(saved.path(), &LoadOptions::default()).unwrap();
    assert_same_parameters(&model, &reloaded, "sharded round trip");
    let from_ours = hf_models::reference(saved.path(), &prompts, 0);
    let d = max_diff(&model, &prompts, &from_ours, false);
    assert!(
        d < TOL,
        "transformers on our sharded checkpoint differs by {d}"
    );
    let d = max_diff(&model, &prompts, &reference, false);
    assert!(d < TOL, "{d}");

    // Saving again into the same directory with the default limit: one file, no stale shards or
    // index left for a loader to find; and back to shards, with the single file gone.
    model.save(saved.path()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(saved.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    assert_same_parameters(
        &model,
        &CausalLM::load(saved.path(), &LoadOptions::default()).unwrap(),
        "single file after shards",
    );
    model.save_with(saved.path(), &opts).unwrap();
    assert!(!saved.path().join("model.safetensors").exists());
    assert_eq!(check_index_with_python(saved.path(), max), shards);
}
