//! `DistSync` in real processes: two `PgLearner`s on the two halves of each batch, summing through
//! Gloo, end with the parameters and pre-clip gradient norms of one learner on the whole batch (the
//! toy setup of learner/tests/gradient_sync.rs); and a parameter that has a gradient on one rank
//! only, or on none, ends as in one process.
#![allow(clippy::field_reassign_with_default)]
mod common;
#[path = "../../learner/tests/common/mod.rs"]
mod toy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alp_dist::{Backend, DistSync, ProcessGroup};
use alp_learner::{
    Aggregation, CorrectionKind, GradientSync, Group, LearnerSettings, PgLearner, TrainablePolicy,
};
use tch::{Kind, Tensor};
use toy::{Rng, ToyLm};

/// learner/tests/gradient_sync.rs's batch: uneven completion lengths, some untrained tokens and one
/// fully untrained sample.
fn batch(model: &ToyLm, seed: u64) -> Vec<Group> {
    batch_of(model, seed)
}

fn batch_of<M: TrainablePolicy>(model: &M, seed: u64) -> Vec<Group> {
    let mut rng = Rng::new(seed);
    let prompts = toy::random_prompts(4, 3, 8, &mut rng);
    let mut groups = toy::sample_groups(model, &prompts, 4, 6, 0.4, &mut rng, |c| {
        c.iter().filter(|&&t| t == 1).count() as f64
    });
    for (i, s) in groups.iter_mut().flat_map(|g| &mut g.samples).enumerate() {
        let keep = 2 + i % 5;
        s.completion_ids.truncate(keep);
        s.mu.truncate(keep);
        s.loss_mask.truncate(keep);
        if i % 4 == 1 {
            s.loss_mask[0] = false;
        }
        if i == 6 {
            s.loss_mask.iter_mut().for_each(|k| *k = false);
        }
    }
    groups
}

const CASES: [(Aggregation, CorrectionKind); 3] = [
    (Aggregation::TokenMean, CorrectionKind::Bypass),
    (Aggregation::SeqMeanTokenMean, CorrectionKind::Tis),
    (Aggregation::SeqMeanTokenSum, CorrectionKind::Bypass),
];

fn settings(case: usize) -> LearnerSettings {
    let (aggregation, correction) = CASES[case];
    let mut s = LearnerSettings::default();
    s.loss.aggregation = aggregation;
    s.correction.kind = correction;
    s.micro_batch_size = 3;
    s.epochs = 2;
    s.optimizer.lr = 1e-2;
    // Small enough that every step clips: the clip must see the summed gradients.
    s.max_grad_norm = 0.05;
    s
}

/// Parameters after two learner steps on `data`, and each step's `grad/norm`.
fn train(case: usize, data: &[Group], sync: Option<DistSync>) -> (Vec<Tensor>, Vec<f64>) {
    let model = ToyLm::new(8, 16, 2, 21);
    let mut learner = PgLearner::new(settings(case), model, None).unwrap();
    if let Some(sync) = sync {
        learner = learner.with_gradient_sync(Box::new(sync));
    }
    let norms = (0..2)
        .map(|_| learner.train_step(data).unwrap()["grad/norm"])
        .collect();
    let params = learner
        .policy()
        .params()
        .iter()
        .map(|p| p.detach().copy())
        .collect();
    (params, norms)
}

fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var(common::DIR).unwrap())
}

/// Trains on this rank's half (groups 0..2 or 2..4) of every case's batch and writes the parameters
/// and norms to `rank{R}-case{C}.safetensors`.
fn role_learner() {
    let group = Arc::new(ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap());
    let rank = group.rank();
    for case in 0..CASES.len() {
        let data = batch(&ToyLm::new(8, 16, 2, 21), 22);
        let half = if rank == 0 { &data[..2] } else { &data[2..] };
        let (params, norms) = train(case, half, Some(DistSync::new(group.clone())));
        let mut named: Vec<(String, Tensor)> = params
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("p{i}"), p))
            .collect();
        named.push(("norms".into(), Tensor::from_slice(&norms)));
        let path = out_dir().join(format!("rank{rank}-case{case}.safetensors"));
        Tensor::write_safetensors(&named, path).unwrap();
    }
    println!("trained rank {rank}");
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    let diff = f64::try_from((a - b).abs().max()).unwrap();
    let scale = f64::try_from(b.abs().max()).unwrap().max(1.0);
    assert!(diff <= 1e-5 * scale, "{what}: max |diff| {diff}");
}

fn two_processes_make_the_update_of_one() {
    toy::init();
    let dir = tempfile::tempdir().unwrap();
    let env = [(common::DIR, dir.path().display().to_string())];
    common::run_ranks("learner", 2, 60, &env, Duration::from_secs(300));
    for (case, what) in CASES.iter().enumerate() {
        let data = batch(&ToyLm::new(8, 16, 2, 21), 22);
        let (whole, whole_norms) = train(case, &data, None);
        assert!(
            whole_norms.iter().all(|&n| n > 0.05),
            "the test needs every step to clip: {whole_norms:?}"
        );
        for rank in 0..2 {
            let path = dir
                .path()
                .join(format!("rank{rank}-case{case}.safetensors"));
            let saved = Tensor::read_safetensors(path).unwrap();
            let get = |name: &str| {
                saved
                    .iter()
                    .find(|(n, _)| n == name)
                    .unwrap()
                    .1
                    .shallow_clone()
            };
            for (i, q) in whole.iter().enumerate() {
                assert_close(
                    &get(&format!("p{i}")),
                    q,
                    &format!("{:?} rank {rank} param {i}", what),
                );
            }
            let norms = Vec::<f64>::try_from(get("norms")).unwrap();
            for (n, m) in norms.iter().zip(&whole_norms) {
                assert!(
                    (n - m).abs() <= 1e-5 * m,
                    "{:?} rank {rank}: grad/norm {n} vs {m}",
                    what
                );
            }
        }
        let initial = ToyLm::new(8, 16, 2, 21);
        let moved = f64::try_from((&whole[0] - &initial.embed).abs().max()).unwrap();
        assert!(moved > 1e-4, "the parameters moved ({moved})");
    }
}

/// The coefficient rank `rank` gives parameter `i` (its gradient), regenerated by any rank.
fn coefficient(rank: usize, i: usize, shape: &[i64]) -> Tensor {
    tch::manual_seed((100 * rank + i) as i64);
    Tensor::randn(shape, (Kind::Float, tch::Device::Cpu))
}

const SHAPES: [&[i64]; 3] = [&[3], &[2, 2], &[4]];

/// Rank 0 reaches parameters 0 and 1, rank 1 only parameter 1, nobody parameter 2; counts are summed.
fn role_partial() {
    let group = ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap();
    let rank = group.rank();
    let mut sync = DistSync::new(Arc::new(group));
    let params: Vec<Tensor> = SHAPES
        .iter()
        .map(|s| Tensor::zeros(*s, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true))
        .collect();
    let reached: &[usize] = if rank == 0 { &[0, 1] } else { &[1] };
    let loss = reached
        .iter()
        .map(|&i| (&params[i] * coefficient(rank, i, SHAPES[i])).sum(Kind::Float))
        .reduce(|a, b| a + b)
        .unwrap();
    loss.backward();
    sync.sum_gradients(&params).unwrap();
    assert!(
        params[0].grad().equal(&coefficient(0, 0, SHAPES[0])),
        "rank 0's alone"
    );
    let both = coefficient(0, 1, SHAPES[1]) + coefficient(1, 1, SHAPES[1]);
    assert!(params[1].grad().equal(&both), "the sum of both");
    assert!(
        !params[2].grad().defined(),
        "no rank reached it: undefined, as in one process"
    );
    let mut counts = [rank as f64 + 1.0, 10.0 * rank as f64, 0.5];
    sync.sum_counts(&mut counts).unwrap();
    assert_eq!(counts, [3.0, 10.0, 1.0]);
    println!("partial ok on rank {rank}");
}

fn gradients_defined_on_some_ranks_only() {
    let done = common::run_ranks("partial", 2, 60, &[], Duration::from_secs(120));
    for (r, f) in done.iter().enumerate() {
        assert!(f.stdout.contains(&format!("partial ok on rank {r}")));
    }
}

/// A tiny random Llama with tied embeddings (the real decoder, not the toy).
fn causal_lm() -> alp_policy::CausalLM {
    alp_test_support::tiny_model::TinyModel::new("llama")
        .with("tie_word_embeddings", true)
        .random(5)
}

/// The parameters of a real `CausalLM` after two steps on `data` (TIS, token mean), and the norms.
fn train_causal_lm(data: &[Group], sync: Option<DistSync>) -> (Vec<Tensor>, Vec<f64>) {
    let mut learner = PgLearner::new(settings(1), causal_lm(), None).unwrap();
    if let Some(sync) = sync {
        learner = learner.with_gradient_sync(Box::new(sync));
    }
    let norms = (0..2)
        .map(|_| learner.train_step(data).unwrap()["grad/norm"])
        .collect();
    let params = learner
        .policy()
        .trainable_parameters()
        .into_iter()
        .map(|(_, p)| p.detach().copy())
        .collect();
    (params, norms)
}

fn causal_lm_batch() -> Vec<Group> {
    batch_of(&causal_lm(), 23)
}

/// Trains the real decoder on this rank's half and writes `lm-rank{R}.safetensors`.
fn role_causal_lm() {
    let group = Arc::new(ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap());
    let rank = group.rank();
    let data = causal_lm_batch();
    let half = if rank == 0 { &data[..2] } else { &data[2..] };
    let (params, norms) = train_causal_lm(half, Some(DistSync::new(group)));
    let mut named: Vec<(String, Tensor)> = params
        .into_iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}"), p))
        .collect();
    named.push(("norms".into(), Tensor::from_slice(&norms)));
    Tensor::write_safetensors(&named, out_dir().join(format!("lm-rank{rank}.safetensors")))
        .unwrap();
}

/// The same on the real decoder (tied embeddings, every projection, norms): two ranks end with the
/// weights of one.
fn a_real_decoder_on_two_processes_makes_the_update_of_one() {
    toy::init();
    let dir = tempfile::tempdir().unwrap();
    let env = [(common::DIR, dir.path().display().to_string())];
    common::run_ranks("causal_lm", 2, 60, &env, Duration::from_secs(300));
    let (whole, whole_norms) = train_causal_lm(&causal_lm_batch(), None);
    let initial = causal_lm().trainable_parameters();
    assert_eq!(initial.len(), whole.len());
    let moved = whole
        .iter()
        .zip(&initial)
        .map(|(w, (_, p))| f64::try_from((w - p).abs().max()).unwrap())
        .fold(0.0, f64::max);
    assert!(moved > 1e-5, "the parameters moved ({moved})");
    for rank in 0..2 {
        let path = dir.path().join(format!("lm-rank{rank}.safetensors"));
        let saved = Tensor::read_safetensors(path).unwrap();
        let get = |name: &str| {
            saved
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .shallow_clone()
        };
        for (i, q) in whole.iter().enumerate() {
            assert_close(&get(&format!("p{i}")), q, &format!("rank {rank} param {i}"));
        }
        let norms = Vec::<f64>::try_from(get("norms")).unwrap();
        for (n, m) in norms.iter().zip(&whole_norms) {
            assert!(
                (n - m).abs() <= 1e-5 * m,
                "rank {rank}: grad/norm {n} vs {m}"
            );
        }
    }
}

fn main() {
    common::main(
        &[
            (
                "two_processes_make_the_update_of_one",
                two_processes_make_the_update_of_one,
            ),
            (
                "gradients_defined_on_some_ranks_only",
                gradients_defined_on_some_ranks_only,
            ),
            (
                "a_real_decoder_on_two_processes_makes_the_update_of_one",
                a_real_decoder_on_two_processes_makes_the_update_of_one,
            ),
        ],
        &[
            ("learner", role_learner),
            ("partial", role_partial),
            ("causal_lm", role_causal_lm),
        ],
    );
}
