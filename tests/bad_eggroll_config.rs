//! `[learner] kind = "eggroll"` and `[learner.eggroll]` as a user gets them wrong (issue 12,
//! acceptance 7): each refused by the built binary before any work, with the file position, the key
//! and the fix; settings of the other learner are refused rather than ignored; and a valid config
//! round-trips through `--check`.
use std::path::Path;
use std::process::{Command, Output};

/// Lines are numbered for the positions the cases expect.
const BASE: &str = r#"[model]
new_model = "tiny"
threads = 1

[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 8
max_total_tokens = 16

[learner]
kind = "eggroll"

[learner.eggroll]
population = 4
rank = 1
sigma = 0.001
lr = 0.001

[run]
steps = 1

[env]
name = "arithmetic"
digits = 1
"#;

fn alp_rl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alp-rl"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run alp-rl")
}

/// `alp-rl train` on `text` (plus `extra` flags) must fail, create no run directory, and say every
/// one of `expect` on stderr.
fn refused(dir: &Path, name: &str, text: &str, extra: &[&str], expect: &[&str]) -> Option<String> {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, text).unwrap();
    let out_dir = dir.join(format!("run-{name}"));
    let mut args = vec![
        "train",
        cfg.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = alp_rl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut why = Vec::new();
    if out.status.success() {
        why.push("accepted".to_string());
    }
    if out_dir.exists() {
        why.push("created the run directory".to_string());
    }
    if stderr.contains("panicked") {
        why.push("panicked".to_string());
    }
    for e in expect {
        let e = e.replace("FILE", &cfg.display().to_string());
        if !stderr.contains(&e) {
            why.push(format!("stderr lacks {e:?}"));
        }
    }
    (!why.is_empty()).then(|| {
        format!(
            "case `{name}`: {}\n  stderr: {}",
            why.join("; "),
            stderr.trim()
        )
    })
}

#[test]
fn bad_eggroll_settings_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let with = |from: &str, to: &str| {
        assert!(BASE.contains(from), "{from}");
        BASE.replace(from, to)
    };
    let cases: Vec<(&str, String, Vec<&str>, Vec<&str>)> = vec![
        (
            "odd_population",
            with("population = 4", "population = 5"),
            vec![],
            vec!["FILE:15:1: `learner.eggroll.population`", "even population"],
        ),
        (
            "rank_zero",
            with("rank = 1", "rank = 0"),
            vec![],
            vec!["FILE:16:1: `learner.eggroll.rank`", "must be >= 1"],
        ),
        (
            "sigma_zero",
            with("sigma = 0.001", "sigma = 0.0"),
            vec![],
            vec!["FILE:17:1: `learner.eggroll.sigma`", "must be > 0"],
        ),
        (
            "sigma_negative",
            BASE.to_string(),
            vec!["--set", "learner.eggroll.sigma=-0.5"],
            vec![
                "--set learner.eggroll.sigma=-0.5: `learner.eggroll.sigma`",
                "must be > 0",
            ],
        ),
        (
            "lr_zero",
            with("lr = 0.001", "lr = 0.0"),
            vec![],
            vec!["FILE:18:1: `learner.eggroll.lr`", "must be > 0"],
        ),
        (
            "temperature_negative",
            with("lr = 0.001", "lr = 0.001\ntemperature = -1.0"),
            vec![],
            vec!["`learner.eggroll.temperature`", "0 is greedy"],
        ),
        (
            "samples_per_member_zero",
            with("lr = 0.001", "lr = 0.001\nsamples_per_member = 0"),
            vec![],
            vec!["`learner.eggroll.samples_per_member`", "must be >= 1"],
        ),
        (
            "unknown_optimizer",
            with("lr = 0.001", "lr = 0.001\noptimizer = \"adamw\""),
            vec![],
            vec![
                "FILE:19:13: `learner.eggroll.optimizer`",
                "unknown value \"adamw\"; allowed: sgd, adam; did you mean `adam`?",
            ],
        ),
        (
            "unknown_fitness",
            with("lr = 0.001", "lr = 0.001\nfitness = \"ranks\""),
            vec![],
            vec![
                "`learner.eggroll.fitness`",
                "allowed: group, zscore, rank; did you mean `rank`?",
            ],
        ),
        (
            "misspelt_key",
            with("rank = 1", "rnak = 1"),
            vec![],
            vec!["FILE:16:1: `learner.eggroll.rnak`", "did you mean `rank`?"],
        ),
        (
            "unknown_kind",
            with("kind = \"eggroll\"", "kind = \"egroll\""),
            vec![],
            vec![
                "FILE:12:8: `learner.kind`",
                "allowed: pg, eggroll; did you mean `eggroll`?",
            ],
        ),
        (
            "pg_table_with_eggroll",
            format!("{BASE}\n[learner.correction]\nkind = \"tis\"\n"),
            vec![],
            vec![
                "`learner.correction`: is a setting of the policy-gradient learner",
                "set learner.kind = \"pg\"",
            ],
        ),
        (
            "pg_key_with_eggroll",
            with("kind = \"eggroll\"", "kind = \"eggroll\"\nepochs = 2"),
            vec![],
            vec!["FILE:13:1: `learner.epochs`", "policy-gradient"],
        ),
        (
            "pg_override_with_eggroll",
            BASE.to_string(),
            vec!["--set", "learner.alp.sigma0=0.1"],
            vec![
                "--set learner.alp.sigma0=0.1: `learner.alp`",
                "policy-gradient",
            ],
        ),
        (
            "eggroll_table_with_pg",
            with("kind = \"eggroll\"", ""),
            vec![],
            vec![
                "FILE:14:",
                "`learner.eggroll`: is set but learner.kind is \"pg\"",
                "set learner.kind = \"eggroll\"",
            ],
        ),
        (
            "eggroll_table_with_pg_override",
            BASE.to_string(),
            vec!["--set", "learner.kind=pg"],
            vec!["`learner.eggroll`", "learner.kind is \"pg\""],
        ),
        (
            "bf16_weights",
            with("threads = 1", "threads = 1\ntrain_dtype = \"bf16\""),
            vec![],
            vec!["`model.train_dtype`", "set model.train_dtype = \"f32\""],
        ),
        (
            "odd_rollouts_per_step",
            with("population = 4", "population = 0"),
            vec![
                "--set",
                "rollout.group_size=3",
                "--set",
                "rollout.prompts_per_step=1",
            ],
            vec![
                "`learner.eggroll.population`",
                "3 rollouts",
                "even population",
            ],
        ),
        (
            "population_not_the_batch",
            with("population = 4", "population = 6"),
            vec![],
            vec![
                "FILE:15:1: `learner.eggroll.population`",
                "needs 6 rollouts, but it has 4",
            ],
        ),
        // The batch shape against the population: refused by the config's validation, at the key.
        (
            "stale_members",
            with(
                "max_total_tokens = 16",
                "max_total_tokens = 16\nmax_staleness = 1",
            ),
            vec![],
            vec![
                "FILE:10:1: `rollout.max_staleness`",
                "set rollout.max_staleness = 0",
            ],
        ),
        (
            "samples_per_member_not_dividing_the_group",
            with("lr = 0.001", "lr = 0.001\nsamples_per_member = 3"),
            vec![],
            vec![
                "FILE:19:1: `learner.eggroll.samples_per_member`",
                "must divide rollout.group_size = 2",
            ],
        ),
        (
            "group_fitness_alone",
            with("population = 4", "population = 0"),
            vec!["--set", "rollout.group_size=1"],
            vec!["`learner.eggroll.fitness`", "every update would be zero"],
        ),
        // Against the model (the tiny preset: hidden 64, 2 KV heads of 16, so k_proj is 32 x 64),
        // refused at preflight, before the run directory exists.
        (
            "rank_above_a_matrix",
            with("rank = 1", "rank = 40"),
            vec![],
            vec![
                "FILE:16:1: `learner.eggroll.rank`",
                "k_proj.weight is 32 x 64: the rank must be at most 32",
            ],
        ),
        (
            "pattern_matches_nothing",
            with(
                "lr = 0.001",
                "lr = 0.001\nparams = [\"mlp.\", \"attn.q_norm\"]",
            ),
            vec![],
            vec![
                "FILE:19:1: `learner.eggroll.params`",
                "\"attn.q_norm\" matches no 2-D projection",
            ],
        ),
    ];
    let n = cases.len();
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, text, extra, expect)| refused(d, name, &text, &extra, &expect))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} cases mishandled:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_checked_eggroll_config_is_written_with_its_learners_keys_only_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("es.toml");
    std::fs::write(&cfg, BASE).unwrap();
    let out = alp_rl(&["train", cfg.to_str().unwrap(), "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let written = String::from_utf8(out.stdout).unwrap();
    for line in [
        "kind = \"eggroll\"",
        "[learner.eggroll]",
        "population = 4",
        "optimizer = \"sgd\"",
        "fitness = \"group\"",
    ] {
        assert!(
            written.lines().any(|l| l == line),
            "`{line}` missing:\n{written}"
        );
    }
    for absent in ["[learner.correction]", "[learner.alp]", "advantage ="] {
        assert!(!written.contains(absent), "{absent} written:\n{written}");
    }
    // What `--check` prints (and a run directory's config.toml holds) is accepted as a config.
    let again = tmp.path().join("written.toml");
    std::fs::write(&again, &written).unwrap();
    let out = alp_rl(&["train", again.to_str().unwrap(), "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), written);
}
