//! Spreading rows over the servers: least outstanding first, one HTTP request per row, so a failed
//! row can go to another server on its own. A failing server is paused for a doubling backoff and
//! sent one request at a time; after `retries` failures, or at once when it refuses the connection
//! (nothing listens: it is down, not slow), it is taken out, its unanswered rows go to the others,
//! and it is polled until it answers, then re-synced and probed before it gets work again.
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use alp_rollout::{Completion, FinishReason, SamplingParams};
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};

use crate::client::ServerFacts;
use crate::error::VllmError;
use crate::logprobs::incompatibility;
use crate::protocol::{CompletionChoice, CompletionRequest};
use crate::replica::{recover_server, Replica, State, SyncJob};
use crate::settings::VllmSettings;

/// Longest sleep of the dispatch loop between looks at the servers.
const TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// One row of a `generate` call.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its index in the call (errors name it).
    pub index: usize,
    pub request: CompletionRequest,
    pub stop: Vec<i64>,
}

type CallOutcome = (usize, usize, Result<CompletionChoice, VllmError>);
type RecoveryOutcome = (
    usize,
    Result<(ServerFacts, alp_rollout::ProbeReport), VllmError>,
);

/// Whether a server's log-prob mode can serve `params` (an error names the server and the fix).
pub fn check_facts(
    server: &str,
    facts: &ServerFacts,
    params: &SamplingParams,
) -> Result<(), VllmError> {
    match incompatibility(facts.logprobs_mode, params) {
        None => Ok(()),
        Some(problem) => Err(VllmError::Incompatible {
            server: server.to_string(),
            problem,
        }),
    }
}

/// Completes every row on the serving replicas; the result is in row order.
pub async fn run(
    replicas: &mut [Replica],
    rows: &[Row],
    job: &SyncJob,
    params: &SamplingParams,
) -> Result<Vec<Completion>, VllmError> {
    let mut d = Dispatch::new(replicas.len(), rows, job);
    loop {
        let now = Instant::now();
        d.start_recoveries(replicas, now);
        d.send_pending(replicas, now);
        if d.pending.is_empty() && d.calls.is_empty() {
            break;
        }
        d.check_available(replicas, now)?;
        tokio::select! {
            Some(done) = d.calls.join_next_with_id() => d.call_done(replicas, done)?,
            Some(done) = d.recoveries.join_next() => {
                let (rid, outcome) =
                    done.map_err(|e| VllmError::Runtime(format!("re-sync task: {e}")))?;
                finish_recovery(&mut replicas[rid], outcome, d.version, params, &job.settings)?;
            }
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    d.finish(replicas, params).await
}

/// One [`run`] under way: rows waiting for a server, requests in flight, re-syncs of servers that
/// were taken out.
struct Dispatch<'a> {
    rows: &'a [Row],
    job: &'a SyncJob,
    version: u64,
    /// Attempts after which a row fails the call.
    max_attempts: u32,
    results: Vec<Option<Completion>>,
    /// Rows to send, the next first.
    pending: VecDeque<usize>,
    attempts: Vec<u32>,
    calls: JoinSet<CallOutcome>,
    /// Each request in flight: (row, replica, handle to abort it if the replica is taken out).
    call_of: HashMap<Id, (usize, usize, AbortHandle)>,
    recoveries: JoinSet<RecoveryOutcome>,
    /// Since when no server has served the version, with no request in flight.
    unavailable_since: Option<Instant>,
}

impl<'a> Dispatch<'a> {
    fn new(servers: usize, rows: &'a [Row], job: &'a SyncJob) -> Self {
        Dispatch {
            rows,
            job,
            version: job.current.version,
            max_attempts: (job.settings.retries + 2) * servers as u32,
            results: vec![None; rows.len()],
            pending: (0..rows.len()).collect(),
            attempts: vec![0u32; rows.len()],
            calls: JoinSet::new(),
            call_of: HashMap::new(),
            recoveries: JoinSet::new(),
            unavailable_since: None,
        }
    }

    /// Starts re-syncing each server taken out whose next check is due.
    fn start_recoveries(&mut self, replicas: &mut [Replica], now: Instant) {
        for (rid, replica) in replicas.iter_mut().enumerate() {
            if let State::Down {
                since,
                next_check,
                ref reason,
            } = replica.state
            {
                if next_check <= now {
                    let reason = reason.clone();
                    replica.state = State::Recovering { since, reason };
                    let (client, job) = (replica.client.clone(), self.job.clone());
                    self.recoveries
                        .spawn(async move { (rid, recover_server(client, job).await) });
                }
            }
        }
    }

    /// Sends waiting rows, in order, to the least busy servers that may take one now.
    fn send_pending(&mut self, replicas: &mut [Replica], now: Instant) {
        let request_timeout = self.job.request_timeout;
        while let Some(&row) = self.pending.front() {
            let Some(rid) = pick(replicas, self.version, now, &self.job.settings) else {
                break;
            };
            self.pending.pop_front();
            let client = replicas[rid].client.clone();
            let mut request = self.rows[row].request.clone();
            if let (Some(facts), true) = (&replicas[rid].facts, request.model.is_empty()) {
                // Each server's own served name (they may differ); a population member's rows
                // name its adapter instead.
                request.model = facts.model.clone();
            }
            let handle = self.calls.spawn(async move {
                let outcome = client.complete(&request, request_timeout).await;
                (row, rid, outcome)
            });
            self.call_of.insert(handle.id(), (row, rid, handle));
            replicas[rid].outstanding += 1;
        }
    }

    /// Fails the call once no server has served the version, with nothing in flight, for
    /// `unavailable_timeout_s`.
    fn check_available(&mut self, replicas: &[Replica], now: Instant) -> Result<(), VllmError> {
        let serving = replicas
            .iter()
            .any(|r| r.serving_version() == Some(self.version));
        if serving || !self.calls.is_empty() {
            self.unavailable_since = None;
            return Ok(());
        }
        let since = *self.unavailable_since.get_or_insert(now);
        let waited = now - since;
        if waited >= VllmSettings::secs(self.job.settings.unavailable_timeout_s) {
            return Err(no_server("generation", waited.as_secs_f64(), replicas));
        }
        Ok(())
    }

    /// Takes the answer of a finished (or aborted) request: a completion, a retry elsewhere, or an
    /// error for the caller.
    fn call_done(
        &mut self,
        replicas: &mut [Replica],
        done: Result<(Id, CallOutcome), JoinError>,
    ) -> Result<(), VllmError> {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(e) if e.is_cancelled() => (e.id(), None),
            Err(e) => return Err(VllmError::Runtime(format!("request task: {e}"))),
        };
        let (row, rid, _) = self.call_of.remove(&id).expect("every call is registered");
        replicas[rid].outstanding -= 1;
        let Some((_, _, outcome)) = outcome else {
            // Aborted because its server was taken out.
            self.pending.push_front(row);
            return Ok(());
        };
        let server = replicas[rid].name().to_string();
        let completion = outcome
            .and_then(|choice| to_completion(choice, &self.rows[row], self.version, &server));
        match completion {
            Ok(c) => {
                self.results[row] = Some(c);
                let replica = &mut replicas[rid];
                replica.failures = 0;
                replica.served += 1;
                Ok(())
            }
            Err(e) if e.is_transient() || matches!(e, VllmError::Protocol { .. }) => {
                self.retry(replicas, row, rid, server, e)
            }
            Err(VllmError::Status { status, body, .. }) => Err(VllmError::Rejected {
                server,
                index: self.rows[row].index,
                message: format!("HTTP {status}: {body}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Puts `row` back first in line after its request to server `rid` failed with `e` (the call
    /// fails after too many attempts); a server taken out for it has its other requests aborted.
    fn retry(
        &mut self,
        replicas: &mut [Replica],
        row: usize,
        rid: usize,
        server: String,
        e: VllmError,
    ) -> Result<(), VllmError> {
        self.attempts[row] += 1;
        if self.attempts[row] > self.max_attempts {
            return Err(VllmError::Rejected {
                server,
                index: self.rows[row].index,
                message: format!(
                    "failed {} times on the servers, last: {e}",
                    self.attempts[row]
                ),
            });
        }
        self.pending.push_front(row);
        if on_failure(&mut replicas[rid], &e, &self.job.settings) {
            for (_, owner, handle) in self.call_of.values() {
                if *owner == rid {
                    handle.abort();
                }
            }
        }
        Ok(())
    }

    /// Every row is done: waits for the re-syncs under way, then returns the completions in order.
    async fn finish(
        mut self,
        replicas: &mut [Replica],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>, VllmError> {
        // A re-sync under way is finished (bounded by its timeouts) rather than cut: a server left
        // paused mid-sync would only be re-synced again, and the caller learns of a failed probe now.
        while let Some(done) = self.recoveries.join_next().await {
            let (rid, outcome) =
                done.map_err(|e| VllmError::Runtime(format!("re-sync task: {e}")))?;
            finish_recovery(
                &mut replicas[rid],
                outcome,
                self.version,
                params,
                &self.job.settings,
            )?;
        }
        Ok(self
            .results
            .into_iter()
            .map(|c| c.expect("every row completed"))
            .collect())
    }
}

/// A re-sync's outcome: back in service, still down, or (a failed probe, an incompatible server) an
/// error for the caller.
fn finish_recovery(
    replica: &mut Replica,
    outcome: Result<(ServerFacts, alp_rollout::ProbeReport), VllmError>,
    version: u64,
    params: &SamplingParams,
    settings: &VllmSettings,
) -> Result<(), VllmError> {
    match outcome {
        Ok((facts, _report)) => {
            check_facts(replica.name(), &facts, params)?;
            replica.serve(version, facts);
            Ok(())
        }
        Err(e) if e.is_transient() => {
            still_down(replica, e.to_string(), settings);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The serving replica with the fewest requests in flight, if any may take one now.
fn pick(
    replicas: &[Replica],
    version: u64,
    now: Instant,
    settings: &VllmSettings,
) -> Option<usize> {
    replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.serving_version() == Some(version))
        .filter(|(_, r)| r.paused_until.is_none_or(|t| t <= now))
        .filter(|(_, r)| {
            // A server that failed gets one request at a time until one succeeds.
            let cap = if r.failures > 0 {
                1
            } else {
                settings.max_inflight_per_server
            };
            r.outstanding < cap
        })
        .min_by_key(|(_, r)| r.outstanding)
        .map(|(i, _)| i)
}

/// Counts a failure (once per incident) and pauses or takes out the server; returns whether it
/// was taken out.
fn on_failure(replica: &mut Replica, e: &VllmError, settings: &VllmSettings) -> bool {
    let now = Instant::now();
    if replica.serving_version().is_none() || replica.paused_until.is_some_and(|t| now < t) {
        return false;
    }
    replica.failures += 1;
    if replica.failures > settings.retries || e.is_refused() {
        replica.take_out(
            format!("{} failures in a row, last: {e}", replica.failures),
            settings,
        );
        return true;
    }
    let backoff = settings.backoff(replica.failures);
    tracing::warn!(
        server = replica.name(),
        failures = replica.failures,
        backoff_s = backoff.as_secs_f64(),
        error = %e,
        "vLLM request failed; retrying after a backoff"
    );
    replica.paused_until = Some(now + backoff);
    false
}

/// A server that still does not answer is polled again later.
pub fn still_down(replica: &mut Replica, reason: String, settings: &VllmSettings) {
    let since = match replica.state {
        State::Down { since, .. } | State::Recovering { since, .. } => since,
        _ => Instant::now(),
    };
    replica.state = State::Down {
        since,
        next_check: Instant::now() + VllmSettings::secs(settings.health_interval_s),
        reason,
    };
}

/// The error when no server answered in time: every server and why it is out.
pub fn no_server(during: &'static str, waited_s: f64, replicas: &[Replica]) -> VllmError {
    let servers = replicas
        .iter()
        .map(|r| match &r.state {
            State::Down { reason, .. } | State::Recovering { reason, .. } => {
                format!("{} ({reason})", r.name())
            }
            State::Unsynced => format!("{} (not synced)", r.name()),
            State::Serving { version } => format!("{} (at version {version})", r.name()),
        })
        .collect::<Vec<_>>()
        .join("; ");
    VllmError::NoServer {
        during,
        waited_s,
        servers,
    }
}

/// A server's answer as the rollout's [`Completion`]: token ids, one log-prob each, why it ended.
fn to_completion(
    choice: CompletionChoice,
    row: &Row,
    version: u64,
    server: &str,
) -> Result<Completion, VllmError> {
    let bad = |problem: String| VllmError::Protocol {
        server: server.to_string(),
        call: "completions",
        problem: format!("request {}: {problem}", row.index),
    };
    let ids = choice
        .token_ids
        .ok_or_else(|| bad("no token_ids (does the server support return_token_ids?)".into()))?;
    if let Some(prompt) = &choice.prompt_token_ids {
        if *prompt != row.request.prompt {
            return Err(bad("the server saw another prompt than the one sent".into()));
        }
    }
    let logprobs: Vec<f32> = choice
        .logprobs
        .ok_or_else(|| bad("no logprobs".into()))?
        .token_logprobs
        .into_iter()
        .map(|lp| lp.map(|x| x as f32))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("a sampled token has no log-prob".into()))?;
    if logprobs.len() != ids.len() {
        return Err(bad(format!(
            "{} log-probs for {} tokens",
            logprobs.len(),
            ids.len()
        )));
    }
    let finish_reason = match choice.finish_reason.as_deref() {
        Some("length") => FinishReason::Length,
        Some("stop") => {
            if !ids.last().is_some_and(|t| row.stop.contains(t)) {
                return Err(bad(format!(
                    "finished with \"stop\" (stop_reason {:?}) without ending on one of our stop \
                     tokens",
                    choice.stop_reason
                )));
            }
            FinishReason::Stop
        }
        other => {
            // `abort` (a pause with mode=abort elsewhere) and the like: the row must be redone.
            return Err(VllmError::Unreachable {
                server: server.to_string(),
                call: "completions",
                message: format!("request {} ended with finish_reason {other:?}", row.index),
                refused: false,
            });
        }
    };
    Ok(Completion {
        prompt_ids: row.request.prompt.clone(),
        completion_ids: ids,
        logprobs,
        finish_reason,
        policy_version: version,
    })
}
