//! The engine on its own: KV-cache decode equals full recompute with padding, the sampled
//! distribution is the processed softmax, seeds reproduce, and stops and limits end rows.
use alp_policy::{attention_bias, CausalLM, NoHooks};
use alp_rollout::{
    processed_logprobs, FinishReason, GenerationBackend, GenerationRequest, LocalEngine,
    LogprobMode, SamplingParams,
};
use alp_test_support::hf_models;
use alp_test_support::tiny_model::{copy_of, TinyModel};
use serde_json::json;
use tch::{Kind, Tensor};

fn tiny_model(arch: &str, seed: u64) -> CausalLM {
    TinyModel::new(arch)
        .with("initializer_range", 0.3)
        .random(seed)
}

#[test]
fn kv_cache_decode_equals_full_recompute_with_padding() {
    tch::set_num_threads(1);
    let _ = attention_bias; // the bias helper is exercised through forward_cached
    for arch in ["qwen2", "qwen3", "llama"] {
        let model = tiny_model(arch, 7);
        // Two left-padded prompts of lengths 5 and 2, then 6 decode steps with fixed tokens.
        let prompts = [vec![3i64, 9, 27, 4, 11], vec![5, 60]];
        let decode: [[i64; 6]; 2] = [[1, 2, 3, 4, 5, 6], [40, 41, 42, 43, 44, 45]];
        let p = 5i64;
        let steps = 6i64;
        let mut ids = vec![0i64; 2 * p as usize];
        let mut valid = vec![false; 2 * p as usize];
        for (r, prompt) in prompts.iter().enumerate() {
            let start = r * p as usize + p as usize - prompt.len();
            ids[start..start + prompt.len()].copy_from_slice(prompt);
            valid[start..start + prompt.len()]
                .iter_mut()
                .for_each(|v| *v = true);
        }
        let ids_t = Tensor::from_slice(&ids).view([2, p]);
        let valid_t = Tensor::from_slice(&valid).view([2, p]);
        let key_valid = Tensor::ones([2, p + steps], (Kind::Bool, tch::Device::Cpu));
        key_valid.narrow(1, 0, p).copy_(&valid_t);
        let mut cache = model.new_cache(2, p + steps);
        let logits_cached = tch::no_grad(|| {
            let mut all = Vec::new();
            let h = model.forward_cached(
                &ids_t,
                &alp_policy::positions_from_mask(&valid_t),
                &key_valid.narrow(1, 0, p),
                &mut cache,
                &NoHooks,
            );
            all.push(model.logits(&h.narrow(1, p - 1, 1), &NoHooks));
            for s in 0..steps {
                let input = Tensor::from_slice(&[decode[0][s as usize], decode[1][s as usize]])
                    .view([2, 1]);
                let pos = Tensor::from_slice(&[5 + s, 2 + s]).view([2, 1]);
                let h = model.forward_cached(
                    &input,
                    &pos,
                    &key_valid.narrow(1, 0, p + s + 1),
                    &mut cache,
                    &NoHooks,
                );
                all.push(model.logits(&h, &NoHooks));
            }
            Tensor::cat(&all, 1)
        });
        // Full recompute: the padded sequence with the decoded tokens appended, no cache.
        let full_ids = Tensor::cat(&[ids_t, Tensor::from_slice2(&decode)], 1);
        let full_mask = key_valid.to_kind(Kind::Int64);
        let full = tch::no_grad(|| model.forward(&full_ids, Some(&full_mask), &NoHooks));
        let expected = full.narrow(1, p - 1, steps + 1);
        let diff = f64::try_from((&logits_cached - &expected).abs().max()).unwrap();
        assert!(
            diff < 1e-4,
            "{arch}: cached vs full recompute max abs diff {diff}"
        );
    }
}

#[test]
fn engine_logprobs_equal_full_recompute_in_raw_mode() {
    tch::set_num_threads(1);
    let model = tiny_model("qwen3", 3);
    let prompts = [
        vec![1i64, 2, 3, 4, 5, 6, 7],
        vec![8, 9],
        vec![10, 11, 12, 13],
    ];
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 12,
        logprob_mode: LogprobMode::Raw,
        seed: 11,
        stop_token_ids: vec![17],
        ..SamplingParams::default()
    };
    let requests: Vec<_> = prompts
        .iter()
        .cloned()
        .map(GenerationRequest::new)
        .collect();
    let mut engine = LocalEngine::new(model, 8);
    let out = engine.generate(&requests, &params).unwrap();
    for c in &out {
        let seq: Vec<i64> = c
            .prompt_ids
            .iter()
            .chain(&c.completion_ids)
            .copied()
            .collect();
        let n = seq.len() as i64;
        let logits = tch::no_grad(|| {
            engine
                .model()
                .forward(&Tensor::from_slice(&seq).view([1, n]), None, &NoHooks)
        });
        let lp = logits.get(0).log_softmax(-1, Kind::Float);
        for (t, (&tok, &got)) in c.completion_ids.iter().zip(&c.logprobs).enumerate() {
            let pos = c.prompt_ids.len() as i64 + t as i64 - 1;
            let want = f64::try_from(lp.get(pos).get(tok)).unwrap();
            assert!(
                (want - got as f64).abs() < 1e-4,
                "token {t}: engine {got} vs recompute {want}"
            );
        }
    }
}

/// transformers' logits warpers (Temperature, TopK, TopP in `generate`'s order) on `logits` (`[rows,
/// vocab]`): the probabilities per case and row.
fn hf_warped_probs(logits: &Tensor, cases: &[(f64, f64, i64)]) -> Vec<Vec<Vec<f64>>> {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Vec<f32>> = (0..logits.size()[0])
        .map(|r| Vec::<f32>::try_from(logits.get(r).to_kind(Kind::Float)).unwrap())
        .collect();
    let spec = json!({
        "logits": rows,
        "cases": cases.iter().map(|&(t, p, k)| json!({"temperature": t, "top_p": p, "top_k": k}))
            .collect::<Vec<_>>(),
    });
    let (inp, out) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&inp, spec.to_string()).unwrap();
    hf_models::run(&["warp", inp.to_str().unwrap(), out.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    serde_json::from_value(v["probs"].clone()).unwrap()
}

const WARP_CASES: [(f64, f64, i64); 5] = [
    (1.0, 1.0, 0),
    (0.7, 0.9, 0),
    (1.3, 1.0, 10),
    (1.0, 0.8, 20),
    (0.5, 0.95, 5),
];

/// `processed_logprobs` equals transformers' warpers on the same logits (wide random logits, so top-p
/// and top-k cut real mass).
#[test]
fn processed_distribution_equals_transformers_warpers() {
    tch::manual_seed(17);
    let logits = Tensor::randn([8, 64], (Kind::Float, tch::Device::Cpu)) * 3.0;
    let reference = hf_warped_probs(&logits, &WARP_CASES);
    for (case, &(temperature, top_p, top_k)) in WARP_CASES.iter().enumerate() {
        let params = SamplingParams {
            temperature,
            top_p,
            top_k,
            ..SamplingParams::default()
        };
        let ours = processed_logprobs(&logits, &params).exp();
        for (r, want) in reference[case].iter().enumerate() {
            let got = Vec::<f32>::try_from(ours.get(r as i64)).unwrap();
            for (tok, (&g, &w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 1e-6,
                    "T={temperature} top_p={top_p} top_k={top_k} row {r} token {tok}: ours {g} vs transformers {w}"
                );
            }
        }
    }
}

/// Empirical next-token frequencies over many seeded rows against transformers' warped softmax of the
/// same logits; with `logprob_mode = sampling` the recorded log-prob is that distribution's.
#[test]
fn sampled_distribution_matches_transformers_warpers() {
    tch::set_num_threads(2);
    let model = tiny_model("llama", 5);
    let prompt = vec![4i64, 8, 15, 16, 23, 42];
    let n = 20_000usize;
    let logits = tch::no_grad(|| {
        model
            .forward(&Tensor::from_slice(&prompt).view([1, 6]), None, &NoHooks)
            .select(1, 5)
    });
    let reference = hf_warped_probs(&logits, &WARP_CASES);
    for (case, &(temperature, top_p, top_k)) in WARP_CASES.iter().enumerate() {
        let params = SamplingParams {
            temperature,
            top_p,
            top_k,
            max_new_tokens: 1,
            seed: 1234,
            logprob_mode: LogprobMode::Sampling,
            ..SamplingParams::default()
        };
        let expected = &reference[case][0];
        let mut engine = LocalEngine::new(copy_of(&model), 5_000);
        let requests = vec![GenerationRequest::new(prompt.clone()); n];
        let out = engine.generate(&requests, &params).unwrap();
        let mut counts = vec![0usize; expected.len()];
        for c in &out {
            counts[c.completion_ids[0] as usize] += 1;
            let want = expected[c.completion_ids[0] as usize].ln();
            assert!((c.logprobs[0] as f64 - want).abs() < 1e-4);
        }
        // Tokens removed by top-k / top-p are never drawn.
        for (tok, (&count, &p)) in counts.iter().zip(expected).enumerate() {
            assert!(
                p > 0.0 || count == 0,
                "token {tok} has zero mass but was drawn {count} times"
            );
        }
        // Total variation: E[TV] is about 0.5 * sum sqrt(2 p / (pi n)) (< 0.02 here) and McDiarmid gives
        // P(TV > E + 0.02) < exp(-2 n 0.02^2) = e^-16, so 0.04 fails only on a real mismatch.
        let tv: f64 = counts
            .iter()
            .zip(expected)
            .map(|(&c, &p)| (c as f64 / n as f64 - p).abs())
            .sum::<f64>()
            / 2.0;
        assert!(
            tv < 0.04,
            "T={temperature} top_p={top_p} top_k={top_k}: total variation {tv}"
        );
    }
}

/// The default `temperature` mode records `log_softmax(logits / T)` of the sampled token, untruncated,
/// computed here from the model's logits directly.
#[test]
fn temperature_mode_records_untruncated_tempered_log_probs() {
    let model = tiny_model("qwen2", 4);
    let prompt = vec![4i64, 8, 15, 16];
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        top_k: 12,
        max_new_tokens: 1,
        seed: 9,
        ..SamplingParams::default()
    };
    assert_eq!(params.logprob_mode, LogprobMode::Temperature);
    let logits = tch::no_grad(|| {
        model
            .forward(&Tensor::from_slice(&prompt).view([1, 4]), None, &NoHooks)
            .select(1, 3)
            .get(0)
    });
    let tempered =
        Vec::<f64>::try_from((logits.to_kind(Kind::Double) / 0.7).log_softmax(-1, Kind::Double))
            .unwrap();
    let mut engine = LocalEngine::new(copy_of(&model), 64);
    let out = engine
        .generate(&vec![GenerationRequest::new(prompt.clone()); 64], &params)
        .unwrap();
    for c in &out {
        let want = tempered[c.completion_ids[0] as usize];
        assert!(
            (c.logprobs[0] as f64 - want).abs() < 1e-5,
            "{} vs {want}",
            c.logprobs[0]
        );
    }
    assert_eq!(params.scoring_temperature().unwrap(), 0.7);
    let sampling = SamplingParams {
        logprob_mode: LogprobMode::Sampling,
        ..params.clone()
    };
    assert!(sampling.scoring_temperature().is_err());
}

#[test]
fn seeds_reproduce_and_do_not_depend_on_batching() {
    tch::set_num_threads(1);
    let requests: Vec<_> = (0..6)
        .map(|i| GenerationRequest::new(vec![1, 2 + i, 3 + 2 * i]))
        .collect();
    let params = SamplingParams {
        max_new_tokens: 10,
        seed: 42,
        ..SamplingParams::default()
    };
    let a = LocalEngine::new(tiny_model("qwen2", 1), 6)
        .generate(&requests, &params)
        .unwrap();
    let b = LocalEngine::new(tiny_model("qwen2", 1), 4)
        .generate(&requests, &params)
        .unwrap();
    let c = LocalEngine::new(tiny_model("qwen2", 1), 1)
        .generate(&requests, &params)
        .unwrap();
    // Tokens are identical; log-probs agree up to float reassociation across batch shapes.
    let same = |x: &[alp_rollout::Completion], y: &[alp_rollout::Completion]| {
        x.iter().zip(y).all(|(p, q)| {
            p.completion_ids == q.completion_ids
                && p.logprobs
                    .iter()
                    .zip(&q.logprobs)
                    .all(|(u, v)| (u - v).abs() < 1e-5)
        })
    };
    assert!(same(&a, &b), "batch size 4 changed the samples");
    assert!(same(&a, &c), "batch size 1 changed the samples");
    let again = LocalEngine::new(tiny_model("qwen2", 1), 6)
        .generate(&requests, &params)
        .unwrap();
    assert_eq!(
        a, again,
        "the same seed and batching must reproduce bit for bit"
    );
    let other_seed = SamplingParams { seed: 43, ..params };
    let d = LocalEngine::new(tiny_model("qwen2", 1), 6)
        .generate(&requests, &other_seed)
        .unwrap();
    assert!(!same(&a, &d), "a different seed must change the samples");
}

#[test]
fn stop_tokens_and_per_row_limits_end_rows() {
    tch::set_num_threads(1);
    let mut engine = LocalEngine::new(tiny_model("qwen2", 2), 4);
    // Greedy from one prompt, to learn which token comes third; then stop on it.
    let greedy = SamplingParams {
        greedy: true,
        max_new_tokens: 8,
        ..SamplingParams::default()
    };
    let free = engine
        .generate(&[GenerationRequest::new(vec![5, 6, 7])], &greedy)
        .unwrap();
    let third = free[0].completion_ids[2];
    let first_occurrence = free[0]
        .completion_ids
        .iter()
        .position(|&t| t == third)
        .unwrap();
    let requests = vec![
        GenerationRequest {
            prompt_ids: vec![5, 6, 7],
            stop_token_ids: Some(vec![third]),
            ..Default::default()
        },
        GenerationRequest {
            prompt_ids: vec![5, 6, 7],
            max_new_tokens: Some(3),
            ..Default::default()
        },
        GenerationRequest {
            prompt_ids: vec![9],
            max_new_tokens: Some(0),
            ..Default::default()
        },
        GenerationRequest::new(vec![5, 6, 7]),
    ];
    let out = engine.generate(&requests, &greedy).unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    assert_eq!(
        out[0].completion_ids,
        free[0].completion_ids[..=first_occurrence].to_vec()
    );
    assert_eq!(out[1].finish_reason, FinishReason::Length);
    assert_eq!(out[1].completion_ids, free[0].completion_ids[..3].to_vec());
    assert!(out[2].completion_ids.is_empty());
    assert_eq!(out[3].completion_ids, free[0].completion_ids);
    assert_eq!(out[3].logprobs.len(), 8);
}

#[test]
fn bad_requests_and_settings_are_refused() {
    let mut engine = LocalEngine::new(tiny_model("qwen2", 2), 4);
    let ok = SamplingParams::default();
    let err = engine
        .generate(&[GenerationRequest::new(vec![])], &ok)
        .unwrap_err();
    assert!(err.to_string().contains("request 0") && err.to_string().contains("empty"));
    let err = engine
        .generate(&[GenerationRequest::new(vec![1, 64])], &ok)
        .unwrap_err();
    assert!(err.to_string().contains("64") && err.to_string().contains("vocabulary"));
    let bad = SamplingParams {
        top_p: 0.0,
        ..ok.clone()
    };
    assert!(engine
        .generate(&[GenerationRequest::new(vec![1])], &bad)
        .unwrap_err()
        .to_string()
        .contains("top_p"));
    let bad = SamplingParams {
        temperature: 0.0,
        ..ok
    };
    assert!(engine
        .generate(&[GenerationRequest::new(vec![1])], &bad)
        .unwrap_err()
        .to_string()
        .contains("temperature"));
    // A row that cannot fit the model's context is refused before its KV cache is allocated
    // (`max_new_tokens = 10^9` used to abort the process), whether the limit is the call's or the row's.
    let context = engine.model().config().max_position_embeddings as usize;
    assert_eq!(engine.max_context(), Some(context));
    let huge = SamplingParams {
        max_new_tokens: 1_000_000_000,
        ..SamplingParams::default()
    };
    let err = engine
        .generate(&[GenerationRequest::new(vec![1, 2])], &huge)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("request 0") && err.contains("max_position_embeddings"),
        "{err}"
    );
    let row = GenerationRequest {
        prompt_ids: vec![1; context],
        max_new_tokens: Some(1),
        stop_token_ids: None,
        member: None,
        stream: None,
    };
    let err = engine
        .generate(
            &[GenerationRequest::new(vec![1]), row],
            &SamplingParams::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("request 1") && err.contains(&format!("{context}")),
        "{err}"
    );
}

/// Requests of varied prompt lengths whose completions end at different steps (per-row limits, a
/// stop token), more of them than the batch holds, so slots are refilled mid-batch.
fn ragged_requests(n: usize) -> Vec<GenerationRequest> {
    (0..n)
        .map(|i| GenerationRequest {
            prompt_ids: (0..1 + (i * 7) % 9)
                .map(|j| ((i * 13 + j * 5) % 60 + 1) as i64)
                .collect(),
            max_new_tokens: Some(1 + (i * 11) % 24),
            stop_token_ids: (i % 3 == 0).then(|| vec![7, 19]),
            member: None,
            stream: None,
        })
        .collect()
}

/// Continuous batching gives every request the tokens and log-probs it gets generating alone (an
/// engine of batch size 1, same request index so the same seed), greedy and seeded sampling, for
/// every architecture; and the old chunked schedule agrees too.
#[test]
fn continuous_batching_equals_generating_each_request_alone() {
    tch::set_num_threads(1);
    for arch in ["qwen2", "qwen3", "llama"] {
        let model = tiny_model(arch, 12);
        // 70 requests at batch 16: refills wait until two slots are free (an eighth of the batch),
        // so finished rows keep decoding in place for a step or more.
        let requests = ragged_requests(70);
        for greedy in [true, false] {
            let params = SamplingParams {
                greedy,
                temperature: 0.9,
                top_k: 20,
                max_new_tokens: 24,
                seed: 5,
                ..SamplingParams::default()
            };
            let alone = LocalEngine::new(copy_of(&model), 1)
                .generate(&requests, &params)
                .unwrap();
            let continuous = LocalEngine::new(copy_of(&model), 4)
                .generate(&requests, &params)
                .unwrap();
            let continuous16 = LocalEngine::new(copy_of(&model), 16)
                .generate(&requests, &params)
                .unwrap();
            let chunked = LocalEngine::new(copy_of(&model), 4)
                .with_scheduling(alp_rollout::Scheduling::Chunked)
                .generate(&requests, &params)
                .unwrap();
            let lengths: std::collections::BTreeSet<usize> =
                alone.iter().map(|c| c.completion_ids.len()).collect();
            assert!(lengths.len() > 5, "completions end at many different steps");
            for (i, a) in alone.iter().enumerate() {
                for (what, b) in [
                    ("continuous", &continuous[i]),
                    ("continuous at batch 16", &continuous16[i]),
                    ("chunked", &chunked[i]),
                ] {
                    assert_eq!(
                        a.completion_ids, b.completion_ids,
                        "{arch} greedy={greedy} {what} request {i}: tokens"
                    );
                    assert_eq!(a.finish_reason, b.finish_reason);
                    for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                        assert!(
                            (x - y).abs() < 1e-4,
                            "{arch} greedy={greedy} {what} request {i}: log-prob {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}

/// `sync_weights` is `LocalEngine::install` through the backend seam: afterwards the engine generates what
/// an engine built on the new weights generates, tagged with the new version, and reports itself
/// serving that version.
#[test]
fn sync_weights_installs_the_weights_and_the_version() {
    tch::set_num_threads(1);
    let (old, new) = (tiny_model("qwen2", 1), tiny_model("qwen2", 2));
    let params = SamplingParams {
        max_new_tokens: 6,
        seed: 5,
        ..Default::default()
    };
    let requests = ragged_requests(4);
    let mut synced = LocalEngine::new(old, 2);
    let report = synced.sync_weights(&new, 9).unwrap();
    assert_eq!((report.version, report.probes.len()), (9, 0));
    let mut built = LocalEngine::new(copy_of(&new), 2);
    let (a, b) = (
        synced.generate(&requests, &params).unwrap(),
        built.generate(&requests, &params).unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.completion_ids, y.completion_ids);
        assert_eq!(x.logprobs, y.logprobs);
        assert_eq!(x.policy_version, 9);
    }
    let health = synced.health();
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].state, alp_rollout::ReplicaState::Serving);
    assert_eq!(health[0].version, Some(9));
}
