//! EGGROLL on two processes: each rank evaluates its members of the population (every other member),
//! only the fitness values travel (`gather_indexed`; the members' noise is a function of the seed and
//! the step, the same on every rank), and both ranks end, after three ES steps, with exactly the
//! weights of one process that evaluated the whole population. Plus `gather_indexed`'s refusals.
mod common;

use std::time::Duration;

use alp_dist::{Backend, ProcessGroup};
use alp_learner::eggroll::{EggrollSettings, EsLearner, FitnessKind};
use alp_policy::CausalLM;
use alp_test_support::tiny_model::TinyModel;
use tch::{Device, Tensor};

const POPULATION: usize = 8;
const STEPS: usize = 3;

fn model() -> CausalLM {
    TinyModel::new("qwen2")
        .with("intermediate_size", 48)
        .with("initializer_range", 0.3)
        .random(7)
}

fn settings() -> EggrollSettings {
    EggrollSettings {
        population: POPULATION,
        rank: 2,
        sigma: 0.02,
        lr: 0.1,
        fitness: FitnessKind::ZScore,
        params: vec!["mlp.up_proj".into()],
        ..Default::default()
    }
}

/// A stand-in for a member's reward: a function of its perturbation, so it is only right if the rank
/// that computes it draws the member's noise as one process would.
fn fitness(learner: &EsLearner, member: usize) -> f64 {
    let population = learner.population();
    population
        .matrices
        .iter()
        .map(|m| {
            let p = population.perturbation(m, member, Device::Cpu);
            f64::try_from(p.sum(tch::Kind::Double)).unwrap() + 1e-3 * member as f64
        })
        .sum()
}

/// The evolved matrices after `STEPS` steps; `evaluate(learner)` gives each step's whole fitness.
fn run(model: &CausalLM, mut evaluate: impl FnMut(&EsLearner) -> Vec<f64>) -> Vec<Tensor> {
    let mut learner = EsLearner::new(settings(), 3, model).unwrap();
    for _ in 0..STEPS {
        let all = evaluate(&learner);
        learner.update(&all, 2).unwrap();
    }
    let names: Vec<String> = learner.matrices().iter().map(|m| m.name.clone()).collect();
    model
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(_, t)| t.detach().copy())
        .collect()
}

/// Evaluates members `rank, rank + world, ...`, gathers the rest, writes the weights.
fn role_es() {
    let group = ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap();
    let (rank, world) = (group.rank(), group.world_size());
    let model = model();
    let weights = run(&model, |learner| {
        let mine: Vec<(usize, f64)> = (rank..POPULATION)
            .step_by(world)
            .map(|m| (m, fitness(learner, m)))
            .collect();
        group.gather_indexed(&mine, POPULATION).unwrap()
    });
    let named: Vec<(String, Tensor)> = weights
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("m{i}"), t))
        .collect();
    let dir = std::path::PathBuf::from(std::env::var(common::DIR).unwrap());
    Tensor::write_safetensors(&named, dir.join(format!("rank{rank}.safetensors"))).unwrap();
}

fn two_ranks_make_the_update_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let env = [(common::DIR, dir.path().display().to_string())];
    common::run_ranks("es", 2, 60, &env, Duration::from_secs(300));
    let initial = model();
    let whole = run(&model(), |learner| {
        (0..POPULATION).map(|m| fitness(learner, m)).collect()
    });
    let moved = whole
        .iter()
        .zip(
            initial
                .named_parameters()
                .iter()
                .filter(|(n, _)| n.contains("up_proj")),
        )
        .map(|(w, (_, p))| f64::try_from((w - p).abs().max()).unwrap())
        .fold(0.0, f64::max);
    assert!(moved > 1e-4, "the update moved the weights ({moved})");
    for rank in 0..2 {
        let saved =
            Tensor::read_safetensors(dir.path().join(format!("rank{rank}.safetensors"))).unwrap();
        assert_eq!(saved.len(), whole.len());
        for (i, w) in whole.iter().enumerate() {
            let got = &saved.iter().find(|(n, _)| *n == format!("m{i}")).unwrap().1;
            assert!(
                got.equal(w),
                "rank {rank}, matrix {i}: not the one-process update"
            );
        }
    }
}

/// Rank 0 sends indices 0 and 2, rank 1 index 1 (`GATHER=ok`), or also 2 (`dup`), or nothing
/// (`missing`); each rank prints what it got.
fn role_gather() {
    let group = ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap();
    let mode = std::env::var("GATHER").unwrap();
    let mine: Vec<(usize, f64)> = match (group.rank(), mode.as_str()) {
        (0, _) => vec![(0, 0.5), (2, -1.25)],
        (_, "ok") => vec![(1, 3.0)],
        (_, "dup") => vec![(1, 3.0), (2, 7.0)],
        _ => vec![],
    };
    match group.gather_indexed(&mine, 3) {
        Ok(v) => println!("got {v:?}"),
        Err(e) => println!("error: {e}"),
    }
}

fn gather_indexed_assembles_or_refuses_on_every_rank() {
    for (mode, want) in [
        ("ok", "got [0.5, 3.0, -1.25]"),
        (
            "dup",
            "error: gather_indexed: index 2 came from rank 0 and rank 1",
        ),
        (
            "missing",
            "error: gather_indexed: no rank sent index 1 of 3",
        ),
    ] {
        let env = [("GATHER", mode.to_string())];
        for (r, f) in common::run_ranks("gather", 2, 60, &env, Duration::from_secs(60))
            .iter()
            .enumerate()
        {
            assert_eq!(f.stdout.trim(), want, "{mode}, rank {r}");
        }
    }
}

fn main() {
    common::main(
        &[
            (
                "two_ranks_make_the_update_of_one",
                two_ranks_make_the_update_of_one,
            ),
            (
                "gather_indexed_assembles_or_refuses_on_every_rank",
                gather_indexed_assembles_or_refuses_on_every_rank,
            ),
        ],
        &[("es", role_es), ("gather", role_gather)],
    );
}
