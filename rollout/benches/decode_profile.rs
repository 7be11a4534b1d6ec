//! Where a decode step's time goes: the generation benchmark's model (8x512, GQA 8/2) at batch 16
//! with a 64-token prompt in the cache, each part timed alone over many steps (median of 5 rounds):
//! the decoder layers (`forward_cached` of one token), the LM head, the sampler, one projection as a
//! plain matmul (the machine's GEMM speed at this shape), and a whole engine step for comparison.
//!
//!     cargo bench -p alp-rollout --bench decode_profile
//!
//! Environment: BENCH_THREADS (2), BENCH_BATCH (16), BENCH_VOCAB (32000), BENCH_DTYPE (f32),
//! BENCH_BF16 (auto), BENCH_MODEL (8x512, or tiny: configs/math.toml's model). Not a test: it asserts nothing about speed.
use std::time::Instant;

use alp_policy::{few_rows_gemm, Bf16Compute, CausalLM, LoadOptions, NoHooks};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, RowSampler, SamplingParams};
use alp_test_support::bench::{cpu_flags, env_or, libtorch_isa_caps};
use alp_test_support::tiny_model::TinyModel;
use tch::{Device, Kind, Tensor};

fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() * 1e3 / reps as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

fn main() {
    let threads: i32 = env_or("BENCH_THREADS", 2);
    let batch: i64 = env_or("BENCH_BATCH", 16);
    let vocab: i64 = env_or("BENCH_VOCAB", 32000);
    let dtype: String = env_or("BENCH_DTYPE", "f32".to_string());
    let bf16: Bf16Compute = env_or("BENCH_BF16", Bf16Compute::Auto);
    tch::set_num_threads(threads);
    let model_name: String = env_or("BENCH_MODEL", "8x512".to_string());
    let dir = tempfile::tempdir().unwrap();
    let shape = match model_name.as_str() {
        "tiny" => TinyModel::math_default(),
        "8x512" => TinyModel::qwen2_bench(vocab, 512, 1408, 8, 8, 2),
        other => panic!("BENCH_MODEL: unknown model {other:?} (8x512, tiny)"),
    };
    let cfg = shape.config();
    let (vocab, hidden, intermediate, layers) = (
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
    );
    shape.save(dir.path(), 0);
    let kind = alp_policy::parse_kind(&dtype).unwrap();
    let model = CausalLM::load(
        dir.path(),
        &LoadOptions {
            kind,
            bf16,
            ..Default::default()
        },
    )
    .unwrap();
    println!(
        "decode profile: {layers}x{hidden} vocab {vocab} batch {batch}, {dtype} computed as {}, {threads} threads, \
         few-rows kernel {:?}; cpu flags: {}{}",
        model.precision().describe(),
        few_rows_gemm::isa(),
        cpu_flags(),
        libtorch_isa_caps()
    );
    let _guard = tch::no_grad_guard();
    let _kernel = few_rows_gemm::enable();
    let prompt = 64;
    let ids = Tensor::randint(vocab, [batch, prompt], (Kind::Int64, Device::Cpu));
    let valid = Tensor::ones([batch, prompt], (Kind::Bool, Device::Cpu));
    let capacity = prompt + 200;
    let mut cache = model.new_cache(batch, capacity);
    let key_valid = Tensor::zeros([batch, capacity], (Kind::Bool, Device::Cpu));
    let _ = key_valid.narrow(1, 0, prompt + 1).fill_(1);
    let h = model.forward_cached(
        &ids,
        &alp_policy::positions_from_mask(&valid),
        &valid,
        &mut cache,
        &NoHooks,
    );
    let last = h.narrow(1, prompt - 1, 1);
    let token = Tensor::randint(vocab, [batch, 1], (Kind::Int64, Device::Cpu));
    let pos = Tensor::full([batch, 1], prompt, (Kind::Int64, Device::Cpu));
    let columns = vec![prompt; batch as usize];
    let layers = time_ms(20, || {
        cache.set_row_columns(&columns);
        let _ = model.forward_cached(
            &token,
            &pos,
            &key_valid.narrow(1, 0, prompt + 1),
            &mut cache,
            &NoHooks,
        );
    });
    let head = time_ms(20, || {
        let _ = model.logits(&last, &NoHooks);
    });
    // libtorch's own product for comparison (the head goes through the few-rows kernel where that
    // applies), and the oneDNN copy that the engine multiplies by when it decodes more rows than the
    // kernel takes.
    let head_libtorch = time_ms(20, || {
        let _ = last.linear(model.lm_head_weight(), None::<Tensor>);
    });
    let onednn = (batch > few_rows_gemm::MAX_ROWS)
        .then(|| model.onednn_lm_head())
        .flatten();
    let head_onednn = onednn.as_ref().map(|copy| {
        time_ms(20, || {
            let _ = model.logits_with(&last, &NoHooks, Some(copy));
        })
    });
    let logits = model.logits(&last, &NoHooks).squeeze_dim(1);
    let params = SamplingParams::default();
    let rows: Vec<usize> = (0..batch as usize).collect();
    let mut sampler = RowSampler::new(&params, &rows);
    let sample = time_ms(20, || {
        let _ = sampler.sample(&logits, &params);
    });
    let x = Tensor::randn([batch, hidden], (model.kind(), Device::Cpu));
    let w = Tensor::randn([intermediate, hidden], (model.kind(), Device::Cpu));
    let gemm = time_ms(200, || {
        let _ = x.matmul(&w.tr());
    });
    let gflops = 2.0 * (batch * hidden * intermediate) as f64 / (gemm * 1e-3) / 1e9;
    let mut engine = LocalEngine::new(model, batch as usize);
    let requests: Vec<_> = (0..batch)
        .map(|r| GenerationRequest::new((0..prompt).map(|t| (r * 31 + t * 7) % vocab).collect()))
        .collect();
    let gen = |n| SamplingParams {
        max_new_tokens: n,
        ..SamplingParams::default()
    };
    let short = time_ms(1, || {
        engine.generate(&requests, &gen(8)).unwrap();
    });
    let long = time_ms(1, || {
        engine.generate(&requests, &gen(72)).unwrap();
    });
    let step = (long - short) / 64.0;
    let prefill = time_ms(1, || {
        engine.generate(&requests, &gen(1)).unwrap();
    });
    // The engine multiplies by the oneDNN copy where it makes one.
    let head_note = match head_onednn {
        Some(fast) => format!("{fast:.2} (oneDNN copy; {head_libtorch:.2} through libtorch)"),
        None => format!("{head:.2} ({head_libtorch:.2} through libtorch)"),
    };
    let head = head_onednn.unwrap_or(head);
    println!(
        "per decode step (ms): decoder layers {layers:.2} | LM head {head_note} | sampling {sample:.2} | \
         sum {:.2} | whole engine step {step:.2} (other: {:.2}) | one [{batch}x{hidden}]x[{hidden}x{intermediate}] matmul \
         {gemm:.3} ms = {gflops:.1} GFLOP/s | a call generating 1 token ({batch} x {prompt}-token prefill) \
         {prefill:.1} ms",
        layers + head + sample,
        step - layers - head - sample
    );
}
