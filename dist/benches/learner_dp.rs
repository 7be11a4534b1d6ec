//! Learner steps per second with data parallelism on this machine: two ranks of one thread each,
//! each on half of the batch and summing through `DistSync` (Gloo), against one process with two
//! threads on the whole batch: the same global batch, the same update. The model is a small random
//! Qwen2 (4 layers, hidden 256, vocabulary 4096; about 5 M parameters, 21 MB of f32 gradients per
//! step), the batch 8 prompts of 16 tokens with 4 completions of 24 tokens each. Prints seconds per
//! step of each side (best of alternating rounds: the machine is shared) and the ratio, with one
//! process on one thread as a reference (what two threads gain, or lose to a loaded machine).
//!
//! `cargo bench -p alp-dist --bench learner_dp`.
#[path = "../../learner/tests/common/mod.rs"]
mod toy;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use alp_dist::{Backend, DistSync, ProcessGroup, Rendezvous};
use alp_learner::{Group, LearnerSettings, PgLearner};
use alp_policy::CausalLM;
use alp_test_support::tiny_model::TinyModel;

const ROLE: &str = "ALP_DIST_BENCH_ROLE";
const STEPS: usize = 3;
const ROUNDS: usize = 2;

fn model() -> CausalLM {
    TinyModel::qwen2_bench(4096, 256, 768, 4, 4, 2).random(11)
}

fn batch(model: &CausalLM) -> Vec<Group> {
    let mut rng = toy::Rng::new(12);
    let prompts = toy::random_prompts(8, 16, 4096, &mut rng);
    toy::sample_groups(model, &prompts, 4, 24, 0.0, &mut rng, |c| {
        c.iter().filter(|&&t| t % 2 == 0).count() as f64
    })
}

fn settings() -> LearnerSettings {
    LearnerSettings {
        micro_batch_size: 8,
        ..LearnerSettings::default()
    }
}

/// One warm-up step, then `STEPS` timed; prints seconds per step.
fn measure(data: &[Group], sync: Option<DistSync>) -> f64 {
    let mut learner = PgLearner::new(settings(), model(), None).unwrap();
    if let Some(sync) = sync {
        learner = learner.with_gradient_sync(Box::new(sync));
    }
    learner.train_step(data).unwrap();
    let start = Instant::now();
    for _ in 0..STEPS {
        learner.train_step(data).unwrap();
    }
    start.elapsed().as_secs_f64() / STEPS as f64
}

fn role(which: &str) {
    if let Some(threads) = which.strip_prefix("single") {
        tch::set_num_threads(threads.parse().unwrap());
        let data = batch(&model());
        println!("{}", measure(&data, None));
        return;
    }
    tch::set_num_threads(1);
    let group =
        Arc::new(ProcessGroup::new(Rendezvous::from_env().unwrap(), Backend::Gloo).unwrap());
    let data = batch(&model());
    let half = data.len() / 2;
    let mine = if group.rank() == 0 {
        &data[..half]
    } else {
        &data[half..]
    };
    group.barrier().unwrap();
    let secs = measure(mine, Some(DistSync::new(group.clone())));
    if group.rank() == 0 {
        println!("{secs}");
    }
}

/// Runs `n` processes of this bench in role `which` and returns rank 0's seconds per step.
fn run(which: &str, n: usize) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let children: Vec<_> = (0..n)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .env(ROLE, which)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{which} failed: {}", o.status);
    }
    String::from_utf8_lossy(&outs[0].stdout)
        .trim()
        .parse()
        .unwrap()
}

fn main() {
    if let Ok(which) = std::env::var(ROLE) {
        role(&which);
        return;
    }
    let (mut single, mut one_thread, mut ranks) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..ROUNDS {
        single = single.min(run("single2", 1));
        ranks = ranks.min(run("rank", 2));
        one_thread = one_thread.min(run("single1", 1));
    }
    println!("PgLearner step, small Qwen2 (~5 M parameters), 32 samples of 24 tokens, best of {ROUNDS} rounds");
    println!("{:>34} {:>10} {:>8}", "", "s/step", "steps/s");
    println!(
        "{:>34} {single:>10.3} {:>8.3}",
        "1 process x 2 threads",
        1.0 / single
    );
    println!(
        "{:>34} {ranks:>10.3} {:>8.3}",
        "2 ranks x 1 thread (Gloo, DistSync)",
        1.0 / ranks
    );
    println!(
        "{:>34} {one_thread:>10.3} {:>8.3}",
        "1 process x 1 thread (reference)",
        1.0 / one_thread
    );
    println!(
        "ratio (2 ranks / 1 process, steps/s): {:.2}",
        single / ranks
    );
}
