//! One server as the backend tracks it (state, failures, counters), and the two things done to a
//! server as a whole: a verified sync, and the re-sync of a server that comes back.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alp_rollout::{ProbeReport, ReplicaHealth, ReplicaState};

use crate::client::{ServerClient, ServerFacts};
use crate::error::VllmError;
use crate::probe::{ProbeAnswer, ProbeReference, Tolerance};
use crate::protocol::CompletionRequest;
use crate::settings::{probe_tolerances, VllmSettings};

/// Where a server stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Answering, but not verified to hold the current weights: no work.
    Unsynced,
    /// Verified at `version`; takes work.
    Serving { version: u64 },
    /// Taken out; polled every `health_interval_s` from `next_check` on.
    Down {
        since: Instant,
        next_check: Instant,
        reason: String,
    },
    /// Being re-checked and, if it answers, re-synced; `reason` is why it was out.
    Recovering { since: Instant, reason: String },
}

/// A server and what the backend knows of it.
#[derive(Debug)]
pub struct Replica {
    pub client: ServerClient,
    pub facts: Option<ServerFacts>,
    pub state: State,
    /// Failures since the last success (one per incident: failures of requests already in flight
    /// when the server went into backoff do not count again).
    pub failures: u32,
    /// No new work before this (backoff after a failure).
    pub paused_until: Option<Instant>,
    pub outstanding: usize,
    /// Completions this server returned.
    pub served: usize,
    /// Times it was taken out, and times it came back.
    pub taken_out: usize,
    pub recovered: usize,
}

/// Counters of one server, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStats {
    pub server: String,
    pub serving: bool,
    pub version: Option<u64>,
    pub served: usize,
    pub taken_out: usize,
    pub recovered: usize,
}

impl Replica {
    pub fn new(client: ServerClient) -> Self {
        Replica {
            client,
            facts: None,
            state: State::Unsynced,
            failures: 0,
            paused_until: None,
            outstanding: 0,
            served: 0,
            taken_out: 0,
            recovered: 0,
        }
    }

    pub fn name(&self) -> &str {
        self.client.name()
    }

    pub fn serving_version(&self) -> Option<u64> {
        match self.state {
            State::Serving { version } => Some(version),
            _ => None,
        }
    }

    /// Takes the server out of dispatch until it answers again.
    pub fn take_out(&mut self, reason: String, settings: &VllmSettings) {
        let now = Instant::now();
        tracing::warn!(server = self.name(), %reason, "vLLM server taken out of dispatch");
        self.state = State::Down {
            since: now,
            next_check: now + VllmSettings::secs(settings.health_interval_s),
            reason,
        };
        self.taken_out += 1;
        self.failures = 0;
        self.paused_until = None;
    }

    /// Back in service at `version` after a verified (re-)sync.
    pub fn serve(&mut self, version: u64, facts: ServerFacts) {
        if let State::Recovering { since, .. } | State::Down { since, .. } = self.state {
            tracing::info!(
                server = self.name(),
                version,
                down_for_s = since.elapsed().as_secs_f64(),
                "vLLM server back: re-synced to the current weights and probed; it gets work again"
            );
            self.recovered += 1;
        }
        self.state = State::Serving { version };
        self.facts = Some(facts);
        self.failures = 0;
        self.paused_until = None;
    }

    pub fn health(&self) -> ReplicaHealth {
        let state = match &self.state {
            State::Serving { .. } => ReplicaState::Serving,
            State::Unsynced => ReplicaState::Unsynced,
            State::Recovering { .. } => ReplicaState::Unsynced,
            State::Down { reason, .. } => ReplicaState::Down {
                reason: reason.clone(),
            },
        };
        ReplicaHealth {
            name: self.name().to_string(),
            state,
            version: self.serving_version(),
        }
    }

    pub fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            server: self.name().to_string(),
            serving: self.serving_version().is_some(),
            version: self.serving_version(),
            served: self.served,
            taken_out: self.taken_out,
            recovered: self.recovered,
        }
    }
}

/// The weights every server must hold: their folder, version and probe answers.
#[derive(Debug, Clone)]
pub struct Current {
    pub version: u64,
    pub dir: PathBuf,
    pub reference: Arc<ProbeReference>,
    /// `Some(name)`: `dir` holds a LoRA adapter that servers load under `name` on top of the base
    /// they hold (requests then name it); `None`: `dir` holds every weight, reloaded in place.
    pub adapter: Option<String>,
}

/// What a sync task needs, owned (it runs as a task of its own).
#[derive(Debug, Clone)]
pub struct SyncJob {
    pub current: Current,
    pub sync_timeout: Duration,
    pub request_timeout: Duration,
    pub settings: Arc<VllmSettings>,
}

/// Pause, reload from the current folder, set the version, resume (for an adapter: load it under its
/// name and set the version); then check the version the server reports and its probe answers. Returns the server's facts (re-read: a restarted server
/// may run with other flags) and the probe comparison.
pub async fn sync_server(
    client: ServerClient,
    job: SyncJob,
) -> Result<(ServerFacts, ProbeReport), VllmError> {
    let mut facts = client.facts(job.sync_timeout).await?;
    let version = job.current.version;
    if let Some(name) = &job.current.adapter {
        crate::adapter_calls::load_on_server(
            &client,
            name,
            &job.current.dir,
            version,
            job.sync_timeout,
        )
        .await?;
        facts.model = name.clone();
        let report = probe(&client, &facts, &job).await?;
        crate::adapter_calls::unload_others(&client, name).await;
        return Ok((facts, report));
    }
    client.pause(job.sync_timeout).await?;
    let reloaded = client
        .reload_weights(&job.current.dir, job.sync_timeout)
        .await;
    // Resume whatever happened, so a failed reload does not leave the server paused.
    let versioned = match &reloaded {
        Ok(()) => client.set_version(&version.to_string()).await,
        Err(_) => Ok(()),
    };
    let resumed = client.resume().await;
    reloaded.map_err(|e| reload_failed(e, &job.current.dir, version))?;
    versioned?;
    resumed?;
    let reported = client.version().await?;
    if reported.as_deref() != Some(version.to_string().as_str()) {
        return Err(VllmError::SyncMismatch {
            server: client.name().to_string(),
            version,
            problem: format!("GET /weight_info reports version {reported:?}"),
        });
    }
    let report = probe(&client, &facts, &job).await?;
    Ok((facts, report))
}

/// A reload the server refused is not a fault of its availability: the files are wrong.
fn reload_failed(e: VllmError, dir: &Path, version: u64) -> VllmError {
    match e {
        VllmError::Status {
            server,
            status,
            body,
            ..
        } => VllmError::SyncMismatch {
            server,
            version,
            problem: format!(
                "reload_weights from {} answered HTTP {status}: {body}",
                dir.display()
            ),
        },
        other => other,
    }
}

/// Completes the probe prompts greedily and compares them with the reference.
async fn probe(
    client: &ServerClient,
    facts: &ServerFacts,
    job: &SyncJob,
) -> Result<ProbeReport, VllmError> {
    let reference = &job.current.reference;
    let mut answers = Vec::with_capacity(reference.rows.len());
    for row in &reference.rows {
        let request = CompletionRequest {
            model: facts.model.clone(),
            prompt: row.prompt.clone(),
            max_tokens: row.tokens.len(),
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
            stop_token_ids: Vec::new(),
            ignore_eos: true,
            logprobs: 0,
            return_token_ids: true,
            skip_special_tokens: false,
            cache_salt: format!("probe-v{}", reference.version),
        };
        let choice = client.complete(&request, job.request_timeout).await?;
        let tokens = choice.token_ids.unwrap_or_default();
        let logprobs = choice
            .logprobs
            .map(|l| {
                l.token_logprobs
                    .into_iter()
                    .map(|x| x.unwrap_or(f64::NAN) as f32)
                    .collect()
            })
            .unwrap_or_default();
        answers.push(ProbeAnswer { tokens, logprobs });
    }
    let (max_abs, mean_abs) = probe_tolerances(&job.settings, &facts.dtype);
    let mut report = reference.compare(client.name(), &answers, Tolerance { max_abs, mean_abs })?;
    report.replica = client.name().to_string();
    tracing::debug!(
        server = client.name(),
        version = reference.version,
        tokens = report.tokens_compared,
        max_abs_diff = report.max_abs_logprob_diff,
        mean_abs_diff = report.mean_abs_logprob_diff,
        "probe passed"
    );
    Ok(report)
}

/// A server taken out that answers `/health` again is re-synced to `job`'s weights.
pub async fn recover_server(
    client: ServerClient,
    job: SyncJob,
) -> Result<(ServerFacts, ProbeReport), VllmError> {
    client.health().await?;
    sync_server(client, job).await
}
