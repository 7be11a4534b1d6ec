//! The gradient-sync seam of the learner step: a learner split over two "processes" (two threads, each
//! training on half of every batch, summing gradients and loss denominators through shared memory)
//! makes the same update as one learner on the whole batch; and a custom `GradientSync` sees the
//! accumulated pre-clip gradients of every optimizer step and the batch's token and sequence counts,
//! checked against counts taken from the samples themselves.
#![allow(clippy::field_reassign_with_default)]
mod common;

use std::sync::{Arc, Barrier, Mutex};

use alp_learner::{
    Aggregation, CorrectionKind, GradientSync, Group, LearnerSettings, PgLearner, Result,
};
use common::{Rng, ToyLm};
use tch::{Kind, Tensor};

/// Groups with uneven completion lengths, some untrained tokens and one fully untrained sample (it
/// counts as a token-less sequence).
fn batch(model: &ToyLm, seed: u64) -> Vec<Group> {
    let mut rng = Rng::new(seed);
    let prompts = common::random_prompts(4, 3, 8, &mut rng);
    let mut groups = common::sample_groups(model, &prompts, 4, 6, 0.4, &mut rng, |c| {
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

fn settings(aggregation: Aggregation, correction: CorrectionKind) -> LearnerSettings {
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

/// What the two processes share: each one's contribution, read by both once both have written.
struct Exchange {
    grads: Mutex<[Vec<Tensor>; 2]>,
    counts: Mutex<[Vec<f64>; 2]>,
    barrier: Barrier,
}

/// Process `rank` of two, summing through [`Exchange`] (in rank order, so both get the same bits).
struct SharedMemorySync {
    rank: usize,
    shared: Arc<Exchange>,
}

impl GradientSync for SharedMemorySync {
    fn sum_gradients(&mut self, params: &[Tensor]) -> Result<()> {
        let mine: Vec<Tensor> = params.iter().map(|p| p.grad().detach().copy()).collect();
        assert!(
            mine.iter().all(Tensor::defined),
            "every toy parameter gets a gradient"
        );
        self.shared.grads.lock().unwrap()[self.rank] = mine;
        self.shared.barrier.wait();
        {
            let g = self.shared.grads.lock().unwrap();
            tch::no_grad(|| {
                for (i, p) in params.iter().enumerate() {
                    p.grad().copy_(&(&g[0][i] + &g[1][i]));
                }
            });
        }
        self.shared.barrier.wait();
        Ok(())
    }

    fn sum_counts(&mut self, counts: &mut [f64]) -> Result<()> {
        self.shared.counts.lock().unwrap()[self.rank] = counts.to_vec();
        self.shared.barrier.wait();
        {
            let c = self.shared.counts.lock().unwrap();
            for (i, x) in counts.iter_mut().enumerate() {
                *x = c[0][i] + c[1][i];
            }
        }
        self.shared.barrier.wait();
        Ok(())
    }
}

/// The model's parameters after `steps` learner steps on `data`, and each step's `grad/norm`.
fn train(
    model: ToyLm,
    s: LearnerSettings,
    data: &[Group],
    sync: Option<SharedMemorySync>,
) -> (Vec<Tensor>, Vec<f64>) {
    let mut learner = PgLearner::new(s, model, None).unwrap();
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

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    let diff = f64::try_from((a - b).abs().max()).unwrap();
    let scale = f64::try_from(b.abs().max()).unwrap().max(1.0);
    assert!(diff <= 1e-5 * scale, "{what}: max |diff| {diff}");
}

/// Two processes on the two halves of each batch (split between groups, so advantages are the same)
/// end with the parameters of one process on the whole batch, after two learner steps of two epochs
/// each, with clipping active, for token and sequence aggregation and with a TIS correction.
#[test]
fn two_processes_make_the_update_of_one() {
    common::init();
    for (aggregation, correction) in [
        (Aggregation::TokenMean, CorrectionKind::Bypass),
        (Aggregation::SeqMeanTokenMean, CorrectionKind::Tis),
        (Aggregation::SeqMeanTokenSum, CorrectionKind::Bypass),
    ] {
        let model = ToyLm::new(8, 16, 2, 21);
        let data = batch(&model, 22);
        let s = settings(aggregation, correction);
        let (whole, whole_norms) = train(model.deep_clone(), s.clone(), &data, None);

        let shared = Arc::new(Exchange {
            grads: Mutex::new([Vec::new(), Vec::new()]),
            counts: Mutex::new([Vec::new(), Vec::new()]),
            barrier: Barrier::new(2),
        });
        let halves = [data[..2].to_vec(), data[2..].to_vec()];
        let results: Vec<(Vec<Tensor>, Vec<f64>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = halves
                .iter()
                .enumerate()
                .map(|(rank, half)| {
                    let (model, s, shared) = (model.deep_clone(), s.clone(), shared.clone());
                    scope.spawn(move || {
                        train(model, s, half, Some(SharedMemorySync { rank, shared }))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, (params, norms)) in results.iter().enumerate() {
            for (i, (p, q)) in params.iter().zip(&whole).enumerate() {
                assert_close(p, q, &format!("{aggregation:?} rank {rank} param {i}"));
            }
            for (n, m) in norms.iter().zip(&whole_norms) {
                assert!(
                    (n - m).abs() <= 1e-5 * m,
                    "{aggregation:?} rank {rank}: grad/norm {n} vs {m}"
                );
            }
        }
        assert!(
            whole_norms.iter().all(|&n| n > 0.05),
            "the test needs every step to clip: {whole_norms:?}"
        );
        let moved = f64::try_from((&whole[0] - &model.embed).abs().max()).unwrap();
        assert!(moved > 1e-4, "the parameters moved ({moved})");
    }
}

/// What a recording sync saw.
#[derive(Default)]
struct Seen {
    counts: Vec<Vec<f64>>,
    grad_norms: Vec<f64>,
    params: usize,
}

/// One process that records what it is asked to sum and leaves it unchanged.
struct RecordingSync(Arc<Mutex<Seen>>);

impl GradientSync for RecordingSync {
    fn sum_gradients(&mut self, params: &[Tensor]) -> Result<()> {
        let mut seen = self.0.lock().unwrap();
        seen.params = params.len();
        let sq: f64 = params
            .iter()
            .map(|p| {
                f64::try_from(p.grad().to_kind(Kind::Double).square().sum(Kind::Double)).unwrap()
            })
            .sum();
        seen.grad_norms.push(sq.sqrt());
        Ok(())
    }

    fn sum_counts(&mut self, counts: &mut [f64]) -> Result<()> {
        self.0.lock().unwrap().counts.push(counts.to_vec());
        Ok(())
    }
}

/// The sync gets, once per step, each mini-batch's trained tokens and sequences with a trained token
/// (counted here from the samples' loss masks) and micro-batch count, and once per optimizer step every parameter with its
/// accumulated gradient before the clip (its norm is the logged pre-clip `grad/norm`).
#[test]
fn a_custom_sync_sees_counts_and_pre_clip_gradients() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 31);
    let data = batch(&model, 32);
    let mut s = settings(Aggregation::TokenMean, CorrectionKind::Bypass);
    s.mini_batches = 2;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut learner = PgLearner::new(s, model, None)
        .unwrap()
        .with_gradient_sync(Box::new(RecordingSync(seen.clone())));
    let m = learner.train_step(&data).unwrap();

    let samples: Vec<_> = data.iter().flat_map(|g| &g.samples).collect();
    let half = samples.len() / 2;
    let minis = [&samples[..half], &samples[half..]];
    let mut expected: Vec<f64> = minis
        .iter()
        .flat_map(|mini| {
            let tokens: usize = mini
                .iter()
                .map(|x| x.loss_mask.iter().filter(|&&k| k).count())
                .sum();
            let sequences = mini.iter().filter(|x| x.loss_mask.contains(&true)).count();
            [tokens as f64, sequences as f64]
        })
        .collect();
    // Then this process's micro-batches per mini-batch (3 samples each), which place its forwards
    // among every process's.
    expected.extend(minis.iter().map(|mini| mini.len().div_ceil(3) as f64));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.counts, vec![expected]);
    assert_eq!(seen.params, learner.policy().params().len());
    assert_eq!(seen.grad_norms.len(), 4, "two mini-batches, two epochs");
    let mean = seen.grad_norms.iter().sum::<f64>() / 4.0;
    assert!(
        (mean - m["grad/norm"]).abs() <= 1e-5 * mean,
        "pre-clip norm {mean} vs grad/norm {}",
        m["grad/norm"]
    );
    assert!(
        seen.grad_norms.iter().all(|&n| n > 0.05),
        "every step clipped"
    );
}
