//! Learner step throughput (forward, backward, grad clip, AdamW, metrics) against a PyTorch eager
//! reference on the same random Qwen2-architecture checkpoint, batch, loss and thread count, and the
//! ALP step against the bypass step. Prints tokens/s and the ratios in one run:
//!
//!     cargo bench -p alp-learner --bench learner_step
//!
//! Environment: BENCH_THREADS (default 2), BENCH_STEPS (timed steps per variant, 3), BENCH_BATCH (8),
//! BENCH_PROMPT (64), BENCH_COMPLETION (64), BENCH_ROUNDS (3: every variant reports its fastest round
//! of BENCH_STEPS steps, ours taking turns), BENCH_DEVICE (cpu, or cuda: both sides on the first
//! GPU). Not a test: it asserts nothing about speed.
use std::path::Path;
use std::time::Instant;

use alp_learner::{
    group_advantages, AdvantageKind, CorrectionKind, Group, LearnerSettings, PgLearner, Sample,
};
use alp_policy::{CausalLM, LoadOptions};
use alp_test_support::bench::{self, cpu_flags, env_or, libtorch_isa_caps};
use alp_test_support::oracle;
use alp_test_support::tiny_model::TinyModel;
use serde_json::json;

const VOCAB: i64 = 8192;
const GROUP: usize = 4;

fn settings(kind: CorrectionKind, batch: usize, mismatch_every: u64) -> LearnerSettings {
    let mut s = LearnerSettings::default();
    s.correction.kind = kind;
    s.micro_batch_size = batch;
    s.mismatch_every = mismatch_every;
    s.loss.dual_clip = Some(3.0);
    s.alp.sigma0 = 1e-2;
    s
}

/// A learner on the checkpoint in `dir`, after one warm-up step.
fn warm_learner(
    dir: &Path,
    device: tch::Device,
    s: LearnerSettings,
    groups: &[Group],
) -> PgLearner<CausalLM> {
    let model = CausalLM::load(
        dir,
        &LoadOptions {
            device,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut learner = PgLearner::new(s, model, None).unwrap();
    learner.train_step(groups).unwrap();
    learner
}

/// Seconds `steps` learner steps take.
fn time_steps(learner: &mut PgLearner<CausalLM>, groups: &[Group], steps: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..steps {
        let m = learner.train_step(groups).unwrap();
        assert!(m["loss/total"].is_finite());
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let steps: usize = env_or("BENCH_STEPS", 3);
    let batch: usize = env_or("BENCH_BATCH", 8);
    let prompt: usize = env_or("BENCH_PROMPT", 64);
    let completion: usize = env_or("BENCH_COMPLETION", 64);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let device = bench::device();
    tch::set_num_threads(threads);

    let dir = tempfile::tempdir().unwrap();
    TinyModel::qwen2_bench(VOCAB, 256, 704, 4, 4, 2)
        .with("initializer_range", 0.02)
        .save(dir.path(), 0);

    // A fixed batch: groups of GROUP samples, rewards varying within each group, mu near a uniform
    // policy's log-prob so ratios are moderate.
    let samples: Vec<Sample> = (0..batch)
        .map(|r| Sample {
            prompt_ids: (0..prompt)
                .map(|t| ((r / GROUP * 7919 + t * 104_729) % VOCAB as usize) as i64)
                .collect(),
            completion_ids: (0..completion)
                .map(|t| ((r * 31 + t * 7_877) % VOCAB as usize) as i64)
                .collect(),
            loss_mask: vec![true; completion],
            mu: (0..completion)
                .map(|t| -(VOCAB as f32).ln() + 0.05 * ((r + t) % 7) as f32 - 0.15)
                .collect(),
            reward: (r % 3) as f64,
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
    let batch_path = dir.path().join("batch.json");
    let batch_json = json!({
        "prompt_ids": samples.iter().map(|s| &s.prompt_ids).collect::<Vec<_>>(),
        "completion_ids": samples.iter().map(|s| &s.completion_ids).collect::<Vec<_>>(),
        "mu": samples.iter().map(|s| &s.mu).collect::<Vec<_>>(),
        "advantages": advantages,
    });
    std::fs::write(&batch_path, batch_json.to_string()).unwrap();
    let tokens = batch * (prompt + completion);

    println!(
        "learner step benchmark: qwen2 4x256 GQA 4/2, vocab {VOCAB}, f32, batch {batch}, prompt {prompt}, \
         completion {completion} ({tokens} tokens/step), {threads} threads, {steps} timed steps, on \
         {device:?}, best of {rounds} rounds; cpu flags: {}{}",
        cpu_flags(),
        libtorch_isa_caps()
    );
    let output = oracle::run(
        oracle::python_command()
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/learner_step_ref.py"))
            .args([dir.path().to_str().unwrap(), batch_path.to_str().unwrap()])
            .arg(threads.to_string())
            .arg(steps.to_string())
            .arg(bench::device_name(device))
            .arg(rounds.to_string())
            .env("OMP_NUM_THREADS", threads.to_string()),
        "the PyTorch reference",
    );
    let reference: serde_json::Value = serde_json::from_str(output.trim()).expect("reference JSON");
    let torch = reference["tokens_per_s"].as_f64().unwrap();

    // Our three variants take turns, round after round, each keeping its fastest round, so a slow
    // spell of the machine does not land on one of them alone.
    let mut learners: Vec<PgLearner<CausalLM>> = [
        settings(CorrectionKind::Bypass, batch, 1),
        settings(CorrectionKind::Alp, batch, 1),
        settings(CorrectionKind::Alp, batch, 0),
    ]
    .into_iter()
    .map(|s| warm_learner(dir.path(), device, s, &groups))
    .collect();
    let mut best = [f64::INFINITY; 3];
    for _ in 0..rounds {
        for (k, learner) in learners.iter_mut().enumerate() {
            best[k] = best[k].min(time_steps(learner, &groups, steps));
        }
    }
    let rate = |k: usize| (tokens * steps) as f64 / best[k];
    let (bypass, alp, alp_train) = (rate(0), rate(1), rate(2));
    println!("pytorch eager (bypass)            {torch:9.1} tok/s");
    println!(
        "alp-rl bypass                      {bypass:9.1} tok/s | vs pytorch {:.2}x",
        bypass / torch
    );
    println!(
        "alp-rl alp (+ mismatch forward)    {alp:9.1} tok/s | step time vs bypass {:.2}x",
        bypass / alp
    );
    println!(
        "alp-rl alp (mismatch_every = 0)    {alp_train:9.1} tok/s | step time vs bypass {:.2}x",
        bypass / alp_train
    );
}
