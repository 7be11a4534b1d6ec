//! ALP's noise generator against libtorch's own `randn` on the same shapes and thread count, in one
//! run (nanoseconds per element and the ratio), for the fused CPU path and the tensor-op path:
//!
//!     cargo bench -p alp-learner --bench noise
//!
//! Environment: BENCH_THREADS (default 2), BENCH_REPS (20). A `[8, 128, 512]` tensor is one layer's
//! hidden state of a micro-batch of the learner benchmark. Not a test: it asserts nothing about speed.
use std::time::Instant;

use alp_learner::noise::{standard_normal, standard_normal_tensor_ops, NoiseKey};
use alp_test_support::bench::env_or;
use tch::{Device, Kind, Tensor};

fn time(reps: usize, mut f: impl FnMut(u64) -> Tensor) -> f64 {
    let _ = f(0);
    let start = Instant::now();
    for r in 0..reps {
        let t = f(r as u64 + 1);
        assert_eq!(t.kind(), Kind::Float);
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let reps: usize = env_or("BENCH_REPS", 20);
    tch::set_num_threads(threads);
    let flags = alp_test_support::bench::cpu_flags();
    println!("threads {threads}, reps {reps}, cpu flags: {flags}");
    for shape in [[8i64, 128, 512], [4, 256, 896]] {
        let numel = shape.iter().product::<i64>() as f64;
        let key = |r: u64| NoiseKey {
            seed: 0,
            step: r,
            forward: 0,
            slot: 1,
        };
        let randn = time(reps, |_| Tensor::randn(shape, (Kind::Float, Device::Cpu)));
        let fused = time(reps, |r| standard_normal(&shape, key(r), Device::Cpu));
        let ops = time(reps, |r| {
            standard_normal_tensor_ops(&shape, key(r), Device::Cpu)
        });
        let ns = |s: f64| s * 1e9 / numel;
        println!(
            "{shape:?}: randn {:.2} ns/elem | fused {:.2} ns/elem ({:.2}x randn) | tensor ops {:.2} ns/elem ({:.2}x randn)",
            ns(randn),
            ns(fused),
            fused / randn,
            ns(ops),
            ops / randn
        );
    }
}
