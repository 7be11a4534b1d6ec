//! Short `alp-rl train` runs on a tiny model: every correction with max_staleness 0 and 2, the run
//! directory layout, parquet schemas read back with arrow and with Python (zstd column chunks), and
//! exact resume.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::oracle;
use alp_test_support::run_outputs::{int_column, list_row, metrics, read, without_timing};
use arrow_array::{Array, Float64Array};
use arrow_schema::DataType;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math-tiny.toml");

fn train(out: &Path, extra: &[&str]) -> Output {
    ALP_RL.train(CONFIG, out, extra)
}

fn run_dir(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    tmp.path().join(name)
}

#[test]
fn every_correction_and_staleness_trains_with_finite_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["bypass", "tis", "mis", "alp"] {
        for staleness in [0u64, 2] {
            let run = run_dir(&tmp, &format!("{kind}-{staleness}"));
            // With staleness 2, batches from step 4 on are generated with published weights
            // (version >= 1), so the worker's weight installation is exercised too.
            let steps: u64 = if staleness == 0 { 3 } else { 5 };
            ok(train(
                &run,
                &[
                    "--set",
                    &format!("learner.correction.kind={kind}"),
                    "--set",
                    &format!("rollout.max_staleness={staleness}"),
                    "--set",
                    &format!("run.steps={steps}"),
                ],
            ));
            let m = metrics(&run);
            assert_eq!(
                m.keys().copied().collect::<Vec<_>>(),
                (1..=steps as i64).collect::<Vec<_>>()
            );
            for (step, row) in &m {
                for name in [
                    "loss/total",
                    "grad/norm",
                    "reward/mean",
                    "acc",
                    "ratio/mean",
                ] {
                    let v = row[name];
                    assert!(
                        v.is_finite(),
                        "{kind}/{staleness} step {step}: {name} = {v}"
                    );
                }
                let k3 = row["mismatch/k3"];
                assert!(k3 > 0.0 && k3.is_finite(), "{kind}: mismatch/k3 = {k3}");
                assert!(row["staleness/max"] <= staleness as f64);
                assert_eq!(row["optim/skipped_steps"], 0.0);
            }
            if kind == "alp" {
                assert!(m[&1].contains_key("alp/sigma_mean"));
            }
            // Staleness within the bound in every rollout row, and it reaches the bound.
            let mut max_seen = 0;
            let mut last_version = 0;
            for step in 1..=steps {
                for b in read(&run.join(format!("rollouts/step-{step:06}.parquet"))) {
                    let versions = int_column(&b, "policy_version");
                    for (s, v) in int_column(&b, "staleness").iter().zip(&versions) {
                        assert!(*s >= 0 && *s as u64 <= staleness, "staleness {s}");
                        assert_eq!(*s, step as i64 - 1 - v);
                        max_seen = max_seen.max(*s);
                        last_version = *v;
                    }
                }
            }
            assert_eq!(max_seen as u64, staleness.min(2));
            assert!(
                last_version >= 1,
                "the last batch must come from published weights"
            );
        }
    }
}

#[test]
fn run_directory_layout_and_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(&tmp, "run");
    ok(train(&run, &[]));
    for f in [
        "run.json",
        "config.toml",
        "metrics.parquet",
        "initial-model/config.json",
        "rollouts/step-000001.parquet",
        "rollouts/step-000004.parquet",
        "checkpoints/latest",
        "checkpoints/step-000004/model/model.safetensors",
        "checkpoints/step-000004/model/config.json",
        "checkpoints/step-000004/model/tokenizer.json",
        "checkpoints/step-000004/learner/optimizer.safetensors",
        "checkpoints/step-000004/learner/learner.safetensors",
        "checkpoints/step-000004/state.json",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    // keep = 2 with checkpoint_every = 2 over 4 steps: both kept, latest names the last.
    assert!(run.join("checkpoints/step-000002").exists());
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(),
        "step-000004"
    );
    // No temporary names are left behind anywhere.
    for dir in ["", "rollouts", "checkpoints"] {
        for e in std::fs::read_dir(run.join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp-"), "left {name}");
        }
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(meta["seeds"]["run"], 0);
    assert!(meta["start_time_unix"].as_f64().unwrap() > 0.0);
    assert_eq!(meta["config"]["env"]["name"], "arithmetic");
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("max_staleness = 0") && resolved.contains("[learner.optimizer]"));

    let b = &read(&run.join("rollouts/step-000001.parquet"))[0];
    assert_eq!(b.num_rows(), 8);
    let schema = b.schema();
    let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    let list = |dt: DataType| {
        DataType::List(std::sync::Arc::new(arrow_schema::Field::new(
            "item", dt, false,
        )))
    };
    assert_eq!(ty("prompt_ids"), list(DataType::Int32));
    assert_eq!(ty("completion_ids"), list(DataType::Int32));
    assert_eq!(ty("loss_mask"), list(DataType::UInt8));
    assert_eq!(ty("mu"), list(DataType::Float32));
    assert_eq!(ty("lp_old"), list(DataType::Float32));
    for (n, t) in [
        ("step", DataType::Int64),
        ("policy_version", DataType::Int64),
        ("worker", DataType::Int32),
        ("env", DataType::Utf8),
        ("example_id", DataType::Utf8),
        ("group_id", DataType::Int64),
        ("prompt_text", DataType::Utf8),
        ("completion_text", DataType::Utf8),
        ("reward", DataType::Float64),
        ("advantage", DataType::Float64),
        ("correct", DataType::Boolean),
        ("num_turns", DataType::Int32),
        ("finish_reason", DataType::Utf8),
        ("staleness", DataType::Int64),
    ] {
        assert_eq!(ty(n), t, "column {n}");
    }
    // Two prompts, four samples each, sharing a group id.
    let groups = int_column(b, "group_id");
    assert_eq!(groups, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    let m = metrics(&run);
    assert_eq!(m.len(), 4);
    for name in [
        "reward/mean",
        "acc",
        "staleness/mean",
        "staleness/max",
        "time/step_s",
        "throughput/rollout_tokens_per_s",
        "mismatch/k3",
        "ratio/q99",
    ] {
        assert!(m[&1].contains_key(name), "no metric {name}");
    }
    let pv = int_column(&read(&run.join("metrics.parquet"))[0], "policy_version");
    assert_eq!(pv, vec![1, 2, 3, 4]);
}

#[test]
fn python_reads_the_metrics_and_a_rollout_file() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(&tmp, "run");
    ok(train(&run, &["--set", "run.steps=2"]));
    let script = r#"
import sys, pandas as pd, pyarrow.parquet as pq
run = sys.argv[1]
m = pd.read_parquet(f"{run}/metrics.parquet")
assert list(m["step"]) == [1, 2], m["step"]
assert (m["mismatch/k3"] > 0).all()
r = pd.read_parquet(f"{run}/rollouts/step-000001.parquet")
assert len(r) == 8 and r["prompt_ids"].map(len).min() > 0
assert all(len(a) == len(b) for a, b in zip(r["completion_ids"], r["mu"]))
assert r["lp_old"].isna().all()
meta = pq.read_metadata(f"{run}/metrics.parquet").metadata
assert b"alp_rl.config" in meta
for name in ["metrics.parquet", "rollouts/step-000001.parquet"]:
    md = pq.read_metadata(f"{run}/{name}")
    codecs = {md.row_group(g).column(c).compression
              for g in range(md.num_row_groups) for c in range(md.num_columns)}
    assert codecs == {"ZSTD"}, (name, codecs)
print("ok", len(m.columns))
"#;
    let out = oracle::run(
        oracle::python_command().args(["-c", script, run.to_str().unwrap()]),
        "pandas and pyarrow on the run files",
    );
    assert!(out.starts_with("ok "));
}

#[test]
fn resume_reproduces_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = run_dir(&tmp, "straight");
    ok(train(&straight, &[]));
    let split = run_dir(&tmp, "split");
    ok(train(&split, &["--set", "run.steps=2"]));
    assert_eq!(metrics(&split).len(), 2);
    // Without --resume an existing run is not overwritten.
    let again = train(&split, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // A resumed run must keep its config (only run.steps may change).
    let changed = train(&split, &["--resume", "--set", "learner.optimizer.lr=0.5"]);
    assert!(!changed.status.success());
    assert!(String::from_utf8_lossy(&changed.stderr).contains("config differs"));
    ok(train(&split, &["--resume"]));
    let (a, b) = (
        without_timing(metrics(&straight)),
        without_timing(metrics(&split)),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (step, row) in &a {
        assert_eq!(
            row.keys().collect::<Vec<_>>(),
            b[step].keys().collect::<Vec<_>>()
        );
        for (k, v) in row {
            let w = b[step][k];
            assert!(
                (v - w).abs() <= 1e-6 * v.abs().max(1.0) || (v.is_nan() && w.is_nan()),
                "step {step} {k}: {v} vs {w}"
            );
        }
    }
}

#[test]
fn nonfinite_steps_are_skipped_then_stop_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    // An absurd learning rate makes the weights non-finite after the first update.
    let diverge = [
        "--set",
        "learner.optimizer.lr=1e30",
        "--set",
        "learner.correction.kind=bypass",
    ];
    let tolerant = run_dir(&tmp, "tolerant");
    let mut args = diverge.to_vec();
    args.extend(["--set", "run.max_nonfinite_steps=10"]);
    ok(train(&tolerant, &args));
    let m = metrics(&tolerant);
    assert_eq!(m.len(), 4, "the run continues past skipped steps");
    assert_eq!(m[&1]["train/nonfinite_steps"], 0.0);
    assert_eq!(m[&4]["train/nonfinite_steps"], 3.0);

    let strict = run_dir(&tmp, "strict");
    let mut args = diverge.to_vec();
    args.extend(["--set", "run.max_nonfinite_steps=2"]);
    let out = train(&strict, &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 consecutive steps"), "{err}");
    assert!(err.contains("run.max_nonfinite_steps"), "{err}");
    assert_eq!(
        metrics(&strict).len(),
        2,
        "steps before the stop are logged"
    );
}

/// Row `i` of a `list<T>` column as a vector.
#[test]
fn logged_lp_old_reproduces_the_mismatch_metric() {
    use arrow_array::types::{Float32Type, UInt8Type};
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(&tmp, "lp");
    ok(train(
        &run,
        &[
            "--set",
            "run.log_logprobs=true",
            "--set",
            "learner.correction.kind=bypass",
            "--set",
            "run.steps=1",
        ],
    ));
    let b = &read(&run.join("rollouts/step-000001.parquet"))[0];
    let (mut k3, mut n, mut moved) = (0.0f64, 0usize, false);
    for i in 0..b.num_rows() {
        let mu = list_row::<Float32Type>(b, "mu", i);
        let lp_old = list_row::<Float32Type>(b, "lp_old", i);
        let lp = list_row::<Float32Type>(b, "lp", i);
        let mask = list_row::<UInt8Type>(b, "loss_mask", i);
        assert_eq!((lp_old.len(), lp.len()), (mu.len(), mu.len()));
        for t in 0..mu.len() {
            if mask[t] == 1 {
                let d = (lp_old[t] - mu[t]) as f64;
                k3 += d.exp() - d - 1.0;
                n += 1;
            }
            moved |= lp[t] != lp_old[t];
        }
    }
    let k3 = k3 / n as f64;
    let logged = metrics(&run)[&1]["mismatch/k3"];
    assert!(
        (k3 - logged).abs() <= 1e-3 * logged,
        "k3 from lp_old {k3} vs metric {logged}"
    );
    assert!(moved, "lp (after the update) equals lp_old everywhere");
}

#[test]
fn a_failing_environment_fails_its_episodes_not_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    // The math env on a dataset whose second row has no question: its episodes fail at reset.
    let data = tmp.path().join("mixed.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n{\"nothing\": 1}\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(CONFIG)
        .unwrap()
        .replace(
            "name = \"arithmetic\"",
            &format!(
                "name = \"math\"\ntrain_path = {:?}\ntest_path = \"\"",
                data.display().to_string()
            ),
        )
        .replace("digits = 1\n", "")
        .replace("max_operands = 2\n", "");
    let path = tmp.path().join("math.toml");
    std::fs::write(&path, config).unwrap();
    let run = run_dir(&tmp, "run");
    ok(ALP_RL.train(&path, &run, &[]));
    let m = metrics(&run);
    assert_eq!(m.len(), 4);
    let failed: f64 = m.values().map(|r| r["rollout/failed_episodes"]).sum();
    assert!(failed > 0.0, "no episode failed");
    let mut errors = 0;
    for step in 1..=4 {
        for b in read(&run.join(format!("rollouts/step-{step:06}.parquet"))) {
            let err = b
                .column_by_name("error")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap()
                .clone();
            let reward = b
                .column_by_name("reward")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone();
            for i in 0..b.num_rows() {
                if err.is_valid(i) {
                    errors += 1;
                    assert!(!err.value(i).is_empty());
                    assert_eq!(reward.value(i), 0.0);
                }
            }
        }
    }
    assert_eq!(errors as f64, failed);
}

#[test]
fn old_checkpoints_are_pruned_but_never_the_latest() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(&tmp, "prune");
    ok(train(
        &run,
        &[
            "--set",
            "run.steps=3",
            "--set",
            "run.checkpoint_every=1",
            "--set",
            "run.keep=1",
        ],
    ));
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["latest", "step-000003"]);
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(),
        "step-000003"
    );
    let model = alp_policy::CausalLM::load(
        &run.join("checkpoints/step-000003/model"),
        &alp_policy::LoadOptions::default(),
    );
    assert!(model.is_ok(), "{:?}", model.err());
}

#[test]
fn sft_warm_start_eval_and_rl_share_one_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(&tmp, "sft-eval");
    ok(train(
        &run,
        &[
            "--set",
            "sft.steps=3",
            "--set",
            "sft.batch_size=4",
            "--set",
            "sft.log_every=2",
            "--set",
            "eval.every=2",
            "--set",
            "eval.problems=4",
            "--set",
            "run.steps=3",
        ],
    ));
    // The warm start: rows at steps 2 and 3 (log_every and the last), its last model.
    let mut sft = BTreeMap::new();
    for b in read(&run.join("sft/metrics.parquet")) {
        let steps = int_column(&b, "step");
        let loss = b.column_by_name("sft/loss").unwrap();
        let loss = loss.as_any().downcast_ref::<Float64Array>().unwrap();
        let tokens = b.column_by_name("sft/tokens").unwrap();
        let tokens = tokens.as_any().downcast_ref::<Float64Array>().unwrap();
        for (i, s) in steps.iter().enumerate() {
            sft.insert(*s, (loss.value(i), tokens.value(i)));
        }
    }
    assert_eq!(sft.keys().copied().collect::<Vec<_>>(), [2, 3]);
    assert!(sft
        .values()
        .all(|(l, t)| l.is_finite() && *l > 0.0 && *t > 0.0));
    assert!(run
        .join("sft/checkpoints/step-000003/model/config.json")
        .exists());
    // RL: evaluation at step 0 (its own row), every 2 steps and at the end.
    let m = metrics(&run);
    assert_eq!(m.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    for step in [0, 2, 3] {
        let acc = m[&step]["eval/accuracy"];
        assert!((0.0..=1.0).contains(&acc), "step {step}: {acc}");
        assert_eq!(m[&step]["eval/pass@1"], acc);
    }
    assert!(!m[&1].contains_key("eval/accuracy"));
    assert!(!m[&0].contains_key("reward/mean"));
}

#[test]
fn sft_command_writes_metrics_and_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(&tmp, "sft");
    ok(ALP_RL.output([
        "sft",
        CONFIG,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "sft.steps=2",
        "--set",
        "sft.batch_size=2",
    ]));
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000002");
    let model = run.join("checkpoints/step-000002/model");
    ok(ALP_RL.output([
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "1 + 1 =",
        "--max-new-tokens",
        "2",
    ]));
    let rows: Vec<i64> = read(&run.join("metrics.parquet"))
        .iter()
        .flat_map(|b| int_column(b, "step"))
        .collect();
    assert_eq!(rows, [2]);
    assert!(run.join("config.toml").exists() && run.join("run.json").exists());
}
