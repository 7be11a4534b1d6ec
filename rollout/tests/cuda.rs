//! CUDA parity: the model, the noise and the engine on a GPU against the same code on the CPU, whose
//! forward the transformers parity tests pin to HF. They need a CUDA device, so they are ignored by
//! `cargo test`; `scripts/gpu-check.sh` runs them (`cargo test -p alp-rollout --test cuda --
//! --ignored`), and each one fails, rather than passes, when no GPU is visible.
use alp_policy::noise::{standard_normal, standard_normal_tensor_ops, NoiseKey};
use alp_policy::{Bf16Compute, CausalLM, LoadOptions, NoHooks};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams};
use alp_test_support::tiny_model::TinyModel;
use tch::{Device, Kind, Tensor};

fn cuda() -> Device {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device is visible to libtorch: these tests are for a GPU machine \
         (scripts/gpu-check.sh)"
    );
    Device::Cuda(0)
}

fn load(dir: &std::path::Path, kind: Kind, device: Device) -> CausalLM {
    CausalLM::load(
        dir,
        &LoadOptions {
            kind,
            device,
            bf16: Bf16Compute::Native,
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from(
        (a.to_device(Device::Cpu).to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max(),
    )
    .unwrap()
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn forward_on_cuda_equals_the_cpu_forward() {
    let gpu = cuda();
    for arch in ["qwen2", "qwen3", "llama"] {
        let dir = tempfile::tempdir().unwrap();
        TinyModel::new(arch)
            .with("initializer_range", 0.3)
            .save(dir.path(), 5);
        let ids = Tensor::randint(64, [3, 20], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([3, 20], (Kind::Int64, Device::Cpu));
        let _ = mask.narrow(1, 0, 4).get(1).fill_(0);
        let _guard = tch::no_grad_guard();
        let cpu = load(dir.path(), Kind::Float, Device::Cpu).forward(&ids, Some(&mask), &NoHooks);
        let on_gpu = load(dir.path(), Kind::Float, gpu).forward(
            &ids.to_device(gpu),
            Some(&mask.to_device(gpu)),
            &NoHooks,
        );
        let diff = max_abs_diff(&on_gpu, &cpu);
        println!("{arch}: f32 logits, CUDA vs CPU, max |diff| {diff:.2e}");
        assert!(diff < 1e-4, "{arch}: f32 CUDA logits differ by {diff}");
        // bf16 on the GPU: within bf16 rounding of the f32 model.
        let lp = cpu.log_softmax(-1, Kind::Float);
        let lp_bf16 = load(dir.path(), Kind::BFloat16, gpu)
            .forward(&ids.to_device(gpu), Some(&mask.to_device(gpu)), &NoHooks)
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        let mean = f64::try_from(
            (lp_bf16.to_device(Device::Cpu) - &lp)
                .abs()
                .mean(Kind::Double),
        )
        .unwrap();
        println!("{arch}: bf16 CUDA log-probs vs f32 CPU, mean |diff| {mean:.2e}");
        assert!(
            mean < 5e-2,
            "{arch}: bf16 CUDA log-probs differ by {mean} on average"
        );
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn noise_on_cuda_equals_the_cpu_noise() {
    let gpu = cuda();
    let key = NoiseKey {
        seed: 7,
        step: 3,
        forward: 1,
        slot: 2,
    };
    let shape = [4, 33, 96];
    let cpu_fused = standard_normal(&shape, key, Device::Cpu);
    let cpu_ops = standard_normal_tensor_ops(&shape, key, Device::Cpu);
    let on_gpu = standard_normal(&shape, key, gpu);
    let vs_ops = max_abs_diff(&on_gpu, &cpu_ops);
    let vs_fused = max_abs_diff(&on_gpu, &cpu_fused);
    println!("noise: CUDA vs CPU tensor ops {vs_ops:.2e}, vs CPU fused loop {vs_fused:.2e}");
    assert!(vs_ops < 1e-5 && vs_fused < 1e-4, "{vs_ops} {vs_fused}");
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it"]
fn engine_on_cuda_generates_what_the_cpu_engine_does() {
    let gpu = cuda();
    let dir = tempfile::tempdir().unwrap();
    TinyModel::new("qwen2")
        .with("initializer_range", 0.3)
        .save(dir.path(), 11);
    let requests: Vec<GenerationRequest> = (0..6)
        .map(|r| {
            GenerationRequest::new((0..3 + r).map(|t| ((t * 13 + r * 7) % 64) as i64).collect())
        })
        .collect();
    let greedy = SamplingParams {
        greedy: true,
        max_new_tokens: 12,
        ..SamplingParams::default()
    };
    let mut cpu = LocalEngine::new(load(dir.path(), Kind::Float, Device::Cpu), 4);
    let mut on_gpu = LocalEngine::new(load(dir.path(), Kind::Float, gpu), 4);
    let a = cpu.generate(&requests, &greedy).unwrap();
    let b = on_gpu.generate(&requests, &greedy).unwrap();
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(
            a.completion_ids, b.completion_ids,
            "request {i}: greedy tokens"
        );
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "request {i}: log-prob {x} vs {y}");
        }
    }
    // Seeded sampling on the GPU records the log-probs a teacher-forced GPU forward gives.
    let sampled = SamplingParams {
        max_new_tokens: 12,
        seed: 3,
        ..SamplingParams::default()
    };
    let out = on_gpu.generate(&requests, &sampled).unwrap();
    let again = on_gpu.generate(&requests, &sampled).unwrap();
    let model = on_gpu.model();
    let _guard = tch::no_grad_guard();
    for (i, (c, d)) in out.iter().zip(&again).enumerate() {
        assert_eq!(
            c.completion_ids, d.completion_ids,
            "request {i}: a seed reproduces"
        );
        let ids: Vec<i64> = c
            .prompt_ids
            .iter()
            .chain(&c.completion_ids)
            .copied()
            .collect();
        let n = ids.len() as i64;
        let lp = model
            .forward(
                &Tensor::from_slice(&ids).view([1, n]).to_device(gpu),
                None,
                &NoHooks,
            )
            .log_softmax(-1, Kind::Float)
            .to_device(Device::Cpu);
        let p = c.prompt_ids.len() as i64;
        for (k, (&tok, &recorded)) in c.completion_ids.iter().zip(&c.logprobs).enumerate() {
            let forced = f64::try_from(lp.get(0).get(p - 1 + k as i64).get(tok)).unwrap();
            assert!(
                (forced - recorded as f64).abs() < 1e-4,
                "request {i} token {k}: recorded {recorded}, teacher-forced {forced}"
            );
        }
    }
}
