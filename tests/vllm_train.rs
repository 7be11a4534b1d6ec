//! `alp-rl train configs/math-vllm.toml`: the built-in task with rollouts and evaluations from a real
//! vLLM server that the run launches itself (issue 13, acceptance 2). Every step's batch must come
//! from a sync that passed its probe, every sample must carry the version the learner held when it
//! was generated, and the mismatch between vLLM's log-probs and ours must be logged per step. The
//! greedy evaluation of the starting weights must equal the local engine's.
mod vllm_common;

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::run_outputs;

use vllm_common::{free_port, short_run, CONFIG};

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));
const STEPS: u64 = 20;
/// Enough of a warm start for greedy decoding to solve some held-out problems (at 200 steps it
/// solved none of 20), so that equal accuracies compare something.
const SFT_STEPS: u64 = 500;

#[test]
fn the_builtin_task_trains_on_vllm_with_a_verified_sync_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("vllm");
    let mut args = short_run(SFT_STEPS, STEPS);
    let greedy_eval = ["eval.greedy=true", "eval.samples=1"];
    for s in greedy_eval {
        args.extend(["--set".into(), s.to_string()]);
    }
    args.extend(["--set".into(), format!("rollout.vllm.port={}", free_port())]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(ALP_RL.train(CONFIG, &run, &args));

    let metrics = run_outputs::metrics(&run);
    assert_eq!(
        metrics.keys().copied().collect::<Vec<_>>(),
        (0..=STEPS as i64).collect::<Vec<_>>(),
        "one metrics row per step, and step 0's evaluation"
    );
    for step in 1..=STEPS as i64 {
        let m = &metrics[&step];
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("step {step}: no {k}"));
        // A sync before every batch (the first one at start-up), probed on the one server.
        assert_eq!(get("sync/servers_probed"), 1.0, "step {step}");
        assert!(get("sync/probe_max_abs_diff") <= 1e-3, "step {step}: {m:?}");
        assert!(
            get("sync/probe_mean_abs_diff") <= 1e-4,
            "step {step}: {m:?}"
        );
        assert_eq!(get("vllm/servers_serving"), 1.0, "step {step}");
        assert_eq!(get("vllm/taken_out"), 0.0, "step {step}");
        for k in ["mismatch/k1", "mismatch/k3", "mismatch/logp_abs_diff_max"] {
            assert!(get(k).is_finite(), "step {step}: {k} = {}", get(k));
        }
        // f32 servers against our f32 forward: the log-probs agree to float rounding.
        assert!(
            get("mismatch/logp_abs_diff_max") < 1e-3,
            "step {step}: {m:?}"
        );

        // max_staleness = 0: step t trains on samples of version t - 1, the learner's weights when
        // the batch was generated.
        let file = run.join(format!("rollouts/step-{step:06}.parquet"));
        for b in run_outputs::read(&file) {
            let versions = run_outputs::int_column(&b, "policy_version");
            assert!(!versions.is_empty());
            assert!(
                versions.iter().all(|&v| v == step - 1),
                "step {step}: versions {versions:?}"
            );
        }
    }
    assert!(run.join("vllm/logs/server-0.log").exists());

    // The same start on the local engine in f32: its greedy evaluation of the same (warm-started)
    // weights must give the same accuracy as vLLM's.
    let config = std::fs::read_to_string(CONFIG).unwrap();
    let (head, tail) = config.split_once("[rollout.vllm]").unwrap();
    let local_config = format!(
        "{}{}",
        head.replace("backend = \"vllm\"", "backend = \"local\""),
        &tail[tail.find("[learner]").unwrap()..]
    );
    let local_path = dir.path().join("math-local.toml");
    std::fs::write(&local_path, local_config).unwrap();
    let local = dir.path().join("local");
    let mut args = short_run(SFT_STEPS, 1);
    args.truncate(args.len() - 2); // no vLLM Python
    for s in greedy_eval.iter().chain(&["model.inference_dtype=\"f32\""]) {
        args.extend(["--set".into(), s.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(ALP_RL.train(&local_path, &local, &args));
    let local_metrics = run_outputs::metrics(&local);
    // Greedy decoding of the warm start gets some problems right, so equal accuracy means
    // something.
    assert!(metrics[&0]["eval/accuracy"] > 0.0, "{:?}", metrics[&0]);
    assert_eq!(
        local_metrics[&0]["eval/accuracy"], metrics[&0]["eval/accuracy"],
        "greedy evaluation of the same weights: local engine vs vLLM"
    );
}

/// `[model.lora]` on vLLM: the run launches its server with LoRA enabled, and every sync after the
/// start-up one moves the adapter alone, probed like whole weights.
#[test]
fn a_lora_run_on_vllm_syncs_only_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("vllm-lora");
    let mut args = short_run(50, 3);
    for s in [
        "model.lora.rank=8".to_string(),
        "sft.lora=false".into(),
        "eval.every=0".into(),
        format!("rollout.vllm.port={}", free_port()),
    ] {
        args.extend(["--set".into(), s]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(ALP_RL.train(CONFIG, &run, &args));
    let model_bytes =
        std::fs::metadata(run.join("sft/checkpoints/step-000050/model/model.safetensors"))
            .unwrap()
            .len() as f64;
    let metrics = run_outputs::metrics(&run);
    for step in 1..=3 {
        let m = &metrics[&step];
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("step {step}: no {k}"));
        assert_eq!(get("sync/servers_probed"), 1.0, "step {step}");
        assert!(get("sync/probe_max_abs_diff") <= 1e-3, "step {step}: {m:?}");
        let bytes = get("sync/bytes");
        assert!(
            bytes > 0.0 && bytes * 3.0 < model_bytes,
            "step {step}: a sync of {bytes} bytes for a model of {model_bytes}"
        );
        assert!(get("lora/update_norm") > 0.0, "step {step}: {m:?}");
    }
    let log = std::fs::read_to_string(run.join("vllm/logs/server-0.log")).unwrap();
    assert!(
        log.contains("alp-policy-v3"),
        "the server loaded version 3's adapter"
    );
}

/// `learner.kind = "eggroll"` on vLLM: the run launches its server with LoRA enabled and every
/// population member of a step is served as its own adapter (the members' parity with the local
/// engine is vllm/tests/population.rs); each step syncs the updated base and logs the ES metrics.
#[test]
fn an_eggroll_run_on_vllm_serves_its_members_as_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("vllm-es");
    let mut args = short_run(20, 2);
    for s in [
        "learner.kind=\"eggroll\"".to_string(),
        "learner.eggroll.sigma=0.01".into(),
        "rollout.prompts_per_step=2".into(),
        "rollout.group_size=4".into(),
        "eval.every=0".into(),
        "eval.problems=4".into(),
        format!("rollout.vllm.port={}", free_port()),
    ] {
        args.extend(["--set".into(), s]);
    }
    // math-vllm.toml's ALP sections are policy-gradient settings, which EGGROLL refuses.
    let config = std::fs::read_to_string(CONFIG).unwrap();
    let (head, tail) = config.split_once("[learner]").unwrap();
    let es_config = dir.path().join("math-vllm-es.toml");
    let run_section = &tail[tail.find("[run]").unwrap()..];
    std::fs::write(&es_config, format!("{head}{run_section}")).unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(ALP_RL.train(&es_config, &run, &args));
    let metrics = run_outputs::metrics(&run);
    for step in 1..=2 {
        let m = &metrics[&step];
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("step {step}: no {k}"));
        assert_eq!(get("es/population"), 8.0, "step {step}");
        assert!(get("es/update_norm").is_finite(), "step {step}: {m:?}");
        assert_eq!(get("sync/servers_probed"), 1.0, "step {step}");
    }
    let log = std::fs::read_to_string(run.join("vllm/logs/server-0.log")).unwrap();
    for member in 0..8 {
        assert!(
            log.contains(&format!("alp-es-1-m{member}")),
            "the server loaded member {member} of the second population"
        );
    }
}
