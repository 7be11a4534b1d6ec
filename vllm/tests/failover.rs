//! Two real vLLM servers (launched with the launcher component, used as external servers by the
//! backend), one SIGKILLed mid-generation and later restarted; then none answering. Three server
//! starts in all, so the steps run in order in one test.
mod common;

use std::time::{Duration, Instant};

use alp_rollout::{GenerationBackend, LogprobMode, ReplicaState, RolloutError, SamplingParams};
use alp_vllm::{
    launch_specs, wait_ready_blocking, ServerProcess, VllmBackend, VllmError, VllmSettings,
};
use common::*;

const TOL: f32 = 1e-4;

#[test]
fn two_servers_one_killed_and_restarted() {
    init_tracing();
    tch::set_num_threads(1);
    let tok = tokenizer();
    let vocab = tok.vocab_size() as i64;
    let work = tempfile::tempdir().unwrap();
    let model_dir = work.path().join("model");
    write_checkpoint(&model(&tok, 0), &tok, &model_dir);
    let mut launch = settings(&work.path().join("sync"), &work.path().join("logs"));
    launch.launch = true;
    launch.count = 2;
    launch.port = free_port();
    while !port_is_free(launch.port + 1) {
        launch.port = free_port();
    }
    let specs = launch_specs(&launch, &model_dir, LogprobMode::Temperature).unwrap();
    let mut servers: Vec<ServerProcess> = specs
        .iter()
        .map(|s| ServerProcess::start(s).unwrap())
        .collect();
    wait_ready_blocking(&mut servers, Duration::from_secs(900)).unwrap();

    let external = VllmSettings {
        servers: servers.iter().map(ServerProcess::url).collect(),
        launch: false,
        max_inflight_per_server: 16,
        unavailable_timeout_s: 8.0,
        retries: 2,
        backoff_initial_s: 0.2,
        ..launch.clone()
    };
    let mut backend = VllmBackend::new(external, None, LogprobMode::Temperature).unwrap();
    let v1 = model(&tok, 1);
    let report = backend.sync_weights(&v1, 1).unwrap();
    assert_eq!(report.probes.len(), 2, "both servers synced and probed");

    // Greedy, so that every row has one right answer whichever server computes it.
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 64,
        ..Default::default()
    };
    let reqs = short_and_long(64, vocab);

    // 1. SIGKILL server 1 while the rows are being generated: once it has finished two of them
    //    (its own request counter says so), with its long rows still running.
    let (victim_pid, victim_url) = (servers[1].pid(), servers[1].url());
    // The sync's probe requests count too.
    let before = finished_requests(&victim_url);
    let killer = std::thread::spawn(move || {
        let start = Instant::now();
        while finished_requests(&victim_url) < before + 2.0 {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "the victim never finished a row"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: signals the victim's process group, which the test started.
        unsafe { libc::kill(-(victim_pid as libc::pid_t), libc::SIGKILL) };
    });
    let theirs = backend.generate(&reqs, &params).unwrap();
    killer.join().unwrap();
    let victim_url = servers[1].url();
    let _ = servers[1].exited();
    assert_same(&local(&v1, &reqs, &params), &theirs, TOL);
    let stats = backend.stats();
    assert!(
        stats[1].served >= 2,
        "the victim served rows before it died: {stats:?}"
    );
    assert_eq!(
        stats[0].served + stats[1].served,
        reqs.len(),
        "no row lost or answered twice: {stats:?}"
    );
    assert_eq!(stats[1].taken_out, 1, "{stats:?}");
    assert!(!stats[1].serving);
    assert!(matches!(
        backend.health()[1].state,
        ReplicaState::Down { .. }
    ));

    // 2. A sync while it is down reaches the other server only.
    let v2 = model(&tok, 2);
    let report = backend.sync_weights(&v2, 2).unwrap();
    assert_eq!(report.probes.len(), 1);

    // 3. Restarted, it comes back with the checkpoint it was started from; it is re-synced to
    //    version 2 (and probed) before it serves: the rows it answers are version 2's.
    servers[1].kill();
    servers[1] = ServerProcess::start(&specs[1]).unwrap();
    wait_ready_blocking(&mut servers[1..], Duration::from_secs(900)).unwrap();
    //    The first call finds it answering and re-syncs it (before returning); the second spreads
    //    rows over both.
    let reqs = short_and_long(64, vocab);
    let reference = local(&v2, &reqs, &params);
    let theirs = backend.generate(&reqs, &params).unwrap();
    assert_same(&reference, &theirs, TOL);
    let stats = backend.stats();
    assert_eq!(stats[1].recovered, 1, "{stats:?}");
    assert_eq!(stats[1].version, Some(2));
    let served_before = stats[1].served;
    let theirs = backend.generate(&reqs, &params).unwrap();
    assert_same(&reference, &theirs, TOL);
    let stats = backend.stats();
    assert!(
        stats[1].served >= served_before + reqs.len() / 4,
        "the restarted server got its share: {stats:?}"
    );
    assert!(theirs.iter().all(|c| c.policy_version == 2));

    // 4. No server answers: a clear error within the configured time, naming both.
    servers[0].kill();
    servers[1].kill();
    let start = Instant::now();
    let e = backend.generate(&reqs[..4], &params).unwrap_err();
    let waited = start.elapsed();
    let RolloutError::Remote(inner) = e else {
        panic!("expected a vLLM error")
    };
    let e = inner.downcast::<VllmError>().unwrap();
    let text = e.to_string();
    assert!(matches!(*e, VllmError::NoServer { .. }), "{text}");
    assert!(
        text.contains(&servers[0].url()) && text.contains(&victim_url),
        "{text}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "gave up after {waited:?} (unavailable_timeout_s = 8)"
    );
    eprintln!("no server: {text}");
}

/// Rows of 6 and of 64 new tokens, two of each in turn: the first rows each server gets include
/// short ones (done before the kill) and long ones (cut by it).
fn short_and_long(n: usize, vocab: i64) -> Vec<alp_rollout::GenerationRequest> {
    let mut rows = requests(n, vocab, 64);
    for (i, row) in rows.iter_mut().enumerate() {
        row.max_new_tokens = Some(if i % 4 < 2 { 6 } else { 64 });
    }
    rows
}

/// Requests the server finished, summed over `vllm:request_success_total` in its `/metrics`.
fn finished_requests(url: &str) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = runtime.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().ok()?;
        let response = http.get(format!("{url}/metrics")).send().await.ok()?;
        response.text().await.ok()
    });
    text.unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("vllm:request_success_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}
