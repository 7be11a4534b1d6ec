//! Malformed input as a new user would give it: config snippets, CLI flags and files, each refused by
//! the built binary before any work with a message that names the file, key or flag (and the fix),
//! never a panic, an abort or a hang. Every case runs under a timeout and must fail fast (in
//! validation: no training runs here).
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use alp_test_support::cli::AlpRl;

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

/// A refusal must come quickly: validation, not work.
const LIMIT: Duration = Duration::from_secs(60);

const BASE: &str = r#"[model]
new_model = "tiny"
threads = 1

[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 8
max_total_tokens = 16

[run]
steps = 1

[env]
name = "arithmetic"
digits = 1
"#;

/// One malformed input and what the refusal must say.
struct Case {
    name: String,
    args: Vec<String>,
    /// Substrings the error (stderr) must contain: the file / key / flag and the fix.
    expect: Vec<String>,
    /// Paths the refused command must not have created.
    absent: Vec<PathBuf>,
}

impl Case {
    fn new(name: &str, args: &[&str], expect: &[&str]) -> Self {
        Case {
            name: name.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            expect: expect.iter().map(|s| s.to_string()).collect(),
            absent: Vec::new(),
        }
    }

    fn absent(mut self, path: &Path) -> Self {
        self.absent.push(path.to_path_buf());
        self
    }
}

/// Runs `alp-rl args` under [`LIMIT`]; returns (exit code or None for a signal, stderr, time).
fn run(args: &[String], scratch: &Path) -> (Option<i32>, String, Duration) {
    let err_path = scratch.join(format!("stderr-{}", std::process::id()));
    let started = Instant::now();
    let mut child = ALP_RL
        .command()
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("run alp-rl");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let code = match status {
        Some(s) => s.code(),
        None => Some(-999), // hung: reported below
    };
    (code, stderr, took)
}

/// Runs every case; collects every failure so one run reports them all.
fn check_all(cases: Vec<Case>, scratch: &Path) {
    let mut failures = Vec::new();
    for case in &cases {
        let (code, stderr, took) = run(&case.args, scratch);
        let mut why = Vec::new();
        match code {
            Some(-999) => why.push(format!("hung (killed after {LIMIT:?})")),
            None => why.push("killed by a signal (abort?)".to_string()),
            Some(0) => why.push("accepted (exit 0)".to_string()),
            Some(_) => {}
        }
        for bad in ["panicked at", "RUST_BACKTRACE", "SIGABRT", "core dumped"] {
            if stderr.contains(bad) {
                why.push(format!("stderr contains {bad:?}"));
            }
        }
        for e in &case.expect {
            if !stderr.contains(e.as_str()) {
                why.push(format!("stderr lacks {e:?}"));
            }
        }
        for p in &case.absent {
            if p.exists() {
                why.push(format!("{} was created", p.display()));
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "case `{}` ({:.1}s): {}\n  args: {:?}\n  stderr: {}",
                case.name,
                took.as_secs_f64(),
                why.join("; "),
                case.args,
                stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed inputs were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn write(path: &Path, text: &str) -> String {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Rewrites a field of `dir/config.json`.
fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

/// A copy of the model in `src` at `dst`.
fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

/// Overwrites every weight of an f32 safetensors file with NaN (the header is kept).
fn poison_weights(dir: &Path) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for b in &mut bytes[8 + header..] {
        *b = 0xFF; // 0xFFFFFFFF is a NaN in f32
    }
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn train_configs_with_impossible_sizes_and_paths_are_refused_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = d.join("model");
    ALP_RL.new_model(&model, &[]);
    let out = d.join("run");
    let config = |name: &str, text: &str| write(&d.join(format!("{name}.toml")), text);
    let train = |name: &str, text: &str, extra: &[&str], expect: &[&str]| {
        let cfg = config(name, text);
        let mut args = vec!["train", cfg.as_str(), "--out"];
        let out_s = s(&out);
        args.push(&out_s);
        args.extend_from_slice(extra);
        Case::new(name, &args, expect).absent(&out)
    };
    let file_in_the_way = write(&d.join("a-file"), "x");
    let with_model = |m: &Path| {
        BASE.replace(
            "new_model = \"tiny\"",
            &format!("path = {:?}", m.display().to_string()),
        )
    };
    let bad_theta = d.join("bad-theta");
    copy_model(&model, &bad_theta);
    edit_config(&bad_theta, "rope_theta", serde_json::json!(-5.0));
    let bad_eps = d.join("bad-eps");
    copy_model(&model, &bad_eps);
    edit_config(&bad_eps, "rms_norm_eps", serde_json::json!(-1.0));

    let cases = vec![
        train(
            "huge_group",
            &BASE.replace("group_size = 2", "group_size = 1000000000"),
            &[],
            &["`rollout.group_size`", "at most 1024", "huge_group.toml:6:"],
        ),
        train(
            "huge_new_tokens",
            BASE,
            &["--set", "rollout.max_new_tokens=1000000000"],
            &[
                "--set rollout.max_new_tokens=1000000000",
                "`rollout.max_new_tokens`",
                "at most",
            ],
        ),
        train(
            "huge_prompts",
            BASE,
            &["--set", "rollout.prompts_per_step=100000000"],
            &["`rollout.prompts_per_step`", "at most"],
        ),
        train(
            "too_many_samples",
            BASE,
            &[
                "--set",
                "rollout.group_size=1024",
                "--set",
                "rollout.prompts_per_step=65536",
            ],
            &["samples per step"],
        ),
        train(
            "huge_batch",
            BASE,
            &["--set", "rollout.batch_size=100000000"],
            &["`rollout.batch_size`"],
        ),
        train(
            "budget_past_context",
            &BASE.replace("max_total_tokens = 16", "max_total_tokens = 4096"),
            &[],
            &[
                "`rollout.max_total_tokens`",
                "max_position_embeddings",
                "2048",
                "budget_past_context.toml",
            ],
        ),
        train(
            "prompt_past_context",
            &BASE.replace(
                "digits = 1",
                &format!("system_prompt = \"{}\"", "x".repeat(2100)),
            ),
            &[],
            &[
                "first training prompt",
                "max_position_embeddings",
                "shorten the prompt",
            ],
        ),
        train(
            "huge_eval",
            &format!("{BASE}\n[eval]\nproblems = 100000000\n"),
            &[],
            &["`eval.problems`", "at most"],
        ),
        train(
            "huge_eval_samples",
            &format!("{BASE}\n[eval]\ngreedy = false\nsamples = 100000\n"),
            &[],
            &["`eval.samples`", "at most"],
        ),
        train(
            "huge_sft_batch",
            &format!("{BASE}\n[sft]\nbatch_size = 1000000000\n"),
            &[],
            &["`sft.batch_size`", "at most"],
        ),
        train(
            "empty_run_out",
            &BASE.replace("steps = 1", "steps = 1\nout = \"\""),
            &[],
            &["`run.out`", "is empty"],
        ),
        Case::new(
            "empty_out_flag",
            &["train", &config("plain", BASE), "--out", ""],
            &["a value is required for '--out"],
        ),
        train(
            "tool_math_chars",
            &BASE.replace(
                "name = \"arithmetic\"\ndigits = 1",
                "name = \"tool_math\"\nmax_expression_chars = 0",
            ),
            &[],
            &["`env.max_expression_chars`", "1 to 100000"],
        ),
        train(
            "tool_math_exponent",
            &BASE.replace(
                "name = \"arithmetic\"\ndigits = 1",
                "name = \"tool_math\"\nmax_exponent = 0",
            ),
            &[],
            &["`env.max_exponent`"],
        ),
        train(
            "model_path_missing",
            &with_model(&d.join("no-such-model")),
            &[],
            &["model.path", "no-such-model", "no config.json"],
        ),
        train(
            "negative_rope_theta",
            &with_model(&bad_theta),
            &[],
            &["bad-theta/config.json", "`rope_theta`", "positive"],
        ),
        train(
            "negative_rms_norm_eps",
            &with_model(&bad_eps),
            &[],
            &["bad-eps/config.json", "`rms_norm_eps`"],
        ),
        Case::new(
            "out_under_a_file",
            &[
                "train",
                &config("plain", BASE),
                "--out",
                &format!("{file_in_the_way}/run"),
            ],
            &["cannot create the run directory", "a-file/run"],
        ),
        Case::new(
            "missing_config_file",
            &["train", &s(&d.join("nope.toml"))],
            &["nope.toml", "cannot read the config"],
        ),
        Case::new(
            "resume_without_run",
            &[
                "train",
                &config("plain", BASE),
                "--resume",
                "--out",
                &s(&d.join("never-ran")),
            ],
            &["--resume", "never-ran", "not a run directory"],
        )
        .absent(&d.join("never-ran")),
    ];
    check_all(cases, d);
}

#[test]
fn sft_data_errors_name_file_and_line_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = d.join("run");
    let sft = |name: &str, data: &str, expect: &[&str]| {
        let data_path = write(&d.join(format!("{name}.jsonl")), data);
        let cfg = write(
            &d.join(format!("{name}.toml")),
            &format!("{BASE}\n[sft]\nsteps = 1\nbatch_size = 1\ndata = {data_path:?}\n"),
        );
        let mut expect: Vec<&str> = expect.to_vec();
        let line = format!("{name}.jsonl:");
        expect.push(&line);
        Case::new(name, &["sft", &cfg, "--out", &s(&out)], &expect).absent(&out)
    };
    let long = format!(
        "{{\"prompt\": \"{}\", \"completion\": \"x\"}}\n",
        "7".repeat(3000)
    );
    let cases = vec![
        sft(
            "unknown_role",
            "{\"messages\": [{\"role\": \"bot\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
            &["role \"bot\"", "allowed: system, user, assistant, tool"],
        ),
        sft("not_json", "{\"prompt\": \"1+1\",\n", &["not JSON"]),
        sft(
            "no_content",
            "{\"messages\": [{\"role\": \"user\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
            &["needs a `content` string"],
        ),
        sft(
            "longer_than_context",
            &long,
            &["more than the model's context", "max_position_embeddings"],
        ),
    ];
    check_all(cases, d);
    // After a refusal the corrected rerun is not refused as "already holds a run".
    let data = write(
        &d.join("good.jsonl"),
        "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n",
    );
    let cfg = write(
        &d.join("good.toml"),
        &format!("{BASE}\n[sft]\nsteps = 1\nbatch_size = 1\ndata = {data:?}\n"),
    );
    let (code, stderr, _) = run(&["sft".into(), cfg, "--out".into(), s(&out)], d);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn resume_and_lock_faults_name_the_file_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = write(&d.join("r.toml"), BASE);
    // The resolved config a run records, so `--resume` gets past the config comparison.
    let resolved = ALP_RL.output(["train", &cfg, "--check"]);
    assert!(resolved.status.success());
    let resolved = String::from_utf8(resolved.stdout).unwrap();
    let run_dir = |name: &str, run_json: &str| {
        let r = d.join(name);
        write(&r.join("config.toml"), &resolved);
        write(&r.join("run.json"), run_json);
        std::fs::create_dir_all(r.join("checkpoints")).unwrap();
        r
    };
    let state = |step: u64| {
        format!(
            "{{\"step\": {step}, \"policy_version\": {step}, \"seed\": 0, \"nonfinite_run\": 0, \"nonfinite_total\": 0}}"
        )
    };
    let resume = |name: &str, r: &Path, expect: &[&str]| {
        Case::new(name, &["train", &cfg, "--resume", "--out", &s(r)], expect)
    };

    let garbage = run_dir("garbage", "{not json");
    let no_latest = run_dir("no-latest", "{\"resumes\": []}");
    write(
        &no_latest.join("checkpoints/step-000001/state.json"),
        &state(1),
    );
    let lying = run_dir("lying", "{\"resumes\": []}");
    write(&lying.join("checkpoints/step-000001/state.json"), &state(7));
    write(&lying.join("checkpoints/latest"), "step-000001");
    let dangling = run_dir("dangling", "{\"resumes\": []}");
    write(&dangling.join("checkpoints/latest"), "step-000003");
    let locked = d.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(locked.join(".lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::fs::write(locked.join(".lock"), "4242").unwrap();

    let cases = vec![
        resume(
            "garbage_run_json",
            &garbage,
            &["garbage/run.json", "not valid JSON"],
        ),
        resume(
            "latest_deleted",
            &no_latest,
            &["no-latest/checkpoints/latest", "is missing", "step-000001"],
        ),
        resume(
            "state_disagrees",
            &lying,
            &["step-000001/state.json", "says step 7"],
        ),
        resume(
            "latest_dangling",
            &dangling,
            &["step-000003", "does not exist"],
        ),
        Case::new(
            "second_trainer",
            &["train", &cfg, "--out", &s(&locked)],
            &["locked", "in use", "pid 4242"],
        ),
    ];
    check_all(cases, d);
    drop(lock);
}

#[test]
fn cli_flags_are_validated_like_their_config_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = d.join("model");
    ALP_RL.new_model(&model, &[]);
    let m = s(&model);
    let nan = d.join("nan");
    copy_model(&model, &nan);
    poison_weights(&nan);
    let theta = d.join("theta");
    copy_model(&model, &theta);
    edit_config(&theta, "rope_theta", serde_json::json!(-5.0));
    let escape = d.join("escape");
    copy_model(&model, &escape);
    std::fs::rename(
        escape.join("model.safetensors"),
        d.join("stolen.safetensors"),
    )
    .unwrap();
    write(
        &escape.join("model.safetensors.index.json"),
        "{\"weight_map\": {\"model.embed_tokens.weight\": \"../stolen.safetensors\"}}",
    );
    let a_file = write(&d.join("a-file"), "x");
    let long_prompt: Vec<String> = (0..2100).map(|i| (i % 50 + 1).to_string()).collect();
    let long_prompt = long_prompt.join(",");
    let gen = |name: &str, extra: &[&str], expect: &[&str]| {
        let mut args = vec!["generate", "--model", &m];
        args.extend_from_slice(extra);
        Case::new(name, &args, expect)
    };
    let eval = |name: &str, model: &str, extra: &[&str], expect: &[&str]| {
        let mut args = vec!["eval", "--model", model, "--env", "arithmetic"];
        args.extend_from_slice(extra);
        Case::new(name, &args, expect)
    };
    let prompts_file = write(
        &d.join("bad-ids.jsonl"),
        "{\"prompt_ids\": [1, 2]}\n{\"prompt_ids\": [1, 99999]}\n",
    );
    let existing = d.join("existing");
    copy_model(&model, &existing);

    let cases = vec![
        gen(
            "gen_batch_zero",
            &["--prompt", "1+1=", "--batch-size", "0"],
            &["--batch-size", "1 to"],
        ),
        gen(
            "gen_huge_max_new",
            &["--prompt", "1+1=", "--max-new-tokens", "1000000000"],
            &["--max-new-tokens", "1 to"],
        ),
        gen(
            "gen_max_new_past_context",
            &["--prompt", "1+1=", "--max-new-tokens", "3000"],
            &["max_position_embeddings", "2048", "max_new_tokens"],
        ),
        gen(
            "gen_prompt_past_context",
            &["--prompt-ids", &long_prompt],
            &["prompt is 2100 tokens", "max_position_embeddings"],
        ),
        gen(
            "gen_temperature",
            &["--prompt", "1+1=", "--temperature=-1"],
            &["--temperature"],
        ),
        gen(
            "gen_top_p",
            &["--prompt", "1+1=", "--top-p", "2"],
            &["--top-p", "(0, 1]"],
        ),
        gen(
            "gen_top_k",
            &["--prompt", "1+1=", "--top-k=-3"],
            &["--top-k"],
        ),
        gen(
            "gen_out_under_a_file",
            &["--prompt", "1+1=", "--out", &format!("{a_file}/x.jsonl")],
            &["a-file/x.jsonl"],
        ),
        Case::new(
            "gen_nan_weights",
            &["generate", "--model", &s(&nan), "--prompt", "1+1="],
            &["nan", "non-finite"],
        ),
        Case::new(
            "gen_negative_rope_theta",
            &["generate", "--model", &s(&theta), "--prompt", "1+1="],
            &["theta/config.json", "`rope_theta`"],
        ),
        Case::new(
            "gen_weight_map_escape",
            &["generate", "--model", &s(&escape), "--prompt", "1+1="],
            &["weight_map", "not a file inside"],
        ),
        eval(
            "eval_problems_zero",
            &m,
            &["--problems", "0"],
            &["--problems", "1 to"],
        ),
        eval("eval_n_zero", &m, &["--n", "0"], &["--n", "1 to"]),
        eval(
            "eval_greedy_n",
            &m,
            &["--greedy", "--n", "4"],
            &["--n is 4", "--greedy"],
        ),
        eval(
            "eval_batch_zero",
            &m,
            &["--batch-size", "0"],
            &["--batch-size"],
        ),
        eval(
            "eval_total_below_new",
            &m,
            &["--max-new-tokens", "64", "--max-total-tokens", "8"],
            &["--max-total-tokens", "--max-new-tokens"],
        ),
        eval(
            "eval_nan_weights",
            &s(&nan),
            &["--problems", "2"],
            &["non-finite"],
        ),
        eval(
            "eval_negative_rope_theta",
            &s(&theta),
            &["--problems", "2"],
            &["`rope_theta`"],
        ),
        Case::new(
            "eval_unknown_env",
            &["eval", "--model", &m, "--env", "arithmetc"],
            &["arithmetc", "arithmetic"],
        ),
        Case::new(
            "env_sample_huge_n",
            &["env", "sample", "arithmetic", "--n", "1000000000"],
            &["--n", "1 to"],
        ),
        gen(
            "gen_prompts_bad_token",
            &["--prompts", &prompts_file],
            &["bad-ids.jsonl", "request 1", "outside the vocabulary"],
        ),
        Case::new(
            "new_model_over_existing",
            &["new-model", "--out", &s(&existing)],
            &["existing", "already exists", "never overwrites"],
        ),
        Case::new(
            "new_model_empty_out",
            &["new-model", "--out", ""],
            &["a value is required for '--out"],
        ),
        Case::new(
            "new_model_bad_preset",
            &["new-model", "--preset", "huge", "--out", &s(&d.join("m2"))],
            &["--preset", "allowed: tiny, small"],
        )
        .absent(&d.join("m2")),
    ];
    check_all(cases, d);
    // The refused overwrite left the existing checkpoint as it was.
    assert_eq!(
        std::fs::read(existing.join("model.safetensors")).unwrap(),
        std::fs::read(model.join("model.safetensors")).unwrap()
    );
}

#[test]
fn files_and_values_a_new_user_gets_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = d.join("model");
    ALP_RL.new_model(&model, &[]);
    let m = s(&model);
    let out = d.join("run");
    let train = |name: &str, text: &str, extra: &[&str], expect: &[&str]| {
        let cfg = write(&d.join(format!("{name}.toml")), text);
        let out_s = s(&out);
        let mut args = vec!["train", cfg.as_str(), "--out", out_s.as_str()];
        args.extend_from_slice(extra);
        Case::new(name, &args, expect).absent(&out)
    };
    let not_json = write(&d.join("prompts.jsonl"), "{\"prompt\": \"a\"}\nnot json\n");
    let a_file = write(&d.join("a-file"), "x");
    let cases = vec![
        train(
            "not_toml",
            "[model\nnew_model = \"tiny\"\n",
            &[],
            &["not_toml.toml:1:", "not valid TOML"],
        ),
        train(
            "huge_eval_new_tokens",
            &format!("{BASE}\n[eval]\nmax_new_tokens = 100000000\n"),
            &[],
            &["`eval.max_new_tokens`", "at most"],
        ),
        train(
            "zero_steps",
            &BASE.replace("steps = 1", "steps = 0"),
            &[],
            &["`run.steps`", "at least 1"],
        ),
        train(
            "tool_math_bits",
            &BASE.replace(
                "name = \"arithmetic\"\ndigits = 1",
                "name = \"tool_math\"\nmax_bits = 10",
            ),
            &[],
            &["`env.max_bits`", "64 to 1048576"],
        ),
        train(
            "missing_sft_data",
            &format!("{BASE}\n[sft]\ndata = \"no-such.jsonl\"\n"),
            &[],
            &["`sft.data`", "no-such.jsonl"],
        ),
        train(
            "bad_set_key",
            BASE,
            &["--set", "a..b=1"],
            &["--set a..b=1", "dotted path"],
        ),
        train(
            "threads",
            BASE,
            &["--set", "model.threads=5000"],
            &["`model.threads`", "1024"],
        ),
        Case::new(
            "gen_missing_prompts_file",
            &[
                "generate",
                "--model",
                &m,
                "--prompts",
                &s(&d.join("none.jsonl")),
            ],
            &["none.jsonl"],
        ),
        Case::new(
            "gen_prompts_not_json",
            &["generate", "--model", &m, "--prompts", &not_json],
            &["prompts.jsonl line 2", "not JSON"],
        ),
        Case::new(
            "gen_dtype",
            &["generate", "--model", &m, "--prompt", "x", "--dtype", "f64"],
            &["--dtype", "unknown dtype \"f64\"; allowed: f32, bf16, f16"],
        ),
        Case::new(
            "gen_logprobs_mode",
            &[
                "generate",
                "--model",
                &m,
                "--prompt",
                "x",
                "--logprobs",
                "foo",
            ],
            &["--logprobs", "allowed: sampling, temperature, raw"],
        ),
        Case::new(
            "gen_missing_model",
            &[
                "generate",
                "--model",
                &s(&d.join("nomodel")),
                "--prompt",
                "x",
            ],
            &["nomodel", "tokenizer"],
        ),
        Case::new(
            "eval_dtype",
            &[
                "eval",
                "--model",
                &m,
                "--env",
                "arithmetic",
                "--dtype",
                "f64",
            ],
            &["--dtype", "unknown dtype \"f64\"; allowed: f32, bf16, f16"],
        ),
        Case::new(
            "eval_missing_dataset",
            &[
                "eval",
                "--model",
                &m,
                "--env",
                "math",
                "--set",
                &format!("test_path={}", s(&d.join("gone.jsonl"))),
            ],
            &["gone.jsonl"],
        ),
        Case::new(
            "config_is_a_directory",
            &["train", &s(d)],
            &[&s(d), "cannot read the config"],
        ),
        Case::new(
            "new_model_out_under_a_file",
            &["new-model", "--out", &format!("{a_file}/m")],
            &["a-file/m"],
        ),
        Case::new(
            "env_score_input_is_a_directory",
            &["env", "score", "arithmetic", "--input", &s(d)],
            &[&s(d)],
        ),
        Case::new(
            "env_score_missing_input",
            &[
                "env",
                "score",
                "arithmetic",
                "--input",
                &s(&d.join("absent.jsonl")),
            ],
            &["absent.jsonl"],
        ),
        Case::new(
            "env_unknown_setting",
            &[
                "env",
                "sample",
                "tool_math",
                "--set",
                "max_expression_chars=0",
            ],
            &["max_expression_chars"],
        ),
    ];
    check_all(cases, d);
}
