//! What a step leaves in the logs besides the learner's metrics: the backend's sync and server numbers,
//! the one-line summary on stderr, and the rollout files a resumed run redoes.
use std::collections::BTreeMap;

use alp_learner::metric_names as names;
use anyhow::Result;

use super::messages::RolloutBatch;
use crate::run_dir::RunDir;

/// The sync metrics of a batch (every backend) and the vLLM probe and server metrics.
pub(super) fn backend_metrics(batch: &RolloutBatch) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    // Every row has `sync/bytes`: 0 when the batch's weights were installed for an earlier batch.
    m.insert(names::SYNC_BYTES.into(), 0.0);
    if let Some(sync) = &batch.sync {
        let probes = &sync.probes;
        let most =
            |f: fn(&alp_rollout::ProbeReport) -> f64| probes.iter().map(f).fold(f64::NAN, f64::max);
        m.insert(names::SYNC_S.into(), sync.seconds);
        m.insert(names::SYNC_BYTES.into(), sync.bytes as f64);
        // An in-process copy (the local engine) has no server and nothing probed.
        if !probes.is_empty() {
            m.insert(names::SYNC_SERVERS_PROBED.into(), probes.len() as f64);
            m.insert(
                names::SYNC_PROBE_MAX_ABS_DIFF.into(),
                most(|p| p.max_abs_logprob_diff),
            );
            m.insert(
                names::SYNC_PROBE_MEAN_ABS_DIFF.into(),
                most(|p| p.mean_abs_logprob_diff),
            );
        }
    }
    if !batch.servers.is_empty() {
        let count = |f: fn(&alp_vllm::ReplicaStats) -> usize| {
            batch.servers.iter().map(f).sum::<usize>() as f64
        };
        m.insert(
            names::VLLM_SERVERS_SERVING.into(),
            count(|s| usize::from(s.serving)),
        );
        m.insert(names::VLLM_TAKEN_OUT.into(), count(|s| s.taken_out));
        m.insert(names::VLLM_RECOVERED.into(), count(|s| s.recovered));
    }
    m
}

/// Every rollout file after step `step` (redone on resume), also those of a crashed attempt that
/// got further than this run's `run.steps`.
pub(super) fn remove_rollouts_after(run: &RunDir, step: u64) -> Result<()> {
    if !run.rollouts_dir().exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(run.rollouts_dir())? {
        let path = entry?.path();
        let file_step = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            n.strip_prefix("step-")?
                .strip_suffix(".parquet")?
                .parse::<u64>()
                .ok()
        });
        if file_step.is_some_and(|s| s > step) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The one-line summary of a step on stderr: a progress bar and the numbers people watch.
pub(super) fn summary_line(
    step: u64,
    steps: u64,
    m: &BTreeMap<String, f64>,
    learner_metrics: &[(&str, &str)],
) -> String {
    const WIDTH: u64 = 20;
    let done = (step * WIDTH / steps.max(1)) as usize;
    let bar = format!("{}{}", "#".repeat(done), "-".repeat(WIDTH as usize - done));
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let learner: String = learner_metrics
        .iter()
        .map(|(label, key)| format!(" | {label} {:.3e}", get(key)))
        .collect();
    format!(
        "step {step}/{steps} [{bar}] {:.1} samples/s | reward {:.3} | acc {:.3}{learner} | \
         staleness {} | {:.2}s",
        get(names::THROUGHPUT_SAMPLES_PER_S),
        get(names::REWARD_MEAN),
        get(names::ACC),
        get(names::STALENESS_MAX),
        get(names::TIME_STEP_S),
    )
}
