//! EGGROLL's building blocks against independent references: the batched population forward against
//! models whose weights are materialised as `W + s_i (sigma / sqrt r) A_i B_i^T` (prefill logits, and
//! generation through the continuously batched engine with rows that finish at different steps), the
//! update against a float64 brute-force sum, the noise's identity between generation and update, and
//! the estimator's direction against the true gradient of a quadratic.
// Brute-force references index by position on purpose.
#![allow(clippy::needless_range_loop)]
use alp_learner::eggroll::{
    es_gradient, evolved_matrices, factors, shape_fitness, sign, EvolvedMatrix, FitnessShaping,
    Population, PopulationFactors,
};
use alp_policy::noise::{standard_normal, NoiseKey};
use alp_policy::{CausalLM, LoadOptions, NoHooks, RowHooks};
use alp_rollout::{GenerationBackend, GenerationRequest, LocalEngine, SamplingParams};
use alp_test_support::tiny_model::{copy_of, TinyModel};
use tch::{Device, Kind, Tensor};

fn tiny(arch: &str, seed: u64) -> CausalLM {
    TinyModel::new(arch)
        .with("intermediate_size", 48)
        .with("initializer_range", 0.3)
        .random(seed)
}

/// A copy of `model` whose evolved matrices carry member `member`'s perturbation.
fn materialised(model: &CausalLM, population: &Population, member: usize) -> CausalLM {
    let copy = copy_of(model);
    let params: std::collections::HashMap<String, Tensor> =
        copy.named_parameters().into_iter().collect();
    tch::no_grad(|| {
        for m in &population.matrices {
            let mut p = params[&m.name].shallow_clone();
            let _ = p.g_add_(&population.perturbation(m, member, Device::Cpu));
        }
    });
    copy
}

fn requests(n: usize) -> Vec<GenerationRequest> {
    (0..n)
        .map(|i| GenerationRequest {
            prompt_ids: (0..2 + (i * 5) % 7)
                .map(|j| ((i * 11 + j * 3) % 63 + 1) as i64)
                .collect(),
            max_new_tokens: Some(3 + (i * 7) % 10),
            stop_token_ids: None,
            member: None,
            stream: None,
        })
        .collect()
}

#[test]
fn population_forward_equals_materialised_members() {
    tch::set_num_threads(1);
    for arch in ["qwen2", "qwen3", "llama"] {
        let model = tiny(arch, 4);
        let matrices = evolved_matrices(&model);
        assert_eq!(
            matrices.len(),
            2 * 7 + 1,
            "7 projections per layer and the LM head"
        );
        for rank in [1, 4] {
            let population = Population {
                seed: 5,
                epoch: 2,
                sigma: 0.05,
                rank,
                matrices: matrices.clone(),
            };
            let members: Vec<usize> = (0..6).collect();
            let pf = PopulationFactors::new(&population, &members, Device::Cpu);
            // Prefill: one batched forward, row i as member i.
            let ids = Tensor::from_slice(&[5i64, 9, 13, 2, 7, 3])
                .view([1, 6])
                .repeat([6, 1]);
            let batched =
                tch::no_grad(|| model.forward(&ids, None, pf.for_rows(&members).as_ref()));
            let plain = tch::no_grad(|| model.forward(&ids.get(0).unsqueeze(0), None, &NoHooks));
            for i in 0..6 {
                let reference = materialised(&model, &population, i);
                let want = tch::no_grad(|| {
                    reference.forward(&ids.get(i as i64).unsqueeze(0), None, &NoHooks)
                });
                let got = batched.get(i as i64).unsqueeze(0);
                let diff = (&got - &want).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "{arch} r={rank} member {i}: logits differ by {diff}"
                );
                assert!(
                    (&want - &plain).abs().max().double_value(&[]) > 1e-3,
                    "the noise matters"
                );
            }
            // Generation: 6 requests (request j served by member j) on a batch of 3 slots, rows
            // finishing at different steps and refilled; each against its materialised member alone.
            let reqs = requests(6);
            let greedy = SamplingParams {
                greedy: true,
                max_new_tokens: 12,
                ..SamplingParams::default()
            };
            let out = LocalEngine::new(copy_of(&model), 3)
                .generate_with_hooks(&reqs, &greedy, &pf)
                .unwrap();
            let lengths: std::collections::BTreeSet<usize> =
                out.iter().map(|c| c.completion_ids.len()).collect();
            assert!(lengths.len() > 2, "rows finish at different steps");
            for (i, c) in out.iter().enumerate() {
                let alone = LocalEngine::new(materialised(&model, &population, i), 1)
                    .generate(&reqs[i..=i], &greedy)
                    .unwrap();
                assert_eq!(
                    c.completion_ids, alone[0].completion_ids,
                    "{arch} r={rank} request {i}"
                );
                for (x, y) in c.logprobs.iter().zip(&alone[0].logprobs) {
                    assert!(
                        (x - y).abs() < 1e-5,
                        "{arch} r={rank} request {i}: {x} vs {y}"
                    );
                }
            }
        }
    }
}

fn matrix(m: i64, n: i64) -> EvolvedMatrix {
    EvolvedMatrix {
        name: "w".into(),
        m,
        n,
        id: 77,
    }
}

#[test]
fn update_equals_the_float64_brute_force_sum() {
    let mat = matrix(12, 7);
    for rank in [1, 3] {
        let population = Population {
            seed: 9,
            epoch: 4,
            sigma: 0.02,
            rank,
            matrices: vec![mat.clone()],
        };
        let fitness: Vec<f64> = (0..10)
            .map(|i| ((i * 37) % 11) as f64 / 3.0 - 1.2)
            .collect();
        let got = es_gradient(&population, &mat, &fitness, Device::Cpu).to_kind(Kind::Double);
        // g = 1 / (N sigma) sum_i f_i s_i A_i B_i^T / sqrt r, every member's term materialised in f64.
        let mut want = Tensor::zeros([12, 7], (Kind::Double, Device::Cpu));
        for (i, f) in fitness.iter().enumerate() {
            let (a, b) = factors(population.key(&mat, i), 12, 7, rank, Device::Cpu);
            let e = a
                .to_kind(Kind::Double)
                .matmul(&b.to_kind(Kind::Double).tr())
                * (sign(i) / (rank as f64).sqrt());
            want += e * (*f / (fitness.len() as f64 * population.sigma));
        }
        let rel = ((&got - &want).norm().double_value(&[])) / want.norm().double_value(&[]);
        assert!(rel < 1e-6, "rank {rank}: relative error {rel:e}");
        // Equal fitness inside every antithetic pair: exactly no update.
        let paired: Vec<f64> = (0..10).map(|i| (i / 2) as f64 * 0.7 - 1.0).collect();
        let zero = es_gradient(&population, &mat, &paired, Device::Cpu);
        assert_eq!(zero.abs().max().double_value(&[]), 0.0);
    }
}

/// The factors a member generated with are bit-identical to those the update regenerates, also in
/// another thread and from a population rebuilt from its numbers (a resumed run).
#[test]
fn generation_and_update_use_the_same_noise() {
    let model = tiny("qwen2", 6);
    let population = Population {
        seed: 11,
        epoch: 3,
        sigma: 0.01,
        rank: 2,
        matrices: evolved_matrices(&model),
    };
    let members = [0usize, 1, 4, 5];
    let pf = PopulationFactors::new(&population, &members, Device::Cpu);
    let resumed = Population {
        matrices: evolved_matrices(&model),
        ..population.clone()
    };
    let scale = population.sigma / 2f64.sqrt();
    for mat in &population.matrices {
        for (pos, &i) in members.iter().enumerate() {
            let (a_gen, b_gen) = pf.member_factors(&mat.name, pos as i64).unwrap();
            let key = resumed.key(mat, i);
            let (m, n, r) = (mat.m, mat.n, resumed.rank);
            let (a, b) = std::thread::spawn(move || factors(key, m, n, r, Device::Cpu))
                .join()
                .unwrap();
            assert!(b_gen.equal(&b), "{} member {i}: B differs", mat.name);
            assert!(
                a_gen.equal(&(a * (sign(i) * scale))),
                "{} member {i}: A differs",
                mat.name
            );
        }
    }
    // Antithetic partners share factors; other pairs do not.
    let (a0, _) = pf.member_factors("lm_head.weight", 0).unwrap();
    let (a1, _) = pf.member_factors("lm_head.weight", 1).unwrap();
    let (a4, _) = pf.member_factors("lm_head.weight", 2).unwrap();
    assert!(a0.equal(&(-&a1)));
    assert!(!a0.equal(&a4) && !a0.equal(&(-&a4)));
    println!(
        "factors for {} members: {} bytes",
        members.len(),
        pf.bytes()
    );
}

/// Trial `t`'s quadratic: a starting matrix and its optimum, both N(0, 1), f64.
fn problem(t: u64, m: i64, n: i64) -> (Tensor, Tensor) {
    let draw = |slot| {
        let key = NoiseKey {
            seed: t,
            step: 0,
            forward: 0,
            slot,
        };
        standard_normal(&[m, n], key, Device::Cpu).to_kind(Kind::Double)
    };
    (draw(1), draw(2))
}

/// On `f(W) = -|W - W*|^2` the EGGROLL direction's cosine with the true gradient rises with the rank
/// towards the full-rank OpenES estimate from the same number of members (averaged over trials).
#[test]
fn estimator_direction_improves_with_rank() {
    let (m, n) = (16i64, 16i64);
    let members = 32usize;
    let trials = 24u64;
    let sigma = 1e-2;
    let fitness_of =
        |w: &Tensor, target: &Tensor| -(w - target).square().sum(Kind::Double).double_value(&[]);
    let cosine = |g: &Tensor, truth: &Tensor| {
        (g * truth).sum(Kind::Double).double_value(&[])
            / (g.norm().double_value(&[]) * truth.norm().double_value(&[]))
    };
    let mut by_rank = Vec::new();
    for rank in [1i64, 2, 4, 8, 16] {
        let mut total = 0.0;
        for t in 0..trials {
            let (w, target) = problem(t, m, n);
            let mat = matrix(m, n);
            let population = Population {
                seed: 100 + t,
                epoch: 0,
                sigma,
                rank,
                matrices: vec![mat.clone()],
            };
            let fitness: Vec<f64> = (0..members)
                .map(|i| {
                    fitness_of(
                        &(&w + population
                            .perturbation(&mat, i, Device::Cpu)
                            .to_kind(Kind::Double)),
                        &target,
                    )
                })
                .collect();
            let g = es_gradient(&population, &mat, &fitness, Device::Cpu).to_kind(Kind::Double);
            total += cosine(&g, &(-(&w - &target) * 2.0));
        }
        by_rank.push((rank, total / trials as f64));
    }
    // Full-rank OpenES: antithetic Gaussian matrices, the same number of members.
    let mut open = 0.0;
    for t in 0..trials {
        let (w, target) = problem(t, m, n);
        let mut g = Tensor::zeros([m, n], (Kind::Double, Device::Cpu));
        for k in 0..members / 2 {
            let e = standard_normal(
                &[m, n],
                NoiseKey {
                    seed: 500 + t,
                    step: 0,
                    forward: k as u64,
                    slot: 3,
                },
                Device::Cpu,
            )
            .to_kind(Kind::Double);
            let diff =
                fitness_of(&(&w + &e * sigma), &target) - fitness_of(&(&w - &e * sigma), &target);
            g += e * (diff / (members as f64 * sigma));
        }
        open += cosine(&g, &(-(&w - &target) * 2.0));
    }
    let open = open / trials as f64;
    for (rank, c) in &by_rank {
        println!("rank {rank:>2}: mean cosine with the true gradient {c:.3}");
    }
    println!("OpenES (full rank): {open:.3}");
    let first = by_rank[0].1;
    let last = by_rank.last().unwrap().1;
    assert!(first > 0.0, "even rank 1 points uphill");
    assert!(
        last > first,
        "rank 16 ({last}) is better aligned than rank 1 ({first})"
    );
    for w in by_rank.windows(2) {
        assert!(
            w[1].1 > w[0].1 - 0.03,
            "cosine falls from rank {} to {}",
            w[0].0,
            w[1].0
        );
    }
    assert!(
        (open - last).abs() < 0.1,
        "rank 16 ({last}) approaches OpenES ({open})"
    );
}

#[test]
fn fitness_shaping_matches_its_definitions() {
    let raw = [1.0, 0.0, 3.0, 3.0, 2.0, 5.0];
    let mean = raw.iter().sum::<f64>() / 6.0;
    let var = raw.iter().map(|f| (f - mean) * (f - mean)).sum::<f64>() / 6.0;
    let z = shape_fitness(&raw, FitnessShaping::ZScore);
    for (f, s) in raw.iter().zip(&z) {
        assert!((s - (f - mean) / (var + 1e-5).sqrt()).abs() < 1e-12);
    }
    let g = shape_fitness(&raw, FitnessShaping::Group { size: 3 });
    let (m1, m2) = (4.0 / 3.0, 10.0 / 3.0);
    for i in 0..6 {
        let m = if i < 3 { m1 } else { m2 };
        assert!((g[i] - (raw[i] - m) / (var + 1e-5).sqrt()).abs() < 1e-12);
    }
    let r = shape_fitness(&raw, FitnessShaping::Rank);
    // Sorted: 0 (1), 1 (0), 2 (4), 3 (2 and 3: mean rank 3.5), 5 (5); over n - 1 = 5, minus 0.5.
    let want = [
        0.2 - 0.5,
        -0.5,
        3.5 / 5.0 - 0.5,
        3.5 / 5.0 - 0.5,
        0.4 - 0.5,
        0.5,
    ];
    for i in 0..6 {
        assert!(
            (r[i] - want[i]).abs() < 1e-12,
            "rank {i}: {} vs {}",
            r[i],
            want[i]
        );
    }
}

fn settings(population: usize) -> alp_learner::eggroll::EggrollSettings {
    alp_learner::eggroll::EggrollSettings {
        population,
        rank: 2,
        sigma: 0.02,
        lr: 0.1,
        fitness: alp_learner::eggroll::FitnessKind::ZScore,
        params: vec!["mlp.up_proj".into()],
        ..Default::default()
    }
}

fn weights(model: &CausalLM, name: &str) -> Tensor {
    model
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
        .detach()
        .copy()
}

/// An SGD step moves exactly the chosen matrices, by `lr` times the float64 brute-force estimate from
/// the z-scored fitness; the other matrices stay as they were.
#[test]
fn sgd_step_moves_the_chosen_matrices_by_lr_times_the_estimate() {
    use alp_learner::eggroll::EsLearner;
    let model = tiny("qwen2", 7);
    let mut learner = EsLearner::new(settings(6), 3, &model).unwrap();
    assert_eq!(learner.matrices().len(), 2, "one up_proj per layer");
    let population = learner.population();
    let raw = [0.5, 1.0, 0.0, 2.0, 1.5, 0.25];
    let before: Vec<Tensor> = population
        .matrices
        .iter()
        .map(|m| weights(&model, &m.name))
        .collect();
    let frozen = weights(&model, "model.layers.0.mlp.down_proj.weight");
    let metrics = learner.update(&raw, 2).unwrap().metrics;
    let mean = raw.iter().sum::<f64>() / 6.0;
    let var = raw.iter().map(|f| (f - mean) * (f - mean)).sum::<f64>() / 6.0;
    for (mat, before) in population.matrices.iter().zip(&before) {
        let mut want = Tensor::zeros([mat.m, mat.n], (Kind::Double, Device::Cpu));
        for (i, f) in raw.iter().enumerate() {
            let shaped = (f - mean) / (var + 1e-5).sqrt();
            let (a, b) = factors(population.key(mat, i), mat.m, mat.n, 2, Device::Cpu);
            want += a
                .to_kind(Kind::Double)
                .matmul(&b.to_kind(Kind::Double).tr())
                * (sign(i) * shaped / (6.0 * 0.02 * 2f64.sqrt()) * 0.1);
        }
        let moved = weights(&model, &mat.name).to_kind(Kind::Double) - before.to_kind(Kind::Double);
        let rel = (&moved - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
        assert!(
            rel < 1e-5,
            "{}: moved {rel:e} away from lr x estimate",
            mat.name
        );
    }
    assert!(weights(&model, "model.layers.0.mlp.down_proj.weight").equal(&frozen));
    for k in [
        "es/fitness_mean",
        "es/fitness_std",
        "es/fitness_max",
        "es/fitness_min",
        "es/update_norm",
        "es/sigma",
        "es/population",
        "es/rank",
    ] {
        assert!(metrics[k].is_finite(), "{k}");
    }
    assert_eq!(metrics["es/fitness_max"], 2.0);
    assert_eq!(learner.step(), 1);
}

/// Adam's state and the step counter survive save/load: a run split by a resume ends bit-identical to
/// a straight one.
#[test]
fn adam_state_resumes_exactly() {
    use alp_learner::eggroll::{EsLearner, EsOptimizer};
    let model = tiny("llama", 8);
    let mut s = settings(4);
    s.optimizer = EsOptimizer::Adam;
    s.lr = 1e-2;
    let fitness =
        |step: usize| -> Vec<f64> { (0..4).map(|i| ((i * 3 + step * 5) % 7) as f64).collect() };
    let straight = copy_of(&model);
    let mut a = EsLearner::new(s.clone(), 1, &straight).unwrap();
    for step in 0..3 {
        a.update(&fitness(step), 2).unwrap();
    }
    let split = copy_of(&model);
    let mut b = EsLearner::new(s.clone(), 1, &split).unwrap();
    b.update(&fitness(0), 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    b.save_state(dir.path()).unwrap();
    let resumed = copy_of(&split);
    let mut c = EsLearner::new(s, 1, &resumed).unwrap();
    c.load_state(dir.path()).unwrap();
    assert_eq!(c.step(), 1);
    for step in 1..3 {
        c.update(&fitness(step), 2).unwrap();
    }
    for mat in a.matrices() {
        assert!(
            weights(&straight, &mat.name).equal(&weights(&resumed, &mat.name)),
            "{}",
            mat.name
        );
    }
}

#[test]
fn bad_settings_are_refused_with_their_field() {
    use alp_learner::eggroll::EsLearner;
    let model = tiny("qwen2", 9);
    let cases: Vec<(alp_learner::eggroll::EggrollSettings, &str, &str)> = vec![
        (settings(5), "eggroll.population", "even"),
        (
            {
                let mut s = settings(4);
                s.rank = 0;
                s
            },
            "eggroll.rank",
            ">= 1",
        ),
        (
            {
                let mut s = settings(4);
                s.rank = 33;
                s.params = vec!["k_proj".into()];
                s
            },
            "eggroll.rank",
            "at most 16",
        ),
        (
            {
                let mut s = settings(4);
                s.sigma = 0.0;
                s
            },
            "eggroll.sigma",
            "> 0",
        ),
        (
            {
                let mut s = settings(4);
                s.params = vec!["mlp.nope".into()];
                s
            },
            "eggroll.params",
            "matches no",
        ),
    ];
    for (s, field, needle) in cases {
        match EsLearner::new(s, 0, &model) {
            Err(alp_learner::LearnerError::Settings(e)) => {
                assert_eq!(e.field, field);
                assert!(e.reason.contains(needle), "{field}: {}", e.reason);
            }
            Err(e) => panic!("{field}: wrong error {e}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    let bf16 = CausalLM::random(
        model.config().clone(),
        &LoadOptions {
            kind: Kind::BFloat16,
            device: Device::Cpu,
            ..LoadOptions::default()
        },
        1,
    )
    .unwrap();
    let err = EsLearner::new(settings(4), 0, &bf16)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("train_dtype"), "{err}");
}

/// ES alone raises a token's log-prob: each member's fitness is the log-prob of token 7 after a fixed
/// prompt under its own weights (one batched population forward), and 40 Adam steps raise the base
/// model's log-prob of it.
#[test]
fn es_raises_the_log_prob_of_a_target_token() {
    use alp_learner::eggroll::{EsLearner, EsOptimizer};
    tch::set_num_threads(1);
    let model = tiny("qwen3", 10);
    let mut s = settings(32);
    s.params = Vec::new();
    s.optimizer = EsOptimizer::Adam;
    s.lr = 3e-3;
    s.sigma = 0.01;
    s.rank = 1;
    let mut learner = EsLearner::new(s, 2, &model).unwrap();
    let prompt = Tensor::from_slice(&[5i64, 9, 13, 2]).view([1, 4]);
    let target_lp = |hooks: &dyn alp_policy::ForwardHooks, rows: i64| {
        tch::no_grad(|| {
            model
                .forward(&prompt.repeat([rows, 1]), None, hooks)
                .select(1, 3)
                .log_softmax(-1, Kind::Float)
                .select(1, 7)
        })
    };
    let start = target_lp(&NoHooks, 1).double_value(&[0]);
    for _ in 0..40 {
        let members: Vec<usize> = (0..32).collect();
        let pf = PopulationFactors::new(&learner.population(), &members, Device::Cpu);
        let fitness = Vec::<f64>::try_from(
            target_lp(pf.for_rows(&members).as_ref(), 32).to_kind(Kind::Double),
        )
        .unwrap();
        learner.update(&fitness, 32).unwrap();
    }
    let end = target_lp(&NoHooks, 1).double_value(&[0]);
    println!("log-prob of the target token: {start:.3} -> {end:.3}");
    assert!(
        end > start + 0.5,
        "ES did not raise the target log-prob: {start} -> {end}"
    );
}
