//! `alp-rl train` refuses bad configs before any work, naming file, line, column, key and what is allowed.
use std::path::Path;
use std::process::Output;

use alp_test_support::cli::AlpRl;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

const BASE: &str = r#"[model]
new_model = "tiny"

[rollout]
group_size = 4

[learner.alp]
sigma0 = 0.01

[env]
name = "arithmetic"
digits = 1
"#;

fn train(config: &Path, extra: &[&str]) -> Output {
    ALP_RL
        .command()
        .arg("train")
        .arg(config)
        .args(extra)
        .output()
        .expect("run alp-rl")
}

/// Writes `text` as a config, runs `train` on it, and returns stderr of the (required) failure.
fn refused(text: &str, extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out_dir = dir.path().join("run");
    let mut args = vec!["--out", out_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = train(&path, &args);
    assert!(!out.status.success(), "a bad config was accepted");
    assert!(!out_dir.exists(), "work started before validation");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn typo_names_position_key_and_suggestion() {
    let text = BASE.replace("group_size = 4", "grup_size = 4");
    let (err, file) = refused(&text, &[]);
    assert!(err.contains(&format!("{file}:5:1")), "{err}");
    assert!(err.contains("`rollout.grup_size`"), "{err}");
    assert!(err.contains("did you mean `group_size`?"), "{err}");
}

#[test]
fn typo_in_a_section_name_is_suggested() {
    let text = BASE.replace("[rollout]", "[rollot]");
    let (err, file) = refused(&text, &[]);
    assert!(err.contains(&format!("{file}:4:")), "{err}");
    assert!(err.contains("did you mean `rollout`?"), "{err}");
}

#[test]
fn wrong_type_names_position_and_expected_type() {
    let text = BASE.replace("group_size = 4", "group_size = \"four\"");
    let (err, file) = refused(&text, &[]);
    assert!(err.contains(&format!("{file}:5:14")), "{err}");
    assert!(err.contains("`rollout.group_size`"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn out_of_range_learner_value_names_its_line() {
    let text = BASE.replace("sigma0 = 0.01", "sigma0 = -1.0");
    let (err, file) = refused(&text, &[]);
    assert!(err.contains(&format!("{file}:8:1")), "{err}");
    assert!(err.contains("`learner.alp.sigma0`"), "{err}");
    assert!(err.contains("must be > 0"), "{err}");
}

#[test]
fn out_of_range_rollout_value_and_zero_group() {
    let text = BASE.replace("group_size = 4", "group_size = 0");
    let (err, file) = refused(&text, &[]);
    assert!(err.contains(&format!("{file}:5:1")), "{err}");
    assert!(
        err.contains("`rollout.group_size`: must be at least 1"),
        "{err}"
    );
}

#[test]
fn bad_override_names_the_set_argument() {
    let (err, _) = refused(BASE, &["--set", "rollout.top_p=2"]);
    assert!(err.contains("--set rollout.top_p=2"), "{err}");
    assert!(err.contains("`rollout.top_p`"), "{err}");
    assert!(err.contains("(0, 1]"), "{err}");
    let (err, _) = refused(BASE, &["--set", "rollout.temprature=0.5"]);
    assert!(err.contains("did you mean `temperature`?"), "{err}");
    let (err, _) = refused(BASE, &["--set", "model.threads=5000"]);
    assert!(
        err.contains("`model.threads`: must be 0 (libtorch's default) to 1024, got 5000"),
        "{err}"
    );
}

#[test]
fn env_setting_errors_point_at_the_env_key() {
    let text = BASE.replace("digits = 1", "digitz = 1");
    let (err, file) = refused(&text, &[]);
    assert!(err.contains(&format!("{file}:12:1")), "{err}");
    assert!(err.contains("`env.digitz`"), "{err}");
    let text = BASE.replace("name = \"arithmetic\"", "name = \"arithmetc\"");
    let (err, _) = refused(&text, &[]);
    assert!(err.contains("did you mean `arithmetic`?"), "{err}");
}

#[test]
fn missing_model_is_refused() {
    let text = BASE.replace("new_model = \"tiny\"", "");
    let (err, _) = refused(&text, &[]);
    assert!(err.contains("`model.path`"), "{err}");
}

#[test]
fn unknown_correction_kind_lists_the_allowed_values() {
    let text = format!("{BASE}\n[learner.correction]\nkind = \"sapo\"\n");
    let (err, file) = refused(&text, &[]);
    assert!(err.contains(&format!("{file}:15:")), "{err}");
    assert!(
        err.contains("bypass, tis, mis, alp, none, icepop, dppo"),
        "{err}"
    );
}

#[test]
fn rollout_backend_and_its_vllm_section_must_agree() {
    let vllm = "\n[rollout.vllm]\nlaunch = true\n";
    for (text, extra, key, says) in [
        (
            BASE.replace("group_size = 4", "group_size = 4\nbackend = \"vllm\""),
            vec![],
            "rollout.vllm",
            "is missing but rollout.backend = \"vllm\"",
        ),
        (
            format!("{BASE}{vllm}"),
            vec![],
            "rollout.vllm",
            "rollout.backend is \"local\"",
        ),
        (
            format!("{BASE}{vllm}"),
            vec!["rollout.backend=vllm", "rollout.vllm.servers=[\"http://127.0.0.1:1\"]"],
            "rollout.vllm.servers",
            "is set together with launch = true",
        ),
        (
            format!("{BASE}{vllm}"),
            vec!["rollout.backend=vllm", "rollout.vllm.args=[\"--port\", \"1\"]"],
            "rollout.vllm.args",
            "which alp-rl sets itself",
        ),
        (
            "[model]\nnew_model = \"tiny\"\n[learner]\nkind = \"eggroll\"\n[rollout]\nbackend = \"vllm\"\n\
             [rollout.vllm]\nlaunch = true\n[env]\nname = \"arithmetic\"\n"
                .to_string(),
            vec!["learner.eggroll.rank=600"],
            "learner.eggroll.rank",
            "--max-lora-rank at most 512",
        ),
        (
            BASE.replace("group_size = 4", "group_size = 4\nbackend = \"sglang\""),
            vec![],
            "rollout.backend",
            "allowed: local, vllm",
        ),
        (
            format!("{BASE}{vllm}"),
            vec!["rollout.backend=vllm", "model.bf16_compute=native"],
            "model.bf16_compute",
            "the servers compute in the dtype",
        ),
        (
            BASE.to_string(),
            vec!["model.inference_dtype=f32", "model.bf16_compute=rounded-f32"],
            "model.bf16_compute",
            "only says how a bf16 copy computes",
        ),
        (
            BASE.to_string(),
            vec!["model.bf16_compute=fast"],
            "model.bf16_compute",
            "allowed: auto, native, rounded-f32",
        ),
    ] {
        let mut args = Vec::new();
        for s in &extra {
            args.extend(["--set", s]);
        }
        let (err, _) = refused(&text, &args);
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(err.contains(says), "{key}: {err}");
    }
}

/// `model.device = "cuda"` on a machine where libtorch sees no GPU is refused before any work (on a
/// GPU machine the same config is valid, so there the test checks that it passes `--check`).
#[test]
fn cuda_without_a_gpu_is_refused() {
    if tch::Cuda::is_available() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.toml");
        std::fs::write(&path, BASE).unwrap();
        let out = train(&path, &["--check", "--set", "model.device=cuda"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let (err, file) = refused(BASE, &["--set", "model.device=cuda"]);
    assert!(err.contains(&file), "{err}");
    assert!(err.contains("libtorch sees no CUDA device"), "{err}");
    // `alp-rl sft` runs the same check.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cuda.toml");
    std::fs::write(&path, BASE).unwrap();
    let out_dir = dir.path().join("run");
    let out = ALP_RL
        .command()
        .args([
            "sft",
            path.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .args(["--set", "model.device=cuda"])
        .output()
        .expect("run alp-rl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !out_dir.exists(), "{err}");
    assert!(err.contains("libtorch sees no CUDA device"), "{err}");
}

#[test]
fn bad_lora_settings_are_refused_by_key_before_any_work() {
    let with = |lora: &str| format!("{BASE}\n[model.lora]\n{lora}\n");
    let cases: [(String, &[&str], &str, &str); 6] = [
        (
            with("dropout = 0.1"),
            &[],
            "model.lora.dropout",
            "not implemented",
        ),
        (
            with("target_modules = \"all\""),
            &[],
            "model.lora.target_modules",
            "\"all-linear\"",
        ),
        (
            with("target_modules = []"),
            &[],
            "model.lora.target_modules",
            "empty list",
        ),
        (with("rank = 0"), &[], "model.lora.rank", "1 to 4096"),
        (
            with("rank = 16").replace(
                "[learner.alp]\nsigma0 = 0.01",
                "[learner]\nkind = \"eggroll\"",
            ),
            &[],
            "model.lora",
            "eggroll",
        ),
        // A target the model does not have: refused against the model's config, before the run
        // directory is made (`refused` checks it is not).
        (
            with("target_modules = [\"nope_proj\"]"),
            &[],
            "target_modules",
            "nope_proj",
        ),
    ];
    for (text, extra, key, says) in cases {
        let (err, _) = refused(&text, extra);
        assert!(err.contains(key), "{key}: {err}");
        assert!(err.contains(says), "{key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// The anchors' correction keys (issue 29): a config using them passes `--check`, whose written
/// config (what a run directory's config.toml holds) reads back the same; a bad threshold is refused
/// with its key, line and the fix.
#[test]
fn anchor_correction_keys_check_round_trip_and_refuse_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{BASE}\n[learner.correction]\nkind = \"dppo\"\nkl_tau = 0.002\nrejection = [\"token_k1\", \"seq_mean_k3\"]\nrejection_threshold = [\"0.6_1.6\", 0.02]\n"
    );
    let path = dir.path().join("anchors.toml");
    std::fs::write(&path, &text).unwrap();
    let out = train(&path, &["--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = String::from_utf8(out.stdout).unwrap();
    for line in [
        "kind = \"dppo\"",
        "kl_tau = 0.002",
        "rejection = [\"token_k1\", \"seq_mean_k3\"]",
        "rejection_threshold = [\"0.6_1.6\", 0.02]",
    ] {
        assert!(
            written.lines().any(|l| l == line),
            "`{line}` missing:\n{written}"
        );
    }
    let again = dir.path().join("written.toml");
    std::fs::write(&again, &written).unwrap();
    let out = train(&again, &["--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), written);

    let bad = format!("{BASE}\n[learner.correction]\nrejection = [\"token_k3\"]\nrejection_threshold = [\"0.5_2.0\"]\n");
    let (err, file) = refused(&bad, &[]);
    assert!(err.contains(&format!("{file}:16:")), "{err}");
    assert!(
        err.contains("`learner.correction.rejection_threshold`"),
        "{err}"
    );
    assert!(err.contains("upper bound only"), "{err}");
}
