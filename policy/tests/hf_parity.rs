//! Parity with HF transformers on tiny random checkpoints written by `save_pretrained`:
//! logits of a ragged, padded batch against each prompt run alone in transformers, and the save
//! round trip (bit-exact reload; transformers reads what we write and gives the same logits).
#[path = "support/oracle.rs"]
mod oracle;

use alp_policy::{CausalLM, LoadOptions, NoHooks};
use tch::{Kind, Tensor};

const TOL: f32 = 1e-4;

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
    reference: &[oracle::OracleResult],
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
    let prompts = oracle::ragged_prompts();
    for &(arch, tied, kv_heads) in oracle::CASES {
        let dir = tempfile::tempdir().unwrap();
        let reference =
            oracle::make_model_with_reference(arch, dir.path(), tied, kv_heads, &prompts, 0);
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
        let from_ours = oracle::reference(saved.path(), &prompts, 0);
        let d = max_diff(&model, &prompts, &from_ours, false);
        assert!(
            d < TOL,
            "{arch}: transformers on our saved checkpoint differs by {d}"
        );
    }
}

#[test]
fn bf16_load_converts_and_stays_close_to_f32() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    oracle::make_model("qwen2", dir.path(), false, 2);
    let f32_model = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();
    let bf16 = LoadOptions {
        kind: Kind::BFloat16,
        ..LoadOptions::default()
    };
    let bf16_model = CausalLM::load(dir.path(), &bf16).unwrap();
    assert_eq!(bf16_model.kind(), Kind::BFloat16);
    let ids = Tensor::from_slice(&[1i64, 17, 42, 99, 3]).view([1, 5]);
    let a = tch::no_grad(|| f32_model.forward(&ids, None, &NoHooks));
    let b = tch::no_grad(|| bf16_model.forward(&ids, None, &NoHooks)).to_kind(Kind::Float);
    let diff = f64::try_from((&a - &b).abs().max()).unwrap();
    let scale = f64::try_from(a.abs().max()).unwrap();
    // bf16 keeps 8 mantissa bits: the logits agree to a few percent of their range, and differ.
    assert!(
        diff > 0.0 && diff < 0.1 * scale,
        "bf16 vs f32 diff {diff}, scale {scale}"
    );

    // A bf16 save round-trips bit-exactly and is written as bf16.
    let saved = tempfile::tempdir().unwrap();
    bf16_model.save(saved.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let again = CausalLM::load(saved.path(), &bf16).unwrap();
    for ((name, x), (_, y)) in bf16_model
        .named_parameters()
        .iter()
        .zip(again.named_parameters())
    {
        assert!(x.equal(&y), "{name} differs after a bf16 round trip");
    }
}
