//! All-reduce throughput of the binding against Python's `torch.distributed` with Gloo, from one run:
//! two ranks on this machine (loopback), f32 tensors of 1 KB, 1 MB and 64 MB, the same number of
//! timed calls on both sides after 3 warm-up calls, one intra-op thread per rank, the best of three
//! alternating rounds per side. Prints the CPU's
//! flags, each side's seconds per call and GB/s (tensor bytes / time, torch's "algbw"), and the ratio.
//!
//! `cargo bench -p alp-dist --bench allreduce`; the Python side runs with `.venv/bin/python` (or
//! `ALP_PYTHON`).
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Instant;

use alp_dist::{Backend, ProcessGroup, Rendezvous};
use tch::{Kind, Tensor};

/// (bytes, timed calls).
const RUNS: [(usize, usize); 3] = [(1 << 10, 2000), (1 << 20, 100), (64 << 20, 5)];
const ROLE: &str = "ALP_DIST_BENCH_RANK";
/// Rounds of each side, alternating; each size's best round is reported.
const ROUNDS: usize = 3;

/// The faster of two rounds' (size, seconds per call), size by size.
fn best(a: Vec<(usize, f64)>, b: Vec<(usize, f64)>) -> Vec<(usize, f64)> {
    if a.is_empty() {
        return b;
    }
    a.into_iter()
        .zip(b)
        .map(|((s, x), (_, y))| (s, x.min(y)))
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One rank: rank 0 prints `SIZE SECONDS_PER_CALL` per run.
fn rank_main() {
    tch::set_num_threads(1);
    let group = ProcessGroup::new(Rendezvous::from_env().unwrap(), Backend::Gloo).unwrap();
    for (size, n) in RUNS {
        let t = Tensor::ones([(size / 4) as i64], (Kind::Float, tch::Device::Cpu));
        let one = std::slice::from_ref(&t);
        for _ in 0..3 {
            group.all_reduce_sum(one).unwrap();
        }
        group.barrier().unwrap();
        let start = Instant::now();
        for _ in 0..n {
            group.all_reduce_sum(one).unwrap();
        }
        let per_call = start.elapsed().as_secs_f64() / n as f64;
        if group.rank() == 0 {
            println!("{size} {per_call}");
        }
    }
}

/// Starts two ranks of `program args` with torchrun's variables and returns rank 0's
/// (size, seconds per call) lines.
fn two_ranks(program: &str, args: &[String], role: bool) -> Vec<(usize, f64)> {
    let port = free_port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("GLOO_SOCKET_IFNAME", "lo")
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped());
            if role {
                cmd.env(ROLE, "1");
            }
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outputs {
        assert!(o.status.success(), "{program} failed: {}", o.status);
    }
    String::from_utf8_lossy(&outputs[0].stdout)
        .lines()
        .filter_map(|l| {
            let (size, secs) = l.split_once(' ')?;
            Some((size.parse().ok()?, secs.parse().ok()?))
        })
        .collect()
}

fn cpu_flags() -> String {
    let out = Command::new("lscpu")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let text = out.unwrap_or_default();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .map(|l| l[key.len()..].trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "cpu: {} ({} CPUs)\nflags: {}",
        line("Model name:"),
        line("CPU(s):"),
        line("Flags:")
    )
}

fn main() {
    if std::env::var(ROLE).is_ok() {
        rank_main();
        return;
    }
    println!("{}", cpu_flags());
    let runs: Vec<String> = RUNS.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    let exe = std::env::current_exe().unwrap().display().to_string();
    let python = std::env::var("ALP_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/allreduce_torch.py").to_string();
    let mut args = vec![script];
    args.extend(runs.iter().cloned());
    // Alternating rounds, best of each: the machine is shared, so load shifts between rounds.
    let (mut ours, mut torch) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours = best(ours, two_ranks(&exe, &runs, true));
        torch = best(torch, two_ranks(&python, &args, false));
    }
    assert_eq!(ours.len(), RUNS.len(), "binding ranks printed {ours:?}");
    assert_eq!(torch.len(), RUNS.len(), "python ranks printed {torch:?}");
    println!("all-reduce SUM, f32, 2 ranks on this machine (Gloo over loopback), 1 thread each, best of {ROUNDS} alternating rounds");
    println!(
        "{:>10} {:>7} {:>14} {:>14} {:>12} {:>12} {:>7}",
        "bytes", "calls", "binding s/call", "torch s/call", "binding GB/s", "torch GB/s", "ratio"
    );
    for (((size, n), (_, a)), (_, b)) in RUNS.iter().zip(&ours).zip(&torch) {
        let gbs = |secs: f64| *size as f64 / secs / 1e9;
        println!(
            "{size:>10} {n:>7} {a:>14.3e} {b:>14.3e} {:>12.3} {:>12.3} {:>7.2}",
            gbs(*a),
            gbs(*b),
            gbs(*a) / gbs(*b)
        );
    }
}
