//! Memory of one real-size RL step (issue 27, acceptance 2), measured beside the estimate.
//!
//! ```text
//! cargo bench -p alp-learner --bench memory_step                # every configuration
//! cargo bench -p alp-learner --bench memory_step -- smol-ckpt   # some of them, by name
//! cargo bench -p alp-learner --bench memory_step -- --tuned smol-ckpt  # memory::tune_allocator first
//! ```
//!
//! With `--tuned` the children call [`alp_learner::memory::tune_allocator`] first.
//! Each configuration runs in a fresh child process (this binary again, with `--child NAME`), so one's
//! peak does not hide the next's: a random model of the shape (no download), f32 weights, then one
//! policy-gradient step with ALP on (layers, sigma 0.01, the `lp_old` forward of the mismatch metrics
//! included) on 16 rows of 256 tokens (32 prompt + 224 completion, random tokens), micro-batch 16.
//! The child prints the estimate ([`alp_learner::memory::estimate`]), the resident set before the step
//! (weights, optimizer state once made), the step's peak (`memory/peak_rss_gb`: VmHWM reset at the
//! step's start) and the step's wall time. The acceptance: SmolLM2 full fine-tuning with
//! checkpointing <= 4 GB, with LoRA <= 2 GB, Qwen2.5-0.5B full fine-tuning with checkpointing <= 12 GB.
#![allow(clippy::field_reassign_with_default)]
use std::process::Command;
use std::time::Instant;

use alp_learner::memory::{estimate, rss_bytes, tune_allocator, MemoryPlan, Trained};
use alp_learner::{CorrectionKind, Group, LearnerSettings, PgLearner, Sample};
use alp_policy::lora::TargetModules;
use alp_policy::{LoraAdapter, LoraConfig};
use alp_test_support::tiny_model::TinyModel;

const ROWS: usize = 16;
const PROMPT: usize = 32;
const COMPLETION: usize = 224;

struct Config {
    name: &'static str,
    what: &'static str,
    model: fn() -> TinyModel,
    checkpointing: bool,
    lora_rank: Option<i64>,
}

const CONFIGS: [Config; 4] = [
    Config {
        name: "smol-full",
        what: "SmolLM2-135M shape, full fine-tuning, no checkpointing",
        model: TinyModel::smollm2_135m,
        checkpointing: false,
        lora_rank: None,
    },
    Config {
        name: "smol-ckpt",
        what: "SmolLM2-135M shape, full fine-tuning, checkpointing (target <= 4 GB)",
        model: TinyModel::smollm2_135m,
        checkpointing: true,
        lora_rank: None,
    },
    Config {
        name: "smol-lora",
        what: "SmolLM2-135M shape, LoRA r16 all-linear, checkpointing (target <= 2 GB)",
        model: TinyModel::smollm2_135m,
        checkpointing: true,
        lora_rank: Some(16),
    },
    Config {
        name: "qwen05-ckpt",
        what: "Qwen2.5-0.5B shape, full fine-tuning, checkpointing (target <= 12 GB)",
        model: TinyModel::qwen2_5_0_5b,
        checkpointing: true,
        lora_rank: None,
    },
];

fn main() {
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let tuned = args.iter().any(|a| a == "--tuned");
    args.retain(|a| a != "--tuned");
    if args.first().map(String::as_str) == Some("--child") {
        let name = args.get(1).expect("--child NAME");
        let config = CONFIGS.iter().find(|c| c.name == name).expect("known name");
        child(config, tuned && tune_allocator());
        return;
    }
    print_cpu();
    let exe = std::env::current_exe().expect("the benchmark's own path");
    for config in CONFIGS
        .iter()
        .filter(|c| args.is_empty() || args.iter().any(|a| a == c.name))
    {
        println!("\n== {}: {}", config.name, config.what);
        let mut cmd = Command::new(&exe);
        cmd.args(["--child", config.name]);
        if tuned {
            cmd.arg("--tuned");
        }
        let status = cmd.status().expect("run the child");
        if !status.success() {
            println!("   child failed: {status}");
        }
    }
}

fn print_cpu() {
    let arena = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into());
    println!("MALLOC_ARENA_MAX: {arena}; torch threads: 2");
    match Command::new("lscpu").output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines() {
                let key = line.split(':').next().unwrap_or("").trim();
                if ["Model name", "CPU(s)", "Flags"].contains(&key) {
                    println!("{}", line.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
        }
        Err(e) => println!("lscpu: {e}"),
    }
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn child(config: &Config, tuned: bool) {
    tch::set_num_threads(2);
    let shape = (config.model)();
    let model = shape.random(1);
    let vocab = model.config().vocab_size;
    let mut settings = LearnerSettings::default();
    settings.micro_batch_size = ROWS;
    settings.gradient_checkpointing = config.checkpointing;
    settings.correction.kind = CorrectionKind::Alp;
    settings.max_grad_norm = 1.0;
    let trained = match config.lora_rank {
        Some(r) => {
            let adapter = LoraAdapter::init(
                LoraConfig::new(r, 2.0 * r as f64, TargetModules::AllLinear),
                &model,
                2,
            )
            .expect("an adapter for the model");
            let n: i64 = adapter
                .named_tensors()
                .iter()
                .map(|(_, t)| t.numel() as i64)
                .sum();
            (Trained::Adapter(n as u64), Some(adapter))
        }
        None => (Trained::Full, None),
    };
    let plan = MemoryPlan {
        weight_bytes: 4,
        trained: trained.0,
        micro_batch_rows: ROWS as u64,
        seq_len: (PROMPT + COMPLETION) as u64,
        completion_len: COMPLETION as u64,
        checkpointing: config.checkpointing,
        head_chunk_bytes: settings.head_chunk_bytes as u64,
        inference_bytes: 0,
        reference: false,
    };
    let est = estimate(model.config(), &plan);
    let with_copy = estimate(
        model.config(),
        &MemoryPlan {
            inference_bytes: 2,
            ..plan
        },
    );
    let mut learner = match trained.1 {
        Some(adapter) => PgLearner::with_adapter(settings, model, None, adapter),
        None => PgLearner::new(settings, model, None),
    }
    .expect("a learner");
    let groups = batch(vocab);
    let before = rss_bytes().unwrap_or(0);
    let cpu_before = cpu_times();
    let started = Instant::now();
    let metrics = learner.train_step(&groups).expect("one step");
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu_times();
    let peak = metrics["memory/peak_rss_gb"];
    let allocator = if tuned {
        "glibc malloc tuned (--tuned: memory::tune_allocator)"
    } else {
        "glibc malloc as it comes"
    };
    println!("   allocator: {allocator}");
    println!("   estimate: {est}");
    println!(
        "   (with a bf16 inference copy the estimate is {:.2} GB)",
        gb(with_copy.total())
    );
    println!(
        "   measured: resident before the step {:.2} GB, step peak {peak:.2} GB \
         (estimate {:.2} GB, measured/estimate {:.2}); step {secs:.0} s, loss {:.4}",
        gb(before),
        gb(est.total()),
        peak / gb(est.total()),
        metrics["loss/total"],
    );
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        println!(
            "   cpu: user {:.0} s, system {:.1} s, minor page faults {:.2}M (the allocator's cost shows \
             in system time and faults; wall time moves with the machine's other load)",
            b.0 - a.0,
            b.1 - a.1,
            (b.2 - a.2) / 1e6
        );
    }
}

/// This process's user and system CPU seconds and minor page faults (`/proc/self/stat`).
fn cpu_times() -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends with ')'), from the state (field 3): minflt is
    // field 10, utime 14, stime 15 (clock ticks of 1/100 s).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let tick = 100.0;
    Some((f[10] / tick, f[11] / tick, f[6]))
}

/// 16 rows of random tokens in two groups of eight, random rewards, `mu` near a uniform policy's.
fn batch(vocab: i64) -> Vec<Group> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let uniform = -(vocab as f32).ln();
    let samples: Vec<Sample> = (0..ROWS)
        .map(|_| Sample {
            prompt_ids: (0..PROMPT)
                .map(|_| (next() % vocab as u64) as i64)
                .collect(),
            completion_ids: (0..COMPLETION)
                .map(|_| (next() % vocab as u64) as i64)
                .collect(),
            loss_mask: vec![true; COMPLETION],
            mu: (0..COMPLETION)
                .map(|_| uniform + (next() % 1000) as f32 / 1000.0 - 0.5)
                .collect(),
            reward: (next() % 2) as f64,
            policy_version: 0,
        })
        .collect();
    samples
        .chunks(ROWS / 2)
        .map(|c| Group {
            samples: c.to_vec(),
        })
        .collect()
}
