//! A test hook for crash tests: `ALP_RL_PAUSE_AT=phase:step[,phase:step...]` makes the trainer log
//! `ALP_RL_PAUSE_AT reached` and stop forever at that point, so a test can SIGKILL the process at a
//! precise place (mid-rollout, mid-update, mid-checkpoint write) instead of at a random time.
//! Unset (always, outside tests), a pause point costs one lookup. In a run on several ranks,
//! `ALP_RL_PAUSE_RANK=r` pauses rank `r` alone (its `RANK`), and the log line names the process id
//! to kill.
use std::sync::OnceLock;

fn points() -> &'static [(String, u64)] {
    static POINTS: OnceLock<Vec<(String, u64)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let rank = std::env::var("RANK").unwrap_or_else(|_| "0".into());
        if std::env::var("ALP_RL_PAUSE_RANK").is_ok_and(|r| r != rank) {
            return Vec::new();
        }
        std::env::var("ALP_RL_PAUSE_AT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| {
                let (phase, step) = p.trim().split_once(':')?;
                Some((phase.to_string(), step.parse().ok()?))
            })
            .collect()
    })
}

/// Stops here forever if `phase:step` was asked for.
pub fn point(phase: &str, step: u64) {
    if points().iter().any(|(p, s)| p == phase && *s == step) {
        tracing::warn!(
            phase,
            step,
            pid = std::process::id(),
            "ALP_RL_PAUSE_AT reached"
        );
        loop {
            std::thread::park();
        }
    }
}
