//! Learner speed on the real SmolLM2-135M shape against PyTorch eager (issue 27, acceptance 3):
//! tokens/s of our learner step and of transformers' (PEFT's with LoRA), same loss, batch and thread
//! count, side by side, with and without activation checkpointing on both sides.
//!
//! ```text
//! cargo bench -p alp-learner --bench real_step
//! BENCH_CONFIGS=full,lora cargo bench -p alp-learner --bench real_step   # some of them
//! ```
//!
//! The model is `~/.cache/alp-rl/models/smollm2-135m-instruct` (`scripts/get-smollm2.sh`) loaded in f32
//! on both sides; when that directory is missing, a random model of the same shape (Llama, 30 layers,
//! hidden 576, 9/3 heads, MLP 1536, vocabulary 49,152, tied embeddings) is written to a temporary
//! directory and used by both, and the header says so. The batch: BENCH_ROWS (16) rows of BENCH_PROMPT
//! (32) prompt and BENCH_COMPLETION (224) completion tokens, random, one micro-batch (16 x 256 tokens,
//! the micro-batch of acceptance 2), groups of 8 with rewards 0/1.
//!
//! Configurations (BENCH_CONFIGS, default all): `full` (every weight trained), `ckpt` (the same with
//! activation checkpointing per decoder layer: `learner.gradient_checkpointing` here,
//! `gradient_checkpointing_enable()` in transformers), `lora` (a rank-16 adapter, alpha 32, on every
//! projection: `PgLearner::with_adapter` here, PEFT there), `lora-ckpt`. Both sides run the bypass step
//! (one training forward, loss against the sampling log-probs, backward, clip, AdamW): the reference is
//! `real_step_ref.py`, a child process that stays loaded. Each side runs one warm-up step, then
//! BENCH_ROUNDS (2) rounds of BENCH_STEPS (1) steps, the two sides taking turns, each keeping its
//! fastest round. With BENCH_ALP=1 (the default) our ALP step (the `lp_old` forward that also gives the
//! mismatch metrics, the perturbed training forward and the backward) is timed too, in the same rounds.
//! BENCH_REFERENCE=0 runs our side alone (to profile it: `ALP_MEMORY_TRACE=1` prints each phase's
//! time and memory).
//! Not a test: it asserts nothing about speed.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use alp_learner::memory::release_free_memory;
use alp_learner::{
    group_advantages, AdvantageKind, CorrectionKind, Group, LearnerSettings, PgLearner, Sample,
};
use alp_policy::lora::TargetModules;
use alp_policy::{CausalLM, LoadOptions, LoraAdapter, LoraConfig};
use alp_test_support::bench::{cpu_flags, env_or, libtorch_isa_caps};
use alp_test_support::oracle;
use alp_test_support::tiny_model::{smollm2_cache_dir, smollm2_or_random};
use serde_json::{json, Value};

const GROUP: usize = 8;
const LORA_RANK: i64 = 16;

/// One configuration: its name, whether it checkpoints, whether it trains a LoRA adapter.
struct Config {
    name: &'static str,
    checkpointing: bool,
    lora: bool,
}

const CONFIGS: [Config; 4] = [
    Config {
        name: "full",
        checkpointing: false,
        lora: false,
    },
    Config {
        name: "ckpt",
        checkpointing: true,
        lora: false,
    },
    Config {
        name: "lora",
        checkpointing: false,
        lora: true,
    },
    Config {
        name: "lora-ckpt",
        checkpointing: true,
        lora: true,
    },
];

/// The sizes and settings of one run.
struct Run {
    threads: i32,
    rows: usize,
    prompt: usize,
    completion: usize,
    rounds: usize,
    steps: usize,
    alp: bool,
    /// Whether the PyTorch reference runs (BENCH_REFERENCE=0: ours alone, e.g. under a profiler).
    reference: bool,
}

impl Run {
    fn from_env() -> Self {
        Run {
            threads: env_or("BENCH_THREADS", 2),
            rows: env_or("BENCH_ROWS", 16),
            prompt: env_or("BENCH_PROMPT", 32),
            completion: env_or("BENCH_COMPLETION", 224),
            rounds: env_or("BENCH_ROUNDS", 2),
            steps: env_or("BENCH_STEPS", 1),
            alp: env_or("BENCH_ALP", 1) == 1,
            reference: env_or("BENCH_REFERENCE", 1) == 1,
        }
    }

    fn tokens_per_round(&self) -> f64 {
        (self.rows * (self.prompt + self.completion) * self.steps) as f64
    }
}

/// The real model's directory, or a random model of its shape written into `tmp`; and which.
fn model_dir(tmp: &Path) -> (PathBuf, String) {
    let (dir, real) = smollm2_or_random(tmp);
    let what = if real {
        format!("SmolLM2-135M-Instruct ({})", dir.display())
    } else {
        format!(
            "a random model of SmolLM2-135M's shape ({} is missing: scripts/get-smollm2.sh)",
            smollm2_cache_dir().display()
        )
    };
    (dir, what)
}

/// Random rows in groups of [`GROUP`], rewards alternating within a group, `mu` near a uniform
/// policy's log-prob; and the same batch as JSON for the reference.
fn batch(run: &Run, vocab: i64) -> (Vec<Group>, Value) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let uniform = -(vocab as f32).ln();
    let samples: Vec<Sample> = (0..run.rows)
        .map(|r| Sample {
            prompt_ids: (0..run.prompt)
                .map(|_| (next() % vocab as u64) as i64)
                .collect(),
            completion_ids: (0..run.completion)
                .map(|_| (next() % vocab as u64) as i64)
                .collect(),
            loss_mask: vec![true; run.completion],
            mu: (0..run.completion)
                .map(|_| uniform + (next() % 1000) as f32 / 1000.0 - 0.5)
                .collect(),
            reward: ((r + r / GROUP) % 2) as f64,
            policy_version: 0,
        })
        .collect();
    let groups: Vec<Group> = samples
        .chunks(GROUP)
        .map(|c| Group {
            samples: c.to_vec(),
        })
        .collect();
    let advantages: Vec<f64> = groups
        .iter()
        .flat_map(|g| {
            group_advantages(
                &g.samples.iter().map(|s| s.reward).collect::<Vec<_>>(),
                AdvantageKind::Grpo,
            )
        })
        .collect();
    let json = json!({
        "prompt_ids": samples.iter().map(|s| &s.prompt_ids).collect::<Vec<_>>(),
        "completion_ids": samples.iter().map(|s| &s.completion_ids).collect::<Vec<_>>(),
        "mu": samples.iter().map(|s| &s.mu).collect::<Vec<_>>(),
        "advantages": advantages,
    });
    (groups, json)
}

/// Our learner for `config` with `kind`, after one warm-up step.
fn learner(
    dir: &Path,
    run: &Run,
    config: &Config,
    kind: CorrectionKind,
    groups: &[Group],
) -> PgLearner<CausalLM> {
    let model = CausalLM::load(dir, &LoadOptions::default()).expect("the model loads");
    let mut s = LearnerSettings::default();
    s.correction.kind = kind;
    s.micro_batch_size = run.rows;
    s.gradient_checkpointing = config.checkpointing;
    s.loss.dual_clip = Some(3.0);
    s.max_grad_norm = 1.0;
    s.optimizer.lr = 1e-6;
    s.alp.sigma0 = 1e-2;
    let mut learner = if config.lora {
        let lora = LoraConfig::new(LORA_RANK, 2.0 * LORA_RANK as f64, TargetModules::AllLinear);
        let adapter = LoraAdapter::init(lora, &model, 1).expect("an adapter");
        PgLearner::with_adapter(s, model, None, adapter)
    } else {
        PgLearner::new(s, model, None)
    }
    .expect("a learner");
    let m = learner.train_step(groups).expect("the warm-up step");
    assert!(m["loss/total"].is_finite());
    release_free_memory();
    learner
}

/// Wall and CPU time of one side's round.
#[derive(Clone, Copy)]
struct Timed {
    wall: f64,
    cpu: f64,
    /// Our step's `memory/peak_rss_gb` (NaN for the reference).
    peak_gb: f64,
}

/// User + system CPU seconds of this process, all threads (`/proc/self/stat`, ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    (f.get(11).copied().unwrap_or(f64::NAN) + f.get(12).copied().unwrap_or(f64::NAN)) / 100.0
}

/// `steps` steps of `learner`.
fn time_ours(learner: &mut PgLearner<CausalLM>, groups: &[Group], steps: usize) -> Timed {
    let cpu = cpu_seconds();
    let start = Instant::now();
    let mut peak_gb = f64::NAN;
    for _ in 0..steps {
        let m = learner.train_step(groups).expect("a step");
        assert!(m["loss/total"].is_finite());
        peak_gb = peak_gb.max(m["memory/peak_rss_gb"]);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    release_free_memory();
    Timed { wall, cpu, peak_gb }
}

/// The reference's child process, loaded and warmed up.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    fn start(dir: &Path, batch: &Path, mode: &str, threads: i32) -> Self {
        let mut child = oracle::python_command()
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/real_step_ref.py"))
            .arg(dir)
            .arg(batch)
            .args([mode, &threads.to_string()])
            .env("OMP_NUM_THREADS", threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the PyTorch reference");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut reference = Reference {
            child,
            stdin,
            stdout,
        };
        let ready = reference.read();
        assert_eq!(ready["ready"], true, "the reference's first line: {ready}");
        reference
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the reference");
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("the reference printed {line:?}: {e}"))
    }

    /// `steps` reference steps.
    fn time(&mut self, steps: usize) -> Timed {
        writeln!(self.stdin, "step {steps}").expect("write to the reference");
        self.stdin.flush().expect("flush");
        let v = self.read();
        Timed {
            wall: v["seconds"].as_f64().expect("seconds"),
            cpu: v["cpu_seconds"].as_f64().expect("cpu_seconds"),
            peak_gb: f64::NAN,
        }
    }

    fn stop(mut self) {
        let _ = writeln!(self.stdin, "quit");
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// One configuration's rounds: (reference, ours) per round, and our ALP step's fastest round.
struct Row {
    rounds: Vec<(Timed, Timed)>,
    alp: Option<Timed>,
}

impl Row {
    /// The fastest round of one side by wall time, and the least CPU time of that side.
    fn best(&self, side: fn(&(Timed, Timed)) -> Timed) -> Timed {
        let min = |f: fn(Timed) -> f64| {
            self.rounds
                .iter()
                .map(|r| f(side(r)))
                .fold(f64::NAN, f64::min)
        };
        Timed {
            wall: min(|t| t.wall),
            cpu: min(|t| t.cpu),
            peak_gb: min(|t| t.peak_gb),
        }
    }
}

fn measure(dir: &Path, batch: &Path, run: &Run, config: &Config, groups: &[Group]) -> Row {
    let mut reference = run
        .reference
        .then(|| Reference::start(dir, batch, config.name, run.threads));
    let mut ours = learner(dir, run, config, CorrectionKind::Bypass, groups);
    let rate = |secs: f64| run.tokens_per_round() / secs;
    let nan = Timed {
        wall: f64::NAN,
        cpu: f64::NAN,
        peak_gb: f64::NAN,
    };
    let mut rounds = Vec::new();
    for _ in 0..run.rounds {
        let theirs = reference.as_mut().map_or(nan, |r| r.time(run.steps));
        let mine = time_ours(&mut ours, groups, run.steps);
        println!(
            "   round: pytorch {:.1} tok/s ({:.1} CPU-s), alp-rl {:.1} tok/s ({:.1} CPU-s, peak \
             {:.2} GB): {:.2}x",
            rate(theirs.wall),
            theirs.cpu,
            rate(mine.wall),
            mine.cpu,
            mine.peak_gb,
            theirs.wall / mine.wall
        );
        rounds.push((theirs, mine));
    }
    drop(ours);
    release_free_memory();
    let alp = run.alp.then(|| {
        let mut alp = learner(dir, run, config, CorrectionKind::Alp, groups);
        let times: Vec<Timed> = (0..run.rounds)
            .map(|_| time_ours(&mut alp, groups, run.steps))
            .collect();
        let t = *times
            .iter()
            .min_by(|a, b| a.wall.total_cmp(&b.wall))
            .expect("at least one round");
        println!(
            "   alp-rl ALP step: {:.1} tok/s ({:.1} CPU-s, peak {:.2} GB)",
            rate(t.wall),
            t.cpu,
            t.peak_gb
        );
        t
    });
    if let Some(r) = reference {
        r.stop();
    }
    release_free_memory();
    Row { rounds, alp }
}

fn print_table(run: &Run, table: &[(&str, Row)]) {
    let rate = |secs: f64| run.tokens_per_round() / secs;
    println!(
        "\n| config | pytorch eager tok/s | alp-rl bypass tok/s | ratio (each round's) | \
         CPU-s per round, pytorch / alp-rl (ratio) | alp-rl ALP step tok/s |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, row) in table {
        let (theirs, ours) = (row.best(|r| r.0), row.best(|r| r.1));
        let each: Vec<String> = row
            .rounds
            .iter()
            .map(|(t, o)| format!("{:.2}", t.wall / o.wall))
            .collect();
        let alp = row
            .alp
            .map_or("-".to_string(), |a| format!("{:.1}", rate(a.wall)));
        println!(
            "| {name} | {:.1} | {:.1} | **{:.2}x** ({}) | {:.1} / {:.1} ({:.2}x) | {alp} |",
            rate(theirs.wall),
            rate(ours.wall),
            theirs.wall / ours.wall,
            each.join(", "),
            theirs.cpu,
            ours.cpu,
            theirs.cpu / ours.cpu
        );
    }
}

fn print_machine(run: &Run, what: &str) {
    println!(
        "learner step on {what}\nf32 weights, one micro-batch of {} rows x ({} prompt + {} \
         completion) tokens, {} threads, best of {} rounds of {} step(s) per side; cpu flags: {}{}",
        run.rows,
        run.prompt,
        run.completion,
        run.threads,
        run.rounds,
        run.steps,
        cpu_flags(),
        libtorch_isa_caps()
    );
    if let Ok(out) = Command::new("lscpu").output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let key = line.split(':').next().unwrap_or("").trim();
            if ["Model name", "CPU(s)", "Flags"].contains(&key) {
                println!("{}", line.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
    }
}

fn main() {
    let run = Run::from_env();
    tch::set_num_threads(run.threads);
    let names: String = env_or("BENCH_CONFIGS", "full,ckpt,lora,lora-ckpt".to_string());
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (dir, what) = model_dir(tmp.path());
    print_machine(&run, &what);
    let vocab = 49_152;
    let (groups, json) = batch(&run, vocab);
    let batch_path = tmp.path().join("batch.json");
    std::fs::write(&batch_path, json.to_string()).expect("write the batch");
    let mut table = Vec::new();
    for config in CONFIGS
        .iter()
        .filter(|c| names.split(',').any(|n| n.trim() == c.name))
    {
        println!("\n== {}", config.name);
        let row = measure(&dir, &batch_path, &run, config, &groups);
        table.push((config.name, row));
    }
    print_table(&run, &table);
}
