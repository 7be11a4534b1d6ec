//! [`VllmBackend`]: the rollout's [`GenerationBackend`] on one or more vLLM servers.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alp_policy::{parse_kind, CausalLM, ForwardHooks, NoHooks};
use alp_rollout::{
    Completion, FinishReason, GenerationBackend, GenerationRequest, LogprobMode, ProbeReport,
    ReplicaHealth, RolloutError, SamplingParams, SyncReport, WeightPayload, WeightUpdate,
};
use tokio::task::JoinSet;

use crate::client::{HttpClients, ServerClient};
use crate::dispatch::{self, check_facts, no_server, still_down, Row};
use crate::error::VllmError;
use crate::launch::{launch_specs, wait_ready, ServerProcess};
use crate::members::MemberAdapters;
use crate::probe::{probe_prompts, ProbeReference};
use crate::protocol::CompletionRequest;
use crate::replica::{recover_server, sync_server, Current, Replica, ReplicaStats, State, SyncJob};
use crate::settings::VllmSettings;
use crate::weights::SyncDir;

/// Generation on vLLM servers, with verified weight syncs and fail-over between servers.
///
/// Nothing is generated before the first sync: every completion is tagged with a version whose
/// weights a probe has confirmed on the server that produced it.
///
/// Weights arrive as a [`WeightUpdate`] ([`GenerationBackend::apply_update`]): the backend applies it
/// to its reference copy of the learner's weights ([`VllmBackend::with_reference`]), writes that copy
/// whole as a checkpoint (vLLM reloads a folder, so a subset update is written whole too) and probes
/// each server against it. [`GenerationBackend::sync_weights`] without a reference copy syncs to the
/// model it is given.
pub struct VllmBackend {
    pub(crate) settings: Arc<VllmSettings>,
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) replicas: Vec<Replica>,
    /// Servers we started (stopped when the backend is dropped).
    launched: Vec<ServerProcess>,
    sync_dir: SyncDir,
    pub(crate) current: Option<Current>,
    /// The population the calls generate with (EGGROLL), its members served as adapters.
    pub(crate) members: Option<MemberAdapters>,
    /// Populations installed so far: numbers each one's adapter names.
    pub(crate) populations: u64,
    /// The learner's weights as the servers should hold them: updates are applied here, written from
    /// here and probed against; `None` until [`VllmBackend::with_reference`].
    reference: Option<CausalLM>,
}

impl VllmBackend {
    /// Connects to `settings.servers`, or with `launch` starts `count` servers on `model_dir` (the
    /// checkpoint being trained) and waits until they are ready. Launched servers compute log-probs
    /// as `logprob_mode` records them ([`ServerLogprobsMode::for_rollout`]).
    pub fn new(
        settings: VllmSettings,
        model_dir: Option<&Path>,
        logprob_mode: LogprobMode,
    ) -> Result<Self, VllmError> {
        settings.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| VllmError::Runtime(e.to_string()))?;
        let http = HttpClients::new()?;
        let sync_dir = SyncDir::new(settings.sync_dir.as_deref().expect("validated"))?;
        let mut launched = Vec::new();
        let urls: Vec<String> = if settings.launch {
            let model_dir = model_dir.ok_or_else(|| VllmError::Setting {
                field: "launch",
                problem: "is true but no model folder was given to serve".into(),
            })?;
            for spec in launch_specs(&settings, model_dir, logprob_mode)? {
                launched.push(ServerProcess::start(&spec)?);
            }
            runtime.block_on(wait_ready(
                &mut launched,
                &http,
                VllmSettings::secs(settings.ready_timeout_s),
            ))?;
            launched.iter().map(ServerProcess::url).collect()
        } else {
            settings.servers.clone()
        };
        let mut replicas: Vec<Replica> = urls
            .iter()
            .map(|url| Replica::new(ServerClient::new(url, &http)))
            .collect();
        let settings = Arc::new(settings);
        let facts_timeout = VllmSettings::secs(settings.sync_timeout_s);
        runtime.block_on(async {
            for replica in replicas.iter_mut() {
                match replica.client.facts(facts_timeout).await {
                    Ok(facts) => replica.facts = Some(facts),
                    Err(e) if e.is_transient() => replica.take_out(e.to_string(), &settings),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        Ok(VllmBackend {
            settings,
            runtime,
            replicas,
            launched,
            sync_dir,
            current: None,
            members: None,
            populations: 0,
            reference: None,
        })
    }

    /// The same backend keeping `reference` (the learner's weights, in the learner's dtype; the
    /// probe's forward runs on it) as the copy that weight updates are applied to.
    pub fn with_reference(mut self, reference: CausalLM) -> Self {
        self.reference = Some(reference);
        self
    }

    /// Syncs every server to the reference copy as it is now, as `version` (the starting weights, or
    /// after an update was applied to it).
    pub fn sync_reference(&mut self, version: u64) -> Result<SyncReport, RolloutError> {
        let reference = self.reference.take().ok_or_else(|| {
            RolloutError::Backend(
                "the vLLM backend holds no reference copy of the learner's weights to apply \
                 updates to (VllmBackend::with_reference)"
                    .into(),
            )
        })?;
        let report = self.write_and_sync(&reference, version);
        self.reference = Some(reference);
        report
    }

    /// Writes `weights` to `<sync_dir>/v<version>/`, reloads them on every server in parallel and
    /// verifies each (reported version, probe against `weights`); then removes the previous
    /// version's folder.
    fn write_and_sync(
        &mut self,
        weights: &CausalLM,
        version: u64,
    ) -> Result<SyncReport, RolloutError> {
        let start = Instant::now();
        let kind = match &self.settings.sync_dtype {
            Some(name) => Some(parse_kind(name).map_err(|e| VllmError::Setting {
                field: "sync_dtype",
                problem: e.to_string(),
            })?),
            None => None,
        };
        let dir = self.sync_dir.write(weights, version, kind)?;
        let bytes = crate::weights::bytes_in(&dir);
        let probes = self.sync_from_dir(&dir, version, weights)?;
        self.sync_dir.prune(&dir)?;
        Ok(SyncReport {
            version,
            probes,
            seconds: start.elapsed().as_secs_f64(),
            bytes,
        })
    }

    /// Per-server counters: completions served, times taken out and back.
    pub fn stats(&self) -> Vec<ReplicaStats> {
        self.replicas.iter().map(Replica::stats).collect()
    }

    /// The servers this backend started, e.g. to read their logs.
    pub fn launched(&self) -> &[ServerProcess] {
        &self.launched
    }

    /// The folder the current weights were synced from.
    pub fn current_dir(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.dir.as_path())
    }

    /// The folder weights of `version` are written to by a sync.
    pub fn version_dir(&self, version: u64) -> PathBuf {
        self.sync_dir.version_dir(version)
    }

    /// Syncs every server to the checkpoint already written in `dir`, verified against `reference`
    /// (the learner's model, whose weights `dir` must hold). A sync is this after writing.
    pub fn sync_from_dir(
        &mut self,
        dir: &Path,
        version: u64,
        reference: &CausalLM,
    ) -> Result<Vec<ProbeReport>, VllmError> {
        let probe = self.probe_reference(reference, &NoHooks, version);
        self.sync_to(dir, version, probe, None)
    }

    /// The probe's greedy answers of `model` with `hooks` (an adapter) as `version`.
    pub(crate) fn probe_reference(
        &self,
        model: &CausalLM,
        hooks: &dyn ForwardHooks,
        version: u64,
    ) -> ProbeReference {
        let prompts = probe_prompts(model.config().vocab_size, self.settings.probe_prompts);
        ProbeReference::compute_with(model, hooks, version, &prompts, self.settings.probe_tokens)
    }

    /// The reference copy updates are applied to ([`VllmBackend::with_reference`]).
    pub(crate) fn reference_model(&self) -> Result<&CausalLM, RolloutError> {
        self.reference.as_ref().ok_or_else(|| {
            RolloutError::Backend(
                "the vLLM backend holds no reference copy of the learner's weights to apply \
                 updates to (VllmBackend::with_reference)"
                    .into(),
            )
        })
    }

    /// The sync folder (versions, and the population's adapters).
    pub(crate) fn sync_root(&self) -> &Path {
        self.sync_dir.root()
    }

    /// Removes the sync folder's versions other than `keep`.
    pub(crate) fn prune_sync_dir(&self, keep: &Path) -> Result<(), VllmError> {
        self.sync_dir.prune(keep)
    }

    /// Syncs every server to `dir` as `version` (whole weights, or the adapter served as `adapter`),
    /// each verified against `probe`.
    pub(crate) fn sync_to(
        &mut self,
        dir: &Path,
        version: u64,
        probe: ProbeReference,
        adapter: Option<String>,
    ) -> Result<Vec<ProbeReport>, VllmError> {
        let dir = dir.canonicalize().map_err(|e| VllmError::WriteWeights {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        // Until this sync is verified, nothing may be attributed to any version.
        self.current = None;
        let job = self.job(Current {
            version,
            dir,
            reference: Arc::new(probe),
            adapter,
        });
        let outcome = self
            .runtime
            .block_on(sync_all(&mut self.replicas, &job, true))
            .map_err(|e| self.with_exits(e));
        match outcome {
            Ok(reports) => {
                self.current = Some(job.current);
                Ok(reports)
            }
            Err(e) => {
                for replica in self.replicas.iter_mut() {
                    if !matches!(replica.state, State::Down { .. }) {
                        replica.state = State::Unsynced;
                    }
                }
                Err(e)
            }
        }
    }

    /// Re-syncs, now, the servers taken out that answer again (generation also does this by
    /// itself every `health_interval_s`). Returns how many came back.
    pub fn recover(&mut self) -> Result<usize, VllmError> {
        let Some(current) = self.current.clone() else {
            return Ok(0);
        };
        let job = self.job(current);
        let before: usize = self.replicas.iter().map(|r| r.recovered).sum();
        self.runtime
            .block_on(sync_all(&mut self.replicas, &job, false))?;
        Ok(self.replicas.iter().map(|r| r.recovered).sum::<usize>() - before)
    }

    /// A no-server error, with the exit status and log end of every launched server that has
    /// exited: such a server will not answer again by itself (a crashed engine, a killed process).
    fn with_exits(&mut self, e: VllmError) -> VllmError {
        if !matches!(e, VllmError::NoServer { .. }) {
            return e;
        }
        let exits: Vec<String> = self
            .launched
            .iter_mut()
            .filter_map(|p| {
                let status = p.exited()?;
                Some(format!(
                    "launched server {} exited ({status}); the end of its log {}:\n{}",
                    p.url(),
                    p.spec().log.display(),
                    p.log_tail(12)
                ))
            })
            .collect();
        if exits.is_empty() {
            e
        } else {
            VllmError::LaunchedExited {
                error: Box::new(e),
                exits: exits.join("\n"),
            }
        }
    }

    pub(crate) fn job(&self, current: Current) -> SyncJob {
        SyncJob {
            current,
            sync_timeout: VllmSettings::secs(self.settings.sync_timeout_s),
            request_timeout: VllmSettings::secs(self.settings.request_timeout_s),
            settings: self.settings.clone(),
        }
    }

    fn rows(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        version: u64,
    ) -> Result<Vec<Row>, VllmError> {
        let context = self.max_context();
        let mut rows = Vec::with_capacity(requests.len());
        for (index, r) in requests.iter().enumerate() {
            let reject = |message: String| VllmError::Rejected {
                server: "(checked before sending)".into(),
                index,
                message,
            };
            if r.prompt_ids.is_empty() {
                return Err(reject("the prompt is empty".into()));
            }
            let max_tokens = r.max_new_tokens.unwrap_or(params.max_new_tokens);
            if let Some(ctx) = context.filter(|&c| r.prompt_ids.len() + max_tokens > c) {
                return Err(reject(format!(
                    "the prompt is {} tokens and max_new_tokens is {max_tokens}, more than the \
                     servers' context of {ctx} tokens (--max-model-len); shorten the prompt or \
                     lower max_new_tokens",
                    r.prompt_ids.len()
                )));
            }
            let stop = r
                .stop_token_ids
                .clone()
                .unwrap_or_else(|| params.stop_token_ids.clone());
            rows.push(Row {
                index,
                stop: stop.clone(),
                request: CompletionRequest {
                    // A population member's adapter, or (empty) the served model, set per server
                    // at dispatch.
                    model: self.member_model(r.member)?.unwrap_or_default(),
                    prompt: r.prompt_ids.clone(),
                    max_tokens,
                    temperature: if params.greedy {
                        0.0
                    } else {
                        params.temperature
                    },
                    top_p: if params.greedy { 1.0 } else { params.top_p },
                    top_k: if params.greedy { 0 } else { params.top_k },
                    min_p: 0.0,
                    repetition_penalty: 1.0,
                    presence_penalty: 0.0,
                    frequency_penalty: 0.0,
                    seed: (params.row_seed(r.stream_or(index)) & i64::MAX as u64) as i64,
                    stop_token_ids: stop,
                    ignore_eos: true,
                    logprobs: 0,
                    return_token_ids: true,
                    skip_special_tokens: false,
                    cache_salt: format!("v{version}"),
                },
            });
        }
        Ok(rows)
    }

    fn generate_rows(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>, VllmError> {
        let current = self.current.clone().ok_or(VllmError::NotSynced)?;
        for replica in &self.replicas {
            if let Some(facts) = &replica.facts {
                check_facts(replica.name(), facts, params)?;
            }
        }
        let rows = self.rows(requests, params, current.version)?;
        // Rows with nothing to generate finish here, as in the local engine.
        let (empty, work): (Vec<Row>, Vec<Row>) =
            rows.into_iter().partition(|r| r.request.max_tokens == 0);
        let job = self.job(current);
        let done = self
            .runtime
            .block_on(dispatch::run(&mut self.replicas, &work, &job, params))
            .map_err(|e| self.with_exits(e))?;
        let mut out: Vec<Option<Completion>> = vec![None; requests.len()];
        for row in empty {
            out[row.index] = Some(Completion {
                prompt_ids: row.request.prompt,
                completion_ids: Vec::new(),
                logprobs: Vec::new(),
                finish_reason: FinishReason::Length,
                policy_version: job.current.version,
            });
        }
        for (row, completion) in work.iter().zip(done) {
            out[row.index] = Some(completion);
        }
        Ok(out.into_iter().map(|c| c.expect("every row")).collect())
    }
}

type SyncOutcome = (
    usize,
    Result<(crate::client::ServerFacts, ProbeReport), VllmError>,
);

/// Syncs the servers to `job` in parallel: all of them (`everyone`), or only those taken out. A
/// server that does not answer is taken out; a verification failure fails the whole sync. With
/// `everyone`, waits up to `unavailable_timeout_s` for at least one server to take the weights.
async fn sync_all(
    replicas: &mut [Replica],
    job: &SyncJob,
    everyone: bool,
) -> Result<Vec<ProbeReport>, VllmError> {
    let settings = &*job.settings;
    let start = Instant::now();
    let mut reports = Vec::new();
    let mut first_round = true;
    loop {
        let mut tasks: JoinSet<SyncOutcome> = JoinSet::new();
        for (rid, replica) in replicas.iter_mut().enumerate() {
            let (client, job) = (replica.client.clone(), job.clone());
            match replica.state {
                State::Down { .. } | State::Recovering { .. } => {
                    tasks.spawn(async move { (rid, recover_server(client, job).await) });
                }
                _ if everyone && first_round => {
                    tasks.spawn(async move { (rid, sync_server(client, job).await) });
                }
                _ => {}
            }
        }
        let mut fatal = None;
        while let Some(done) = tasks.join_next().await {
            let (rid, outcome) = done.map_err(|e| VllmError::Runtime(format!("sync task: {e}")))?;
            let replica = &mut replicas[rid];
            match outcome {
                Ok((facts, report)) => {
                    tracing::info!(
                        server = replica.name(),
                        version = job.current.version,
                        probe_tokens = report.tokens_compared,
                        probe_max_abs_diff = report.max_abs_logprob_diff,
                        probe_mean_abs_diff = report.mean_abs_logprob_diff,
                        "vLLM server synced and probed"
                    );
                    replica.serve(job.current.version, facts);
                    reports.push(report);
                }
                Err(e) if e.is_transient() => match replica.state {
                    State::Down { .. } | State::Recovering { .. } => {
                        still_down(replica, e.to_string(), settings)
                    }
                    _ => replica.take_out(e.to_string(), settings),
                },
                Err(e) => {
                    tracing::error!(server = replica.name(), error = %e, "weight sync failed");
                    fatal.get_or_insert(e);
                }
            }
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        first_round = false;
        let serving = replicas
            .iter()
            .any(|r| r.serving_version() == Some(job.current.version));
        if !everyone || serving {
            return Ok(reports);
        }
        let waited = start.elapsed();
        if waited >= VllmSettings::secs(settings.unavailable_timeout_s) {
            return Err(no_server("weight sync", waited.as_secs_f64(), replicas));
        }
        tokio::time::sleep(VllmSettings::secs(settings.health_interval_s)).await;
    }
}

impl GenerationBackend for VllmBackend {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>, RolloutError> {
        params.validate()?;
        // Population members (EGGROLL) are served as adapters, loaded when first named.
        let members: Vec<usize> = requests.iter().filter_map(|r| r.member).collect();
        if !members.is_empty() {
            self.load_members(&members)?;
        }
        let _span = tracing::info_span!("vllm_generate", requests = requests.len()).entered();
        Ok(self.generate_rows(requests, params)?)
    }

    fn policy_version(&self) -> u64 {
        self.current.as_ref().map_or(0, |c| c.version)
    }

    /// The smallest `max_model_len` of the servers.
    fn max_context(&self) -> Option<usize> {
        self.replicas
            .iter()
            .filter_map(|r| r.facts.as_ref()?.max_model_len)
            .min()
    }

    /// Applies `update` to the reference copy, then syncs the servers to it
    /// ([`VllmBackend::sync_reference`]); an adapter is loaded by the servers on top of their base
    /// instead ([`VllmBackend::sync_adapter`]).
    fn apply_update(&mut self, update: &WeightUpdate) -> Result<SyncReport, RolloutError> {
        if let WeightPayload::Adapter { config, tensors } = &update.payload {
            return self.sync_adapter(update.version, config, tensors);
        }
        if let Some(reference) = &self.reference {
            update.apply_to(reference)?;
        }
        self.sync_reference(update.version)
    }

    /// With a reference copy, [`GenerationBackend::apply_update`] of all of `weights`; without one,
    /// syncs the servers to `weights` themselves (written, reloaded, probed against them).
    fn sync_weights(
        &mut self,
        weights: &CausalLM,
        version: u64,
    ) -> Result<SyncReport, RolloutError> {
        if self.reference.is_some() {
            return self.apply_update(&WeightUpdate::view_of(weights, version));
        }
        self.write_and_sync(weights, version)
    }

    /// Asks every server `/health`: one that stopped answering is taken out, one taken out that
    /// answers again is reported as such (it is re-synced before its next work).
    fn health(&mut self) -> Vec<ReplicaHealth> {
        let settings = self.settings.clone();
        self.runtime.block_on(async {
            for replica in self.replicas.iter_mut() {
                let answered = replica.client.health().await;
                match (&replica.state, answered) {
                    (State::Down { since, .. }, Ok(())) => {
                        replica.state = State::Down {
                            since: *since,
                            next_check: Instant::now(),
                            reason: "answers again; re-synced before its next work".into(),
                        };
                    }
                    (State::Down { .. }, Err(_)) => {}
                    (_, Err(e)) => replica.take_out(e.to_string(), &settings),
                    (_, Ok(())) => {}
                }
            }
        });
        self.replicas.iter().map(Replica::health).collect()
    }
}

#[cfg(test)]
mod tests {
    /// The train loop moves its backend onto the rollout thread.
    #[test]
    fn the_backend_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<super::VllmBackend>();
    }
}
