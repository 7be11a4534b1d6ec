//! LoRA adapters against Python `peft` (scripts/oracles/peft_lora.py) on tiny random Qwen2, Qwen3
//! and Llama checkpoints: adapters PEFT saved (several ranks, alphas, target sets, rslora on and off,
//! PEFT's own initialisation and random B) load here and give PEFT's logits; adapters saved here load
//! in PEFT and give ours; merging gives the unmerged adapter's logits and PEFT's merged ones.
use std::path::{Path, PathBuf};

use alp_policy::lora::TargetModules;
use alp_policy::{CausalLM, LoadOptions, LoraAdapter, LoraConfig, NoHooks};
use alp_policy::{ForwardHooks, Stack};
use alp_test_support::{hf_models, peft};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// f32 logits of alp-rl and PEFT, both with the adapter (the acceptance bound).
const TOL: f32 = 1e-5;
/// A merged model against the unmerged adapter: the same sums, in another order.
const MERGE_TOL: f32 = 1e-4;

/// (arch, tied embeddings, kv heads): one checkpoint of each family.
const MODELS: &[(&str, bool, i64)] =
    &[("qwen2", false, 2), ("qwen3", true, 1), ("llama", false, 2)];

/// PEFT adapters made on every model: (r, lora_alpha, target_modules, use_rslora, random B).
fn peft_adapters() -> Vec<(i64, f64, Value, bool, bool)> {
    vec![
        (4, 8.0, json!(["q_proj", "v_proj"]), false, true),
        (8, 16.0, json!("all-linear"), true, true),
        (
            2,
            32.0,
            json!(["o_proj", "up_proj", "down_proj"]),
            false,
            false,
        ),
        (1, 32.0, json!("all-linear"), false, true),
        (3, 5.0, json!(["k_proj", "gate_proj"]), true, true),
    ]
}

/// The logits of each prompt run alone through `model` with `hooks`.
fn our_logits(model: &CausalLM, prompts: &[Vec<i64>], hooks: &dyn ForwardHooks) -> Vec<Tensor> {
    tch::no_grad(|| {
        prompts
            .iter()
            .map(|p| {
                let ids = Tensor::from_slice(p).view([1, p.len() as i64]);
                model.forward(&ids, None, hooks).get(0).to_kind(Kind::Float)
            })
            .collect()
    })
}

/// PEFT's logits of a `logits` job, per prompt.
fn oracle_logits(result: &Value) -> Vec<Tensor> {
    result["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rows| {
            let rows: Vec<Vec<f32>> = serde_json::from_value(rows.clone()).unwrap();
            Tensor::from_slice2(&rows)
        })
        .collect()
}

fn max_diff(ours: &[Tensor], theirs: &[Tensor]) -> f32 {
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| f32::try_from((a - b).abs().max()).unwrap())
        .fold(0.0, f32::max)
}

fn logits_job(model: &Path, adapter: Option<&Path>, merged: bool) -> Value {
    json!({"op": "logits", "model": model, "adapter": adapter, "merged": merged})
}

fn load(dir: &Path) -> CausalLM {
    CausalLM::load(dir, &LoadOptions::default()).unwrap()
}

/// Checks one PEFT-made adapter: load here, logits as PEFT's, merged logits as unmerged and PEFT's.
fn check_peft_adapter(
    what: &str,
    model_dir: &Path,
    adapter_dir: &Path,
    prompts: &[Vec<i64>],
    results: (&Value, &Value, &Value),
    changes_logits: bool,
) {
    let (peft, peft_merged, base) = results;
    let model = load(model_dir);
    let adapter = LoraAdapter::load(adapter_dir, &model, model_dir.to_str()).unwrap();
    let ours = our_logits(&model, prompts, &adapter);
    let d = max_diff(&ours, &oracle_logits(peft));
    assert!(d < TOL, "{what}: logits differ from PEFT's by {d}");
    let moved = max_diff(&ours, &oracle_logits(base));
    if changes_logits {
        assert!(
            moved > 1e-2,
            "{what}: the adapter barely changes the logits ({moved})"
        );
    } else {
        assert!(
            moved < TOL,
            "{what}: PEFT's initialisation must leave the logits ({moved})"
        );
    }
    // Composed with another hook (here none), the adapter acts the same.
    let stacked = our_logits(&model, prompts, &Stack(vec![&NoHooks, &adapter]));
    assert!(
        max_diff(&stacked, &ours) == 0.0,
        "{what}: a Stack changes the adapter"
    );
    adapter.merge_into(&model).unwrap();
    let merged = our_logits(&model, prompts, &NoHooks);
    let d = max_diff(&merged, &ours);
    assert!(
        d < MERGE_TOL,
        "{what}: merged logits differ from unmerged by {d}"
    );
    let d = max_diff(&merged, &oracle_logits(peft_merged));
    assert!(
        d < MERGE_TOL,
        "{what}: merged logits differ from PEFT's merge by {d}"
    );
}

/// An adapter made here on `model`: PEFT's initialisation, then B set to N(0, 0.1^2) values.
fn our_adapter(model: &CausalLM, config: LoraConfig, seed: u64) -> LoraAdapter {
    let adapter = LoraAdapter::init(config, model, seed).unwrap();
    tch::manual_seed(seed as i64);
    let random_b: Vec<(String, Tensor)> = adapter
        .named_tensors()
        .into_iter()
        .filter(|(name, _)| name.contains("lora_B"))
        .map(|(name, t)| {
            (
                name,
                Tensor::randn(t.size(), (Kind::Float, t.device())) * 0.1,
            )
        })
        .collect();
    adapter.set_named_tensors(&random_b).unwrap();
    adapter
}

/// The adapters saved here, one per model: (config, seed).
fn our_configs() -> Vec<LoraConfig> {
    let mut rs = LoraConfig::new(8, 16.0, TargetModules::AllLinear);
    rs.use_rslora = true;
    let names = |n: &[&str]| TargetModules::Names(n.iter().map(|s| s.to_string()).collect());
    vec![
        LoraConfig::new(4, 8.0, names(&["q_proj", "v_proj", "lm_head"])),
        rs,
        LoraConfig::new(1, 32.0, names(&["model.layers.1.mlp.down_proj", "k_proj"])),
    ]
}

#[test]
fn adapters_match_peft_both_ways_and_merge() {
    tch::set_num_threads(1);
    let prompts = hf_models::ragged_prompts();
    let tmp = tempfile::tempdir().unwrap();
    let model_dirs: Vec<PathBuf> = MODELS
        .iter()
        .map(|(arch, ..)| tmp.path().join(arch))
        .collect();
    let mut jobs = Vec::new();
    for ((arch, tied, kv), dir) in MODELS.iter().zip(&model_dirs) {
        jobs.push(
            json!({"op": "make_model", "arch": arch, "out": dir, "tied": tied,
                         "kv_heads": kv, "seed": 0}),
        );
        jobs.push(logits_job(dir, None, false));
        for (i, (r, alpha, targets, rslora, random_b)) in peft_adapters().into_iter().enumerate() {
            let out = dir.with_extension(format!("peft{i}"));
            jobs.push(
                json!({"op": "make_adapter", "model": dir, "out": out, "r": r,
                             "lora_alpha": alpha, "target_modules": targets,
                             "use_rslora": rslora, "seed": i, "random_b": random_b}),
            );
            jobs.push(logits_job(dir, Some(&out), false));
            jobs.push(logits_job(dir, Some(&out), true));
        }
    }
    let results = peft::run_jobs(&prompts, jobs);
    let per_model = 2 + 3 * peft_adapters().len();
    for (m, dir) in model_dirs.iter().enumerate() {
        let base = &results[m * per_model + 1];
        for (i, adapter) in peft_adapters().iter().enumerate() {
            let at = m * per_model + 2 + 3 * i;
            let what = format!("{} PEFT adapter {i} {adapter:?}", MODELS[m].0);
            let out = dir.with_extension(format!("peft{i}"));
            let res = (&results[at + 1], &results[at + 2], base);
            check_peft_adapter(&what, dir, &out, &prompts, res, adapter.4);
        }
    }

    // Adapters saved here, read by PEFT.
    let mut ours = Vec::new();
    let mut jobs = Vec::new();
    for ((dir, config), seed) in model_dirs.iter().zip(our_configs()).zip(10..) {
        let model = load(dir);
        let adapter = our_adapter(&model, config, seed);
        let out = dir.with_extension("ours");
        adapter.save(&out).unwrap();
        ours.push(our_logits(&model, &prompts, &adapter));
        jobs.push(logits_job(dir, Some(&out), false));
    }
    // A bf16 merge of the first PEFT adapter, by PEFT (bf16 base, f32 factors).
    let peft_merged = tmp.path().join("merged-bf16");
    let adapter_dir = model_dirs[0].with_extension("peft0");
    jobs.push(
        json!({"op": "merge_save", "model": model_dirs[0], "adapter": adapter_dir,
                     "out": peft_merged}),
    );
    let results = peft::run_jobs(&prompts, jobs);
    for (m, (mine, theirs)) in ours.iter().zip(&results).enumerate() {
        let d = max_diff(mine, &oracle_logits(theirs));
        assert!(
            d < TOL,
            "{}: PEFT on our adapter differs by {d}",
            MODELS[m].0
        );
    }
    check_bf16_merge(&model_dirs[0], &adapter_dir, &peft_merged);
}

/// Merged into a bf16 model, each adapted weight is `bf16(W + scale B A)` with the sum in f32: the
/// weights PEFT's `merge_and_unload` gives a bf16 base (its in-place add of the f32 delta).
fn check_bf16_merge(model_dir: &Path, adapter_dir: &Path, peft_merged: &Path) {
    let bf16 = LoadOptions {
        kind: Kind::BFloat16,
        ..LoadOptions::default()
    };
    let model = CausalLM::load(model_dir, &bf16).unwrap();
    let adapter = LoraAdapter::load(adapter_dir, &model, None).unwrap();
    adapter.merge_into(&model).unwrap();
    let theirs = CausalLM::load(peft_merged, &bf16).unwrap();
    let base = CausalLM::load(model_dir, &bf16).unwrap();
    let count = |a: &Tensor, b: &Tensor| i64::try_from(a.ne_tensor(b).sum(Kind::Int64)).unwrap();
    let mut moved = 0;
    let params = model.named_parameters();
    for (((name, ours), (_, peft)), (_, before)) in params
        .iter()
        .zip(theirs.named_parameters())
        .zip(base.named_parameters())
    {
        let differing = count(ours, &peft);
        assert_eq!(
            differing, 0,
            "{name}: {differing} bf16 merged values differ from PEFT's"
        );
        moved += count(ours, &before);
    }
    assert!(moved > 1000, "the merge changed only {moved} values");
}
