//! `LocalLaunch` (N ranks of one program on this machine) and `ProcessGroup::agree`, on real
//! processes: ranks that agree train, ranks that differ are all refused with the difference; a rank
//! that exits with an error or is SIGKILLed ends the launch with an error naming it, and the other
//! rank, whose next collective fails, ends too.
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use alp_dist::{Backend, DistError, LocalLaunch, ProcessGroup};
use tch::Tensor;

fn out_file(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(common::DIR).unwrap()).join(name)
}

fn group() -> ProcessGroup {
    ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap()
}

/// Agrees on a world size and a config digest (rank 1's differs when `DISAGREE` is set) and writes
/// the outcome to `agree{rank}.txt`.
fn role_agree() {
    assert_eq!(std::env::var(alp_dist::LAUNCHED_VAR).as_deref(), Ok("1"));
    let g = group();
    let digest = if g.rank() == 1 && std::env::var("DISAGREE").is_ok() {
        "digest-b"
    } else {
        "digest-a"
    };
    let world = g.world_size().to_string();
    let outcome = match g.agree(&[("world_size", &world), ("config", digest)]) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    std::fs::write(out_file(&format!("agree{}.txt", g.rank())), outcome).unwrap();
}

/// Rank 1 fails after a first collective (`FAIL=exit`: exits with status 3; `FAIL=kill`: SIGKILLs
/// itself; `FAIL=exit_and_hang`: exits while rank 0 hangs); rank 0 tries another collective, writes its error to `survivor.txt` and exits with 1, as
/// a trainer would.
fn role_fail() {
    let g = group();
    let t = Tensor::from_slice(&[1.0f32; 16]);
    g.all_reduce_sum(std::slice::from_ref(&t)).unwrap();
    let fail = std::env::var("FAIL").unwrap();
    if g.rank() == 0 && fail == "exit_and_hang" {
        std::thread::sleep(Duration::from_secs(60));
    }
    if g.rank() == 1 {
        match fail.as_str() {
            "exit" | "exit_and_hang" => std::process::exit(3),
            _ => {
                let me = std::process::id().to_string();
                Command::new("kill").args(["-9", &me]).status().unwrap();
                std::thread::sleep(Duration::from_secs(60));
            }
        }
    }
    let e = g.all_reduce_sum(std::slice::from_ref(&t)).unwrap_err();
    std::fs::write(out_file("survivor.txt"), e.to_string()).unwrap();
    std::process::exit(1);
}

fn launch(role: &str, extra: &[(&str, &str)], dir: &tempfile::TempDir) -> LocalLaunch {
    let mut l = LocalLaunch::new(2, std::env::current_exe().unwrap(), Vec::new());
    let mut env = vec![
        (common::ROLE, role.to_string()),
        (common::TIMEOUT, "10".to_string()),
        (common::DIR, dir.path().display().to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    l.env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    l.grace = Duration::from_secs(30);
    l
}

fn agreeing_ranks_pass() {
    let dir = tempfile::tempdir().unwrap();
    let exits = launch("agree", &[], &dir).run().unwrap();
    assert_eq!(exits.len(), 2);
    for r in 0..2 {
        let got = std::fs::read_to_string(dir.path().join(format!("agree{r}.txt"))).unwrap();
        assert_eq!(got, "ok", "rank {r}");
    }
}

fn disagreeing_ranks_are_all_refused_with_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    launch("agree", &[("DISAGREE", "1")], &dir).run().unwrap();
    for r in 0..2 {
        let got = std::fs::read_to_string(dir.path().join(format!("agree{r}.txt"))).unwrap();
        assert_eq!(
            got, "ranks disagree: \"config\": rank 1 has \"digest-b\", rank 0 has \"digest-a\"",
            "rank {r}"
        );
    }
}

/// The launch's error names rank 1 and how it ended; rank 0's collective error names rank 1 too.
fn failed_launch(fail: &str) -> (String, String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let e = launch("fail", &[("FAIL", fail)], &dir).run().unwrap_err();
    let secs = start.elapsed().as_secs_f64();
    assert!(matches!(e, DistError::RankFailed { rank: 1, .. }), "{e}");
    let survivor = std::fs::read_to_string(dir.path().join("survivor.txt")).unwrap();
    (e.to_string(), survivor, secs)
}

fn a_rank_that_exits_with_an_error_ends_the_launch() {
    let (launch, survivor, secs) = failed_launch("exit");
    assert_eq!(
        launch,
        "rank 1 of 2 exited with status 3; rank 0: exited with status 1"
    );
    assert!(survivor.contains("rank 1 stopped"), "{survivor}");
    assert!(secs < 30.0, "took {secs} s");
}

fn a_sigkilled_rank_ends_the_launch() {
    let (launch, survivor, secs) = failed_launch("kill");
    assert_eq!(
        launch,
        "rank 1 of 2 killed by signal 9 (SIGKILL); rank 0: exited with status 1"
    );
    assert!(survivor.contains("rank 1 stopped"), "{survivor}");
    assert!(secs < 30.0, "took {secs} s");
}

/// A rank still running a grace period after another failed is killed by the launcher.
fn a_rank_outliving_the_grace_period_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = launch("fail", &[("FAIL", "exit_and_hang")], &dir);
    l.grace = Duration::from_secs(2);
    let start = Instant::now();
    let e = l.run().unwrap_err();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        e.to_string(),
        "rank 1 of 2 exited with status 3; rank 0: killed by the launcher after the grace period"
    );
    assert!(secs < 20.0, "took {secs} s (rank 0 sleeps 60 s)");
}

fn main() {
    common::main(
        &[
            ("agreeing_ranks_pass", agreeing_ranks_pass),
            (
                "disagreeing_ranks_are_all_refused_with_the_difference",
                disagreeing_ranks_are_all_refused_with_the_difference,
            ),
            (
                "a_rank_that_exits_with_an_error_ends_the_launch",
                a_rank_that_exits_with_an_error_ends_the_launch,
            ),
            (
                "a_sigkilled_rank_ends_the_launch",
                a_sigkilled_rank_ends_the_launch,
            ),
            (
                "a_rank_outliving_the_grace_period_is_killed",
                a_rank_outliving_the_grace_period_is_killed,
            ),
        ],
        &[("agree", role_agree), ("fail", role_fail)],
    );
}
