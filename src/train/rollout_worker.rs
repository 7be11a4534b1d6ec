//! The rollout worker: the thread that generates rollouts for the learner. It owns the rollout
//! backend ([`RolloutBackend`]: its own `LocalEngine`, since a libtorch model stays on the thread that
//! made it, or the vLLM servers with the copy of the learner's weights their syncs are verified
//! against), generates one [`RolloutBatch`] per learner step into a bounded queue, and installs the
//! [`PublishedWeights`] the learner sends through a channel. It also runs the held-out evaluation on
//! that same backend when a published version asks for one, so the run needs no second inference copy.
//! [`RolloutWorker`] is the learner's handle on the thread (spawn, next batch, publish, evaluations).
//!
//! Names, from the train loop down: the rollout worker (this thread) holds a rollout backend
//! ([`RolloutBackend`], `rollout_backend.rs`: which [`alp_rollout::GenerationBackend`] the run chose),
//! which is either the local backend's engine ([`alp_rollout::LocalEngine`]) or vLLM servers
//! ([`alp_vllm::VllmBackend`]); episodes and evaluation see only the `GenerationBackend` trait.
//!
//! Pacing: batch `b` (trained at learner step `b + 1`, when the learner holds version `b`) is generated
//! with exactly version `max(first, b - max_staleness)`. So the worker waits for that version instead
//! of running further ahead, no sample ever lags more than `max_staleness` versions, and the batches a
//! run sees do not depend on thread timing (runs are reproducible, `max_staleness = 0` is synchronous).
//! Version `v` reaches the worker exactly when its next batch needs it, so evaluating `v` on receipt
//! (before that batch) leaves every batch's weights as they were; after the last batch the worker
//! keeps serving evaluations until the learner is done.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use alp_envs::{Environment, Example, Split};
use alp_rollout::{
    run_member_episodes, EpisodeSettings, SamplingParams, SyncReport, Trajectory, WeightUpdate,
};
use alp_tokenizer::Tokenizer;
use thiserror::Error;

use super::eval::Evaluation;
use super::messages::{BatchPopulation, PublishedWeights, RolloutBatch};
use super::rollout_backend::{BackendSettings, RolloutBackend};

#[derive(Debug, Error)]
pub enum RolloutWorkerError {
    #[error("rollout worker: {0}")]
    Worker(String),
    #[error("the rollout worker stopped unexpectedly")]
    Stopped,
}

/// Everything the worker needs; moved into its thread.
pub struct RolloutWorkerSettings {
    /// Weights the worker starts from (the initial model or the resumed checkpoint).
    pub model_dir: PathBuf,
    pub tokenizer_dir: PathBuf,
    /// The local engine or the vLLM servers.
    pub backend: BackendSettings,
    pub env: Arc<dyn Environment>,
    pub params: SamplingParams,
    pub episode: EpisodeSettings,
    pub group_size: usize,
    pub prompts_per_step: usize,
    /// This process's rank among `world_size` (a run on several processes): it generates its share
    /// of every batch's groups ([`super::ranks::share`]); 0 of 1 generates the whole batch.
    pub rank: usize,
    pub world_size: usize,
    pub seed: u64,
    pub max_staleness: u64,
    /// First batch to generate (= learner steps already done = version of `model_dir`).
    pub first_batch: u64,
    /// One past the last batch.
    pub end_batch: u64,
    /// The population each batch is generated with (evolution strategies); `None`: the plain policy.
    pub population: Option<Arc<dyn BatchPopulation>>,
    /// The held-out evaluation, run on the worker's engine for versions published with `evaluate`.
    pub evaluation: Option<Evaluation>,
    /// Evaluate the starting weights (`first_batch`'s version) before generating anything.
    pub evaluate_first: bool,
    /// Installed on top of `model_dir` before anything is generated or evaluated: what the learner's
    /// state adds to the weights on disk (a LoRA adapter: [`super::learners::RunLearner::initial_update`]).
    pub initial_update: Option<WeightUpdate>,
}

/// The `eval/*` metrics of one evaluation, or the worker's error.
type EvalResult = Result<BTreeMap<String, f64>, String>;

/// The learner's handle on the worker thread.
pub struct RolloutWorker {
    batches: Option<Receiver<Result<RolloutBatch, String>>>,
    weights: Option<Sender<PublishedWeights>>,
    evaluations: Option<Receiver<EvalResult>>,
    handle: Option<JoinHandle<()>>,
}

/// SplitMix64 of `(seed, index)`: the seed of one example draw or one batch's sampling.
pub fn mix(seed: u64, index: u64) -> u64 {
    alp_envs::rng::mix(seed ^ 0x5851_F42D_4C95_7F2Du64.wrapping_mul(index.wrapping_add(1)))
}

/// The examples of batch `b`: a pure function of (seed, b), so the data cursor is the step itself.
pub fn batch_examples(
    env: &dyn Environment,
    seed: u64,
    batch: u64,
    prompts: usize,
) -> Result<Vec<Example>, String> {
    (0..prompts as u64)
        .map(|j| {
            env.example(Split::Train, mix(seed, batch * prompts as u64 + j))
                .map_err(|e| format!("env {}: drawing an example: {e}", env.name()))
        })
        .collect()
}

impl RolloutWorker {
    pub fn spawn(settings: RolloutWorkerSettings) -> Self {
        // Batch b needs version b - s, published after step b - s; the worker is thus at most s + 1
        // batches ahead, which is the queue's bound.
        let (batch_tx, batches) = mpsc::sync_channel(settings.max_staleness as usize + 1);
        let (weights_tx, weights_rx) = mpsc::channel();
        let (eval_tx, evaluations) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("rollout-0".into())
            .spawn(move || {
                // A panic in the worker (outside an episode: drawing examples, libtorch) must reach
                // the learner with its message, not as a silently closed channel.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker(settings, &batch_tx, weights_rx, &eval_tx)
                }));
                let error = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(panic) => Some(format!(
                        "the rollout worker panicked: {}",
                        alp_rollout::panic_message(panic)
                    )),
                };
                if let Some(e) = error {
                    // The learner may already be gone; then nobody needs the error. It may be
                    // waiting for a batch or for an evaluation: tell both.
                    let _ = eval_tx.send(Err(e.clone()));
                    let _ = batch_tx.send(Err(e));
                }
            })
            .expect("spawning the rollout thread");
        RolloutWorker {
            batches: Some(batches),
            weights: Some(weights_tx),
            evaluations: Some(evaluations),
            handle: Some(handle),
        }
    }

    /// The next batch, in order; blocks until the worker has produced it.
    pub fn next_batch(&self) -> Result<RolloutBatch, RolloutWorkerError> {
        let rx = self.batches.as_ref().ok_or(RolloutWorkerError::Stopped)?;
        match rx.recv() {
            Ok(Ok(batch)) => Ok(batch),
            Ok(Err(e)) => Err(RolloutWorkerError::Worker(e)),
            Err(_) => Err(RolloutWorkerError::Stopped),
        }
    }

    /// The metrics of the oldest evaluation not yet taken (the starting weights' with
    /// `evaluate_first`, then each version published with `evaluate`); blocks until it has run.
    pub fn evaluation(&self) -> Result<BTreeMap<String, f64>, RolloutWorkerError> {
        let rx = self
            .evaluations
            .as_ref()
            .ok_or(RolloutWorkerError::Stopped)?;
        match rx.recv() {
            Ok(Ok(metrics)) => Ok(metrics),
            Ok(Err(e)) => Err(RolloutWorkerError::Worker(e)),
            Err(_) => Err(RolloutWorkerError::Stopped),
        }
    }

    /// Sends `update` (the learner's new weights: [`super::learners::RunLearner::weight_update`]);
    /// with `evaluate`, the worker evaluates them as soon as it installs them.
    pub fn publish(&self, update: WeightUpdate, evaluate: bool) {
        if let Some(tx) = &self.weights {
            // A worker that has produced its last batch has exited; nothing more to send it.
            let _ = tx.send(PublishedWeights { update, evaluate });
        }
    }
}

impl Drop for RolloutWorker {
    fn drop(&mut self) {
        // Closing both channels unblocks the worker wherever it waits; it exits once its current
        // generate call returns.
        self.weights.take();
        self.batches.take();
        self.evaluations.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn worker(
    s: RolloutWorkerSettings,
    out: &SyncSender<Result<RolloutBatch, String>>,
    weights: Receiver<PublishedWeights>,
    evaluations: &Sender<EvalResult>,
) -> Result<(), String> {
    let _guard = tch::no_grad_guard();
    let tokenizer = Tokenizer::from_dir(&s.tokenizer_dir)
        .map_err(|e| format!("tokenizer in {}: {e}", s.tokenizer_dir.display()))?;
    // Published weights are copied straight into the backend's model (converted to its dtype): the
    // worker holds one copy of the model. A vLLM backend is synced to the starting weights here.
    let (mut backend, mut sync) = RolloutBackend::start(&s.backend, &s.model_dir, s.first_batch)?;
    if let Some(update) = &s.initial_update {
        sync = backend.install(update)?.or(sync);
    }
    let mut w = WorkerThread {
        s: &s,
        tokenizer,
        backend,
        evaluations,
    };
    if s.evaluate_first {
        w.evaluate(s.first_batch)?;
    }
    let mut version = s.first_batch;
    for b in s.first_batch..s.end_batch {
        let needed = b.saturating_sub(s.max_staleness).max(s.first_batch);
        let waited = Instant::now();
        while version < needed {
            let Ok(published) = weights.recv() else {
                return Ok(()); // the learner is done
            };
            version = published.update.version;
            if let Some(report) = w.receive(published, needed)? {
                sync = Some(report);
            }
        }
        let wait_weights_s = waited.elapsed().as_secs_f64();
        super::pause::point("rollout", b + 1);
        let started = Instant::now();
        let groups = w.generate(b)?;
        let batch = RolloutBatch {
            index: b,
            policy_version: version,
            groups,
            generate_s: started.elapsed().as_secs_f64(),
            wait_weights_s,
            sync: sync.take(),
            servers: w.backend.server_stats(),
        };
        if out.send(Ok(batch)).is_err() {
            return Ok(()); // the learner stopped
        }
    }
    // Every batch is out (no batch needs a version any more); the learner's last steps may still
    // publish versions to evaluate.
    for published in weights {
        w.receive(published, u64::MAX)?;
    }
    Ok(())
}

/// What the worker thread holds between batches.
struct WorkerThread<'a> {
    s: &'a RolloutWorkerSettings,
    tokenizer: Tokenizer,
    backend: RolloutBackend,
    evaluations: &'a Sender<EvalResult>,
}

impl WorkerThread<'_> {
    /// Evaluates the weights the backend holds, `version`, and sends the metrics to the learner.
    fn evaluate(&mut self, version: u64) -> Result<(), String> {
        let evaluation = self.s.evaluation.as_ref().ok_or_else(|| {
            format!("version {version} was published for evaluation, but the run has no [eval]")
        })?;
        self.backend.set_members(None)?;
        let metrics = evaluation
            .run(self.backend.generation_backend(), &self.tokenizer, version)
            .map_err(|e| format!("evaluating version {version}: {e:#}"))?;
        // The learner may already be gone; then nobody needs the metrics.
        let _ = self.evaluations.send(Ok(metrics));
        Ok(())
    }

    /// Installs a published version when a batch needs it (`needed`) or it is to be evaluated, then
    /// evaluates it if asked. Versions arrive in order and each is received when a batch first needs
    /// it, so an evaluated version is also the one the next batch is generated with. Returns the
    /// vLLM sync's report, if one was made.
    fn receive(
        &mut self,
        published: PublishedWeights,
        needed: u64,
    ) -> Result<Option<SyncReport>, String> {
        let mut sync = None;
        let version = published.update.version;
        if version >= needed || published.evaluate {
            sync = self.backend.install(&published.update)?;
        }
        if published.evaluate {
            self.evaluate(version)?;
        }
        Ok(sync)
    }

    /// Generates batch `b`: `prompts_per_step` examples, `group_size` episodes each, on the weights
    /// installed (and with the population's members, for evolution strategies); on one rank of
    /// several, the groups of its share, each row drawing the random stream it has in the whole batch.
    fn generate(&mut self, b: u64) -> Result<Vec<Vec<Trajectory>>, String> {
        let s = self.s;
        let mine = super::ranks::share(s.prompts_per_step, s.rank, s.world_size);
        let rows = (mine.start * s.group_size)..(mine.end * s.group_size);
        let examples = batch_examples(s.env.as_ref(), s.seed, b, s.prompts_per_step)?;
        let expanded: Vec<Example> = examples[mine.clone()]
            .iter()
            .flat_map(|e| std::iter::repeat_n(e.clone(), s.group_size))
            .collect();
        let params = SamplingParams {
            seed: mix(s.seed ^ 0xA5A5_5A5A, b),
            first_stream: rows.start as u64,
            ..s.params.clone()
        };
        // Each row's member, every turn of its episode (the noise is rebuilt from its seeds).
        let members = match &s.population {
            Some(p) => {
                let (hooks, members) = p.for_batch(b);
                self.backend.set_members(Some(hooks))?;
                Some(members[rows].to_vec())
            }
            None => None,
        };
        let trajectories = run_member_episodes(
            self.backend.generation_backend(),
            &self.tokenizer,
            s.env.as_ref(),
            &expanded,
            members.as_deref(),
            &params,
            &s.episode,
        )
        .map_err(|e| format!("batch {b}: {e}"))?;
        let mut groups = Vec::with_capacity(mine.len());
        let mut it = trajectories.into_iter();
        for _ in mine {
            groups.push(it.by_ref().take(s.group_size).collect());
        }
        Ok(groups)
    }
}
