//! The default config's RL steps on two ranks (`alp-rl train --nproc 2`, one libtorch thread each,
//! Gloo) against one process with two threads, and one process with one thread as a reference;
//! steps/s side by side from one run:
//!
//!     cargo bench --bench train_dp
//!
//! All variants start from the same warm start (configs/math.toml's `[sft]`, run once here with
//! `alp-rl sft`), without the held-out evaluation (rank 0 alone evaluates, which would blur the
//! step time), for BENCH_STEPS steps (default 20); a variant's s/step is the mean `time/step_s` of
//! its steps after the first. Environment: BENCH_STEPS, BENCH_SFT_STEPS (the warm start's steps,
//! default the config's). Not a test: it asserts nothing about speed.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use alp_test_support::bench::{cpu_flags, env_or};
use alp_test_support::run_outputs;

const ALP_RL: &str = env!("CARGO_BIN_EXE_alp-rl");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/math.toml");

fn run(args: &[&str]) {
    let t = Instant::now();
    let out = Command::new(ALP_RL)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running alp-rl");
    assert!(
        out.status.success(),
        "alp-rl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("  alp-rl {} ({:.0} s)", args[0], t.elapsed().as_secs_f64());
}

/// math.toml without `[sft]` and `[eval]`, starting from `model`.
fn rl_config(dir: &Path, model: &Path) -> PathBuf {
    let text = std::fs::read_to_string(CONFIG).unwrap();
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skip = line == "[sft]" || line == "[eval]";
        }
        if skip {
            continue;
        }
        if line.starts_with("new_model") {
            out.push_str(&format!("path = \"{}\"\n", model.display()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = dir.join("math-rl.toml");
    std::fs::write(&path, out).unwrap();
    path
}

/// Mean `time/step_s` of the steps after the first.
fn seconds_per_step(run_dir: &Path) -> f64 {
    let metrics = run_outputs::metrics(run_dir);
    let times: Vec<f64> = metrics
        .iter()
        .filter(|(&step, _)| step >= 2)
        .filter_map(|(_, row)| row.get("time/step_s").copied())
        .collect();
    assert!(!times.is_empty(), "no step times in {}", run_dir.display());
    times.iter().sum::<f64>() / times.len() as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let steps: u64 = env_or("BENCH_STEPS", 20);
    let tmp = tempfile::tempdir().unwrap();
    let sft_dir = tmp.path().join("sft");
    let mut sft = vec!["sft", CONFIG, "--out", sft_dir.to_str().unwrap()];
    let sft_steps = std::env::var("BENCH_SFT_STEPS").ok();
    let sft_set = sft_steps.as_ref().map(|s| format!("sft.steps={s}"));
    if let Some(s) = &sft_set {
        sft.extend(["--set", s]);
    }
    eprintln!("warm start (configs/math.toml [sft]):");
    run(&sft);
    let latest = std::fs::read_to_string(sft_dir.join("checkpoints/latest")).unwrap();
    let model = sft_dir
        .join("checkpoints")
        .join(latest.trim())
        .join("model");
    let config = rl_config(tmp.path(), &model);
    let config = config.to_str().unwrap();
    let steps_set = format!("run.steps={steps}");

    let variants: [(&str, &[&str]); 3] = [
        ("1 process x 2 threads", &["--set", "model.threads=2"]),
        ("2 ranks x 1 thread (--nproc 2, Gloo)", &["--nproc", "2"]),
        ("1 process x 1 thread", &[]),
    ];
    eprintln!("RL, {steps} steps each:");
    let mut rows = Vec::new();
    for (i, (name, extra)) in variants.into_iter().enumerate() {
        let out = tmp.path().join(format!("variant-{i}"));
        let mut args = vec![
            "train",
            config,
            "--out",
            out.to_str().unwrap(),
            "--set",
            &steps_set,
        ];
        args.extend_from_slice(extra);
        run(&args);
        rows.push((name, seconds_per_step(&out)));
    }
    println!("cpu flags: {}", cpu_flags());
    println!(
        "configs/math.toml RL steps (warm-started, no evaluation), mean of steps 2..={steps}:"
    );
    println!("| | s/step | steps/s |");
    println!("|---|---|---|");
    for (name, s) in &rows {
        println!("| {name} | {s:.3} | {:.2} |", 1.0 / s);
    }
    println!(
        "2 ranks x 1 thread / 1 process x 2 threads: {:.2}x steps/s",
        rows[0].1 / rows[1].1
    );
}
