//! Multi-process test plumbing: the test binary (harness = false) is both the parent that runs the
//! tests and, re-executed with `ALP_DIST_TEST_ROLE` set, one rank of a test. Ports are taken free at
//! run time; every child is killed when a test overruns its deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use alp_dist::Rendezvous;

/// The variable that makes the test binary run one rank's role instead of the tests.
pub const ROLE: &str = "ALP_DIST_TEST_ROLE";
/// The rendezvous and collective timeout a rank uses, in seconds.
pub const TIMEOUT: &str = "ALP_DIST_TEST_TIMEOUT_S";
/// A folder the parent shares with its ranks.
pub const DIR: &str = "ALP_DIST_TEST_DIR";

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts rank `rank` of `world` running `role`, with torchrun's variables.
pub fn spawn_rank(
    role: &str,
    rank: usize,
    world: usize,
    port: u16,
    timeout_s: u64,
    env: &[(&str, String)],
) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, role)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env(TIMEOUT, timeout_s.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// What one finished rank left.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Panics with the rank's output unless it exited 0.
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Waits for `child` until `deadline`; kills it (and panics) past it.
pub fn wait(mut child: Child, deadline: Instant) -> Finished {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stdout = String::new();
            let mut stderr = String::new();
            if let Some(mut o) = child.stdout.take() {
                o.read_to_string(&mut stdout).unwrap();
            }
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut stderr).unwrap();
            }
            return Finished {
                status,
                stdout,
                stderr,
            };
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("a rank overran its deadline and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `role` on `world` ranks and waits for all of them (at most `limit`), asserting each exited 0.
pub fn run_ranks(
    role: &str,
    world: usize,
    timeout_s: u64,
    env: &[(&str, String)],
    limit: Duration,
) -> Vec<Finished> {
    let port = free_port();
    let children: Vec<Child> = (0..world)
        .map(|r| spawn_rank(role, r, world, port, timeout_s, env))
        .collect();
    let deadline = Instant::now() + limit;
    let done: Vec<Finished> = children.into_iter().map(|c| wait(c, deadline)).collect();
    for (r, f) in done.iter().enumerate() {
        f.assert_ok(&format!("{role} rank {r}"));
    }
    done
}

/// Reads `child`'s stdout until a line equal to `marker` (panics if it ends first).
pub fn wait_for_line(child: &mut Child, marker: &str) -> BufReader<std::process::ChildStdout> {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "child ended before {marker:?}"
        );
        if line.trim() == marker {
            return reader;
        }
    }
}

/// The rendezvous of a rank started by [`spawn_rank`].
pub fn rendezvous() -> Rendezvous {
    let timeout: u64 = std::env::var(TIMEOUT).unwrap().parse().unwrap();
    Rendezvous::from_env()
        .unwrap()
        .with_timeout(Duration::from_secs(timeout))
}

/// The test binary's main: one rank's role when [`ROLE`] is set, else every test whose name contains
/// the first non-flag argument (all without one), each caught, with a libtest-like summary.
pub fn main(tests: &[(&str, fn())], roles: &[(&str, fn())]) {
    tch::set_num_threads(1);
    if let Ok(role) = std::env::var(ROLE) {
        let f = roles
            .iter()
            .find(|(n, _)| *n == role)
            .unwrap_or_else(|| panic!("unknown role {role}"));
        (f.1)();
        return;
    }
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let chosen: Vec<_> = tests
        .iter()
        .filter(|(n, _)| filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    println!("running {} tests", chosen.len());
    let mut failed = Vec::new();
    for (name, f) in chosen {
        let start = Instant::now();
        let ok = std::panic::catch_unwind(f).is_ok();
        println!(
            "test {name} ... {} ({:.1} s)",
            if ok { "ok" } else { "FAILED" },
            start.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(*name);
        }
    }
    if failed.is_empty() {
        println!("test result: ok");
    } else {
        println!("test result: FAILED: {failed:?}");
        std::process::exit(1);
    }
}
