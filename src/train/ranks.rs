//! A run on several processes (ranks; docs/scale-out.md): data parallelism through c10d (Gloo on
//! CPUs, NCCL on GPUs) over the `alp-dist` binding. Every rank runs the same loop:
//!
//! - it generates its share of each batch ([`share`]: contiguous whole groups, each row drawing from
//!   the random stream it has in the whole batch), then every rank gets every share
//!   ([`Ranks::gather_groups`]), so each holds the whole batch, checked to be the same batch;
//! - it trains on its part of every mini-batch ([`training_groups`]), gradients and loss
//!   denominators summed at the learner's gradient-sync seam, so every replica makes the update one
//!   process makes on the whole batch; the learner's metric sums are gathered too;
//! - rank 0 alone writes the run directory (metrics, rollouts, checkpoints) and evaluates; every
//!   rank resumes from it.
//!
//! One process is the same code with [`Ranks::single`]: every collective is a no-op.
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alp_dist::{Backend, DistSync, ProcessGroup, Rendezvous};
use alp_learner::GradientSync;
use alp_rollout::Trajectory;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// torchrun's variable that says the process is one rank of several.
pub const WORLD_SIZE_VAR: &str = "WORLD_SIZE";

/// The ranks of this run, as this process sees them.
#[derive(Clone, Default)]
pub struct Ranks {
    group: Option<Arc<ProcessGroup>>,
}

impl std::fmt::Debug for Ranks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.rank(), self.world_size())
    }
}

/// One rank's share of a batch, as every rank receives it.
#[derive(Serialize, Deserialize)]
struct Share {
    batch: u64,
    policy_version: u64,
    groups: Vec<Vec<Trajectory>>,
}

impl Ranks {
    /// One process.
    pub fn single() -> Self {
        Self::default()
    }

    /// Joins the other ranks when torchrun's variables say this process is one of several
    /// (`WORLD_SIZE` set: a rank of `alp-rl train --nproc N` or of torchrun), through c10d's
    /// TCPStore; Gloo on a CPU `device`, NCCL on CUDA. `timeout` bounds the rendezvous and every
    /// collective (a rank that died or hangs ends the run on every rank, named). Otherwise one process.
    pub fn from_env(device: tch::Device, timeout: Duration) -> Result<Self> {
        if std::env::var_os(WORLD_SIZE_VAR).is_none() {
            return Ok(Self::single());
        }
        let rendezvous = Rendezvous::from_env()?.with_timeout(timeout);
        let (rank, world) = (rendezvous.rank, rendezvous.world_size);
        let group = ProcessGroup::new(rendezvous, Backend::for_device(device))
            .with_context(|| format!("rank {rank} of {world}: joining the other ranks"))?;
        tracing::info!(rank, world_size = world, backend = ?group.backend(), "joined the ranks of the run");
        Ok(Self {
            group: Some(Arc::new(group)),
        })
    }

    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rank())
    }

    pub fn world_size(&self) -> usize {
        self.group.as_ref().map_or(1, |g| g.world_size())
    }

    /// Rank 0: the one that writes the run directory and evaluates.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// More than one rank.
    pub fn is_distributed(&self) -> bool {
        self.world_size() > 1
    }

    /// The learner's gradient sync over the ranks (`None` in one process).
    pub fn gradient_sync(&self) -> Option<Box<dyn GradientSync>> {
        self.group
            .as_ref()
            .map(|g| Box::new(DistSync::new(g.clone())) as Box<dyn GradientSync>)
    }

    /// Waits until every rank is here (`what` names the point in the error of a rank that never
    /// comes).
    pub fn barrier(&self, what: &str) -> Result<()> {
        if let Some(g) = &self.group {
            g.barrier()
                .with_context(|| format!("waiting for every rank {what}"))?;
        }
        Ok(())
    }

    /// Every rank's `bytes`, in rank order (one process: its own).
    pub fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        match &self.group {
            Some(g) => Ok(g.all_gather_bytes(bytes)?),
            None => Ok(vec![bytes.to_vec()]),
        }
    }

    /// Refuses to go on unless every rank has the same `items` (the error names each difference).
    pub fn agree(&self, items: &[(&str, &str)]) -> Result<()> {
        if let Some(g) = &self.group {
            g.agree(items).context("the ranks of this run differ")?;
        }
        Ok(())
    }

    /// Every rank's share of batch `batch` (generated with `policy_version`), concatenated in rank
    /// order: the whole batch, on every rank. Fails, naming the rank, when a rank sent another batch
    /// or version: no rank trains on a batch the others did not.
    pub fn gather_groups(
        &self,
        batch: u64,
        policy_version: u64,
        groups: Vec<Vec<Trajectory>>,
    ) -> Result<Vec<Vec<Trajectory>>> {
        let Some(g) = &self.group else {
            return Ok(groups);
        };
        let mine = serde_json::to_vec(&Share {
            batch,
            policy_version,
            groups,
        })?;
        let all = g
            .all_gather_bytes(&mine)
            .with_context(|| format!("gathering the rollouts of batch {batch} from every rank"))?;
        let mut whole = Vec::new();
        for (rank, bytes) in all.iter().enumerate() {
            let share: Share = serde_json::from_slice(bytes)
                .with_context(|| format!("reading the rollouts rank {rank} sent"))?;
            if (share.batch, share.policy_version) != (batch, policy_version) {
                bail!(
                    "rank {rank} sent batch {} of policy version {}, rank {} has batch {batch} of \
                     version {policy_version}: the ranks are out of step",
                    share.batch,
                    share.policy_version,
                    self.rank()
                );
            }
            whole.extend(share.groups);
        }
        Ok(whole)
    }
}

/// The contiguous share `[r n / w, (r + 1) n / w)` of `n` items that rank `r` of `w` takes.
pub fn share(n: usize, rank: usize, world: usize) -> Range<usize> {
    (rank * n / world)..((rank + 1) * n / world)
}

/// The groups (indices into `n_groups`) rank `rank` of `world` trains on: its [`share`] of the groups
/// of each of the learner's `mini_batches`, mini-batch by mini-batch. The learner cuts its samples
/// into mini-batches in order, so each rank's mini-batch `m` is its part of one process's mini-batch
/// `m`, and the summed update is one process's (exactly when the groups are whole and divide evenly).
pub fn training_groups(
    n_groups: usize,
    mini_batches: usize,
    rank: usize,
    world: usize,
) -> Vec<usize> {
    let mini_batches = mini_batches.max(1);
    (0..mini_batches)
        .flat_map(|m| {
            let mini = share(n_groups, m, mini_batches);
            let part = share(mini.len(), rank, world);
            (mini.start + part.start)..(mini.start + part.end)
        })
        .collect()
}

/// SHA-256 of the weight files (`*.safetensors`, by name) in `dir`: ranks agree on the model itself,
/// not only on its path.
pub fn weights_digest(dir: &Path) -> Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for f in &files {
        let mut file =
            std::fs::File::open(f).with_context(|| format!("reading {}", f.display()))?;
        hasher.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        std::io::copy(&mut file, &mut hasher)
            .with_context(|| format!("reading {}", f.display()))?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once_in_rank_order() {
        for n in 0..12 {
            for world in 1..5 {
                let all: Vec<usize> = (0..world).flat_map(|r| share(n, r, world)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} world {world}");
            }
        }
    }

    /// Rank r's groups are, per mini-batch, the r-th part of that mini-batch's groups: concatenating
    /// every rank's part of mini-batch m gives one process's mini-batch m.
    #[test]
    fn training_groups_split_each_mini_batch() {
        assert_eq!(training_groups(8, 2, 0, 2), vec![0, 1, 4, 5]);
        assert_eq!(training_groups(8, 2, 1, 2), vec![2, 3, 6, 7]);
        assert_eq!(training_groups(4, 1, 1, 2), vec![2, 3]);
        for (n, minis, world) in [(8, 2, 2), (12, 3, 2), (7, 2, 3), (5, 1, 2)] {
            let mut all: Vec<usize> = (0..world)
                .flat_map(|r| training_groups(n, minis, r, world))
                .collect();
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
    }
}
