//! Starting N ranks on this machine (what `alp-rl train --nproc N` needs): the program is started N
//! times with torchrun's variables, and when one rank fails the others are given a grace period to
//! notice (their next collective fails) and then ended, so the launch never outlives its ranks.
use std::ffi::OsString;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{DistError, Result};

/// Set in every rank a [`LocalLaunch`] starts, so the program can tell it is a rank, not the launcher.
pub const LAUNCHED_VAR: &str = "ALP_DIST_LAUNCHED";

/// N copies of a program on this machine, rendezvousing over loopback.
#[derive(Debug, Clone)]
pub struct LocalLaunch {
    /// The number of ranks.
    pub nproc: usize,
    /// The program (usually `std::env::current_exe()`).
    pub program: OsString,
    /// Its arguments (the same for every rank).
    pub args: Vec<OsString>,
    /// Extra environment variables for every rank.
    pub env: Vec<(OsString, OsString)>,
    /// How long the other ranks may take to end by themselves after one failed, before they are
    /// killed (their collectives' timeout, plus a margin, is a good value).
    pub grace: Duration,
}

/// How one rank ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankExit {
    /// The rank.
    pub rank: usize,
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether the launcher killed it (it outlived the grace period after another rank failed).
    pub killed_by_launcher: bool,
}

impl LocalLaunch {
    /// `nproc` ranks of `program args`, with a 60 s grace period.
    pub fn new(nproc: usize, program: impl Into<OsString>, args: Vec<OsString>) -> Self {
        Self {
            nproc,
            program: program.into(),
            args,
            env: Vec::new(),
            grace: Duration::from_secs(60),
        }
    }

    /// Starts the ranks (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR=127.0.0.1`, a free
    /// `MASTER_PORT`, and [`LAUNCHED_VAR`]) and waits for all of them. `Ok` with every rank's exit
    /// when all succeeded; otherwise [`DistError::RankFailed`] naming the first rank that failed
    /// and how (the others are ended within the grace period).
    pub fn run(&self) -> Result<Vec<RankExit>> {
        if self.nproc == 0 {
            return Err(DistError::Rendezvous("--nproc must be at least 1".into()));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| DistError::Launch(format!("no free port on 127.0.0.1: {e}")))?
            .port();
        let mut children = Vec::with_capacity(self.nproc);
        for rank in 0..self.nproc {
            match self.spawn(rank, port) {
                Ok(c) => children.push(Some(c)),
                Err(e) => {
                    children.iter_mut().flatten().for_each(|c: &mut Child| {
                        c.kill().ok();
                        c.wait().ok();
                    });
                    return Err(e);
                }
            }
        }
        self.supervise(children)
    }

    fn spawn(&self, rank: usize, port: u16) -> Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", self.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env(LAUNCHED_VAR, "1")
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        cmd.spawn().map_err(|e| {
            DistError::Launch(format!(
                "cannot start rank {rank} ({}): {e}",
                self.program.to_string_lossy()
            ))
        })
    }

    /// Polls the ranks until all ended; after the first failure, kills those still running once
    /// the grace period is over.
    fn supervise(&self, mut children: Vec<Option<Child>>) -> Result<Vec<RankExit>> {
        let mut exits: Vec<Option<RankExit>> = vec![None; children.len()];
        let mut first_failure: Option<(usize, Instant)> = None;
        while exits.iter().any(Option::is_none) {
            for (rank, slot) in children.iter_mut().enumerate() {
                let Some(child) = slot else { continue };
                let Ok(Some(status)) = child.try_wait() else {
                    continue;
                };
                exits[rank] = Some(RankExit {
                    rank,
                    status,
                    killed_by_launcher: false,
                });
                *slot = None;
                if !status.success() && first_failure.is_none() {
                    first_failure = Some((rank, Instant::now()));
                }
            }
            if let Some((_, at)) = first_failure {
                if at.elapsed() > self.grace {
                    for (rank, slot) in children.iter_mut().enumerate() {
                        if let Some(mut child) = slot.take() {
                            child.kill().ok();
                            let status = child.wait().map_err(|e| {
                                DistError::Launch(format!("waiting for rank {rank}: {e}"))
                            })?;
                            exits[rank] = Some(RankExit {
                                rank,
                                status,
                                killed_by_launcher: true,
                            });
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let exits: Vec<RankExit> = exits.into_iter().flatten().collect();
        match first_failure {
            None => Ok(exits),
            Some((rank, _)) => Err(DistError::RankFailed {
                rank,
                world_size: self.nproc,
                how: describe(exits[rank].status),
                others: exits
                    .iter()
                    .filter(|e| e.rank != rank)
                    .map(|e| {
                        let end = if e.killed_by_launcher {
                            "killed by the launcher after the grace period".to_string()
                        } else {
                            describe(e.status)
                        };
                        format!("rank {}: {end}", e.rank)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// "exited with status 3", "killed by signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        None => format!("ended ({status})"),
    }
}
