//! Where and how the ranks of one job meet: torchrun's environment conventions.
use std::time::Duration;

use crate::error::{DistError, Result};

/// The default timeout of the rendezvous and of every collective: long enough for a slow step of a
/// peer, short enough that a dead or hung peer ends the run in minutes (torch.distributed's Gloo
/// default is 30 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One rank's view of the job: who it is and where rank 0's TCPStore listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank, `0..world_size`; rank 0 hosts the TCPStore.
    pub rank: usize,
    /// The number of processes.
    pub world_size: usize,
    /// The rank on this machine (selects the GPU); equal to `rank` on one machine.
    pub local_rank: usize,
    /// Host of rank 0's TCPStore.
    pub master_addr: String,
    /// Port of rank 0's TCPStore.
    pub master_port: u16,
    /// How long the rendezvous and each collective wait for the other ranks before failing.
    pub timeout: Duration,
    /// torchrun's agent already hosts the TCPStore at `master_addr:master_port`
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`): every rank, rank 0 included, connects as a client.
    /// Otherwise rank 0 starts the store.
    pub agent_store: bool,
}

impl Rendezvous {
    /// The rendezvous torchrun describes through `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`
    /// and `MASTER_PORT` (`LOCAL_RANK` defaults to `RANK`; `TORCHELASTIC_USE_AGENT_STORE=True` sets
    /// [`Rendezvous::agent_store`]), with [`DEFAULT_TIMEOUT`]. A missing or unparsable variable is
    /// an error naming it.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Rendezvous::from_env`] reading the variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &'static str| var(name).ok_or(DistError::MissingEnv { var: name });
        let number = |name: &'static str, value: String| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|e| DistError::InvalidEnv {
                    var: name,
                    value: value.clone(),
                    reason: e.to_string(),
                })
        };
        let rank = number("RANK", get("RANK")?)?;
        let world_size = number("WORLD_SIZE", get("WORLD_SIZE")?)?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", v)?,
            None => rank,
        };
        let master_addr = get("MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            return Err(DistError::InvalidEnv {
                var: "MASTER_ADDR",
                value: master_addr,
                reason: "empty host".into(),
            });
        }
        let port = get("MASTER_PORT")?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .map_err(|e| DistError::InvalidEnv {
                var: "MASTER_PORT",
                value: port.clone(),
                reason: e.to_string(),
            })?;
        let r = Self {
            rank,
            world_size,
            local_rank,
            master_addr: master_addr.trim().to_string(),
            master_port,
            timeout: DEFAULT_TIMEOUT,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
        };
        r.validate().map_err(|reason| DistError::InvalidEnv {
            var: "RANK",
            value: rank.to_string(),
            reason,
        })?;
        Ok(r)
    }

    /// The same rendezvous with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the rank, world size, port and timeout can work together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.world_size == 0 {
            return Err("WORLD_SIZE is 0".into());
        }
        if self.rank >= self.world_size {
            return Err(format!(
                "rank {} is not below the world size {}",
                self.rank, self.world_size
            ));
        }
        if self.master_port == 0 {
            return Err("MASTER_PORT is 0".into());
        }
        if self.timeout.is_zero() {
            return Err("the timeout is zero".into());
        }
        Ok(())
    }

    /// A rendezvous on this machine (loopback), rank 0 hosting the store, with [`DEFAULT_TIMEOUT`].
    pub fn local(rank: usize, world_size: usize, master_port: u16) -> Self {
        Self {
            rank,
            world_size,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port,
            timeout: DEFAULT_TIMEOUT,
            agent_store: false,
        }
    }

    /// Whether this rank starts the TCPStore (rank 0, unless torchrun's agent hosts it).
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// Whether every rank's traffic stays on this machine's loopback interface (`MASTER_ADDR` is
    /// 127.0.0.1, ::1 or localhost): Gloo then binds to that address instead of the hostname's.
    pub fn is_loopback(&self) -> bool {
        matches!(self.master_addr.as_str(), "127.0.0.1" | "::1" | "localhost")
            || self.master_addr.starts_with("127.")
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}
