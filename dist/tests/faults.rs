//! Faults on real processes: a rank killed with SIGKILL (rank 1, or rank 0 that hosts the store), a
//! rank that hangs, a rank that never comes. The surviving rank's next call returns an error within
//! the configured timeout (plus the 1.5 s heartbeat watch; it never aborts or waits forever), and the
//! error says which collective failed, on which rank, and which rank looks dead or behind.
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alp_dist::{Backend, ProcessGroup, Rendezvous};
use tch::Tensor;

/// The timeout the ranks of these tests run with.
const TIMEOUT_S: u64 = 10;

fn flag() -> PathBuf {
    PathBuf::from(std::env::var(common::DIR).unwrap()).join("go")
}

/// Joins, passes one all-reduce, says `ready`, waits for the parent's flag file, then tries an
/// all-reduce again and prints how long the failure took.
fn role_survivor() {
    let group = ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap();
    let t = Tensor::from_slice(&[1.0f32; 1000]);
    group.all_reduce_sum(std::slice::from_ref(&t)).unwrap();
    println!("ready");
    while !flag().exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let result = group.all_reduce_sum(std::slice::from_ref(&t));
    let elapsed = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => println!("unexpected success after {elapsed:.2} s"),
        Err(e) => println!("failed after {elapsed:.2} s: {e}"),
    }
}

/// Joins, passes one all-reduce, says `ready`, then sleeps (killed, or hung past the timeout).
fn role_idle() {
    let group = ProcessGroup::new(common::rendezvous(), Backend::Gloo).unwrap();
    let t = Tensor::from_slice(&[1.0f32; 1000]);
    group.all_reduce_sum(std::slice::from_ref(&t)).unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
}

/// Seconds the survivor's failing call took, and its error message.
fn parse_failure(stdout: &str) -> (f64, String) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("failed after "))
        .unwrap_or_else(|| panic!("no failure reported:\n{stdout}"));
    let rest = line.trim_start_matches("failed after ");
    let (secs, message) = rest.split_once(" s: ").unwrap();
    (secs.parse().unwrap(), message.to_string())
}

/// Rank `victim` of two is killed (SIGKILL) or left hanging after a first collective; the other
/// then calls one.
fn survivor_sees(kill: bool, victim: usize) -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let env = [(common::DIR, dir.path().display().to_string())];
    let port = common::free_port();
    let mut survivor = common::spawn_rank("survivor", 1 - victim, 2, port, TIMEOUT_S, &env);
    let mut idle = common::spawn_rank("idle", victim, 2, port, TIMEOUT_S, &env);
    let survivor_out = common::wait_for_line(&mut survivor, "ready");
    let _idle_out = common::wait_for_line(&mut idle, "ready");
    if kill {
        idle.kill().unwrap(); // SIGKILL
        idle.wait().unwrap();
    }
    std::fs::write(dir.path().join("go"), b"").unwrap();
    survivor.stdout = Some(survivor_out.into_inner());
    let done = common::wait(
        survivor,
        Instant::now() + Duration::from_secs(TIMEOUT_S + 30),
    );
    idle.kill().ok();
    idle.wait().ok();
    done.assert_ok("survivor");
    parse_failure(&done.stdout)
}

/// The survivor's error comes at once (Gloo sees the closed connection), after the heartbeat watch
/// that names the dead rank.
fn a_killed_rank_fails_the_next_collective_within_the_timeout() {
    let (secs, message) = survivor_sees(true, 1);
    assert!(secs <= TIMEOUT_S as f64 + 2.0, "took {secs} s");
    assert!(
        message.starts_with("all_reduce_sum failed on rank 0 of 2"),
        "{message}"
    );
    assert!(
        message.contains("rank 1 stopped (no heartbeat for 1500 ms: dead or frozen)"),
        "{message}"
    );
    println!("  killed rank 1: {secs:.2} s: {message}");
}

/// Rank 0 hosts the TCPStore: when it dies, the survivor's error says the store is unreachable.
fn a_killed_rank_0_is_named_through_its_store() {
    let (secs, message) = survivor_sees(true, 0);
    assert!(secs <= TIMEOUT_S as f64 + 2.0, "took {secs} s");
    assert!(
        message.starts_with("all_reduce_sum failed on rank 1 of 2"),
        "{message}"
    );
    assert!(
        message.contains("the store on rank 0 is unreachable")
            || message.contains("rank 0 stopped"),
        "{message}"
    );
    println!("  killed rank 0: {secs:.2} s: {message}");
}

fn a_hung_rank_fails_the_next_collective_at_the_timeout() {
    let (secs, message) = survivor_sees(false, 1);
    assert!(
        secs >= TIMEOUT_S as f64 * 0.9 && secs <= TIMEOUT_S as f64 + 5.0,
        "took {secs} s for a {TIMEOUT_S} s timeout"
    );
    assert!(
        message.starts_with("all_reduce_sum failed on rank 0 of 2"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("timed out"), "{message}");
    assert!(
        message.contains(
            "rank 1 is alive but has not reached this collective (it entered 1, this is number 2)"
        ),
        "{message}"
    );
    println!("  hung peer: {secs:.2} s: {message}");
}

/// Rank 0 of two, alone: the rendezvous fails after the timeout with an error naming the address.
fn a_missing_rank_fails_the_rendezvous_at_the_timeout() {
    let port = common::free_port();
    let r = Rendezvous::local(0, 2, port).with_timeout(Duration::from_secs(3));
    let start = Instant::now();
    let e = ProcessGroup::new(r, Backend::Gloo).unwrap_err();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        (2.5..=10.0).contains(&secs),
        "took {secs} s for a 3 s timeout"
    );
    let message = e.to_string();
    assert!(
        message.starts_with(&format!(
            "rank 0 of 2 could not join the process group at 127.0.0.1:{port}"
        )),
        "{message}"
    );
    println!("  missing peer: {secs:.2} s: {message}");
}

fn main() {
    common::main(
        &[
            (
                "a_killed_rank_fails_the_next_collective_within_the_timeout",
                a_killed_rank_fails_the_next_collective_within_the_timeout,
            ),
            (
                "a_killed_rank_0_is_named_through_its_store",
                a_killed_rank_0_is_named_through_its_store,
            ),
            (
                "a_hung_rank_fails_the_next_collective_at_the_timeout",
                a_hung_rank_fails_the_next_collective_at_the_timeout,
            ),
            (
                "a_missing_rank_fails_the_rendezvous_at_the_timeout",
                a_missing_rank_fails_the_rendezvous_at_the_timeout,
            ),
        ],
        &[("survivor", role_survivor), ("idle", role_idle)],
    );
}
