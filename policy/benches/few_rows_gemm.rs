//! The few-rows kernel ([`alp_policy::few_rows_gemm`]) against libtorch's product, by row count: a
//! decoder's 56 projection weights (8 layers of a 512-wide model, GQA 8/4, MLP 1536: 101 MB, more
//! than the last-level cache, so every product streams its weight from memory as in a decode step)
//! and an LM head of 32,000 x 512 (65 MB), each multiplied by `rows` rows. libtorch's side is the
//! faster of `x W^T` and `W x^T` (MKL), and for the head also oneDNN's inner product with a copy of
//! the weight in oneDNN's layout. Prints milliseconds per pass and the ratio, fastest of 5 rounds.
//!
//!     cargo bench -p alp-policy --bench few_rows_gemm
//!
//! With `BENCH_DTYPE=bf16` (where the CPU has AVX512_BF16) both sides multiply bf16 operands: the
//! kernel's `vdpbf16ps` path against libtorch's bf16 `linear` (oneDNN), the fastest it has.
//!
//! Environment: BENCH_THREADS (2), BENCH_ROWS (1,4,8,16,32,48,64), BENCH_DTYPE (f32). Not a test: it
//! asserts nothing about speed.
use std::time::Instant;

use alp_policy::few_rows_gemm::{self, isa};
use alp_test_support::bench::{cpu_flags, env_or, libtorch_isa_caps};
use tch::{Device, Kind, Tensor};

fn best_ms(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let rows: String = env_or("BENCH_ROWS", "1,4,8,16,32,48,64".to_string());
    let dtype: String = env_or("BENCH_DTYPE", "f32".to_string());
    let kind = alp_policy::parse_kind(&dtype).expect("BENCH_DTYPE: f32 or bf16");
    let bf16 = kind == Kind::BFloat16;
    assert!(
        !bf16 || few_rows_gemm::has_bf16_dot(),
        "BENCH_DTYPE=bf16: this CPU has no AVX512_BF16, so the kernel takes no bf16 products"
    );
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();
    println!(
        "few-rows kernel ({:?}) vs libtorch, {dtype}, {threads} threads; cpu flags: {}{}",
        isa(),
        cpu_flags(),
        libtorch_isa_caps()
    );
    let f32_cpu = (Kind::Float, Device::Cpu);
    let layer: [(i64, i64); 7] = [
        (512, 512),
        (256, 512),
        (256, 512),
        (512, 512),
        (1536, 512),
        (1536, 512),
        (512, 1536),
    ];
    let decoder: Vec<Tensor> = (0..8)
        .flat_map(|_| {
            layer
                .iter()
                .map(|&(n, k)| Tensor::randn([n, k], f32_cpu).to_kind(kind))
        })
        .collect();
    let head = Tensor::randn([32000, 512], f32_cpu).to_kind(kind);
    let head_onednn = (!bf16).then(|| head.to_mkldnn());
    for m in rows
        .split(',')
        .map(|r| r.trim().parse::<i64>().expect("BENCH_ROWS: integers"))
    {
        if bf16 && m > few_rows_gemm::MAX_BF16_ROWS {
            println!(
                "rows {m:>3}: above the bf16 kernel's {} rows (libtorch multiplies them)",
                few_rows_gemm::MAX_BF16_ROWS
            );
            continue;
        }
        let x512 = Tensor::randn([m, 512], f32_cpu).to_kind(kind);
        let x1536 = Tensor::randn([m, 1536], f32_cpu).to_kind(kind);
        let input = |w: &Tensor| if w.size()[1] == 512 { &x512 } else { &x1536 };
        let kernel = |x: &Tensor, w: &Tensor| {
            few_rows_gemm::linear(x, w).expect("the kernel applies at these shapes")
        };
        let ours = best_ms(|| {
            for w in &decoder {
                let _ = kernel(input(w), w);
            }
        });
        let torch_xw = best_ms(|| {
            for w in &decoder {
                let _ = input(w).linear(w, None::<Tensor>);
            }
        });
        let torch_wx = best_ms(|| {
            for w in &decoder {
                let _ = w.mm(&input(w).tr()).tr().contiguous();
            }
        });
        let torch = torch_xw.min(torch_wx);
        let head_ours = best_ms(|| {
            let _ = kernel(&x512, &head);
        });
        let head_mkl = best_ms(|| {
            let _ = head.mm(&x512.tr()).tr().contiguous();
        });
        let head_dnn = match &head_onednn {
            Some(copy) => best_ms(|| {
                let _ = x512
                    .to_mkldnn()
                    .mkldnn_linear(copy, None::<Tensor>)
                    .to_dense(None, false);
            }),
            None => f64::INFINITY,
        };
        let head_torch = head_mkl.min(head_dnn);
        println!(
            "rows {m:>3}: decoder ours {ours:6.2} ms | libtorch {torch:6.2} ms (x W^T {torch_xw:.2}, \
             W x^T {torch_wx:.2}) | {:.2}x   head ours {head_ours:6.2} ms | libtorch \
             {head_torch:6.2} ms (MKL {head_mkl:.2}, oneDNN {head_dnn:.2}) | {:.2}x",
            torch / ours,
            head_torch / head_ours
        );
    }
}
