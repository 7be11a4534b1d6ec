//! Every config shipped in `configs/` (and its subfolders, e.g. `configs/experiments/`) parses and validates (`alp-rl train CONFIG --check`), so a
//! renamed key or a changed range cannot silently break the examples users start from.
use alp_test_support::cli::AlpRl;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

#[test]
fn every_shipped_config_validates() {
    let mut pending = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")];
    let mut configs = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                configs.push(path);
            }
        }
    }
    let mut checked = Vec::new();
    for path in configs {
        let out = ALP_RL
            .command()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["train", path.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The resolved config is printed and names the environment.
        let resolved = String::from_utf8_lossy(&out.stdout);
        assert!(resolved.contains("[env]"), "{resolved}");
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    for required in [
        "gsm8k-qwen.toml",
        "math.toml",
        "math-vllm.toml",
        "tool-math.toml",
        "token-alp.toml",
        "seq-alp.toml",
    ] {
        assert!(
            checked.iter().any(|c| c == required),
            "configs/{required} is missing: {checked:?}"
        );
    }
}

#[test]
fn bad_sft_and_eval_keys_are_refused_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    let base = "[model]\nnew_model = \"tiny\"\n\n[env]\nname = \"arithmetic\"\n\n";
    for (section, needle) in [
        (
            "[sft]\nsteps = 0\n",
            "x.toml:8:1: `sft.steps`: must be at least 1",
        ),
        ("[sft]\nstepz = 5\n", "did you mean `steps`?"),
        (
            "[eval]\nsplit = \"dev\"\n",
            "`eval.split`: unknown split \"dev\"",
        ),
        (
            "[eval]\nsamples = 4\n",
            "`eval.samples`: is 4 but greedy decoding",
        ),
    ] {
        std::fs::write(&path, format!("{base}{section}")).unwrap();
        let out = ALP_RL.output(["train", path.to_str().unwrap(), "--check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{section} was accepted");
        assert!(err.contains(needle), "{section}: {err}");
    }
}
