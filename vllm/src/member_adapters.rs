//! A population (EGGROLL) on vLLM: member `i`'s low-rank perturbation of every evolved matrix is a
//! LoRA adapter ([`MemberHooks::member_adapter`]: `lora_B = s_i (sigma / sqrt r) A_i`, `lora_A =
//! B_i^T`, scale 1), written in PEFT's format and loaded on every serving server under
//! `alp-es-<population>-m<i>`; each request of member `i` names that adapter as its `model`, so a
//! server batches the members as it batches any adapters (`--max-loras` at least the members of a
//! call keeps them all resident). Only the factors the members need are written, regenerated from
//! the population's seeds; the base weights are the policy's, synced as whole weights.
//!
//! Each adapter is verified once after loading, as a weight sync is: the probe prompts completed by
//! the server under the member's name and by our forward of the reference copy with the member's
//! hooks (the same hooks the local engine generates with). Members are loaded when a call first
//! names them; a new population ([`VllmBackend::set_members`]) unloads the previous one's.
use std::collections::BTreeMap;
use std::sync::Arc;

use alp_policy::lora::{LoraConfig, TargetModules};
use alp_policy::MemberHooks;

use crate::adapter_calls::unload_matching;
use crate::adapter_sync::write_adapter;
use crate::backend::VllmBackend;
use crate::error::VllmError;
use crate::members::{MemberAdapters, MEMBER_PREFIX};
use crate::replica::{sync_server, Current, State};

impl VllmBackend {
    /// The population the next calls generate with (`None`: the plain policy). Requests name their
    /// member ([`alp_rollout::GenerationRequest::member`]); its adapter is loaded when first named.
    pub fn set_members(&mut self, members: Option<Arc<dyn MemberHooks>>) {
        let number = self.populations;
        self.populations += u64::from(members.is_some());
        self.members = members.map(|hooks| MemberAdapters {
            hooks,
            number,
            loaded: BTreeMap::new(),
        });
    }

    /// The served name of `member`, loaded by [`VllmBackend::load_members`]; `None` for a request
    /// without a member.
    pub(crate) fn member_model(&self, member: Option<usize>) -> Result<Option<String>, VllmError> {
        let Some(member) = member else {
            return Ok(None);
        };
        let name = self
            .members
            .as_ref()
            .and_then(|m| m.loaded.get(&member))
            .ok_or_else(|| {
                VllmError::Runtime(format!(
                    "a request names population member {member}, but the backend has no \
                     population (VllmBackend::set_members) or did not load that member"
                ))
            })?;
        Ok(Some(name.clone()))
    }

    /// Loads and verifies, on every serving server, the adapters of `members` not loaded yet; the
    /// first load of a population unloads the previous populations' adapters.
    pub(crate) fn load_members(&mut self, members: &[usize]) -> Result<(), VllmError> {
        let Some(population) = &self.members else {
            return Err(VllmError::Runtime(
                "requests name population members, but the backend has no population \
                 (VllmBackend::set_members)"
                    .into(),
            ));
        };
        let number = population.number;
        let first = population.loaded.is_empty();
        let missing: Vec<usize> = members
            .iter()
            .copied()
            .filter(|m| !population.loaded.contains_key(m))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if first {
            self.remove_member_dirs(&format!("{MEMBER_PREFIX}{number}-"))?;
        }
        let hooks = population.hooks.clone();
        let version = self.current.as_ref().ok_or(VllmError::NotSynced)?.version;
        let ours = format!("{MEMBER_PREFIX}{number}-");
        for &member in &missing {
            let name = format!("{ours}m{member}");
            self.load_member(hooks.as_ref(), member, &name, version, first)?;
            if let Some(p) = self.members.as_mut() {
                p.loaded.insert(member, name);
            }
        }
        Ok(())
    }

    /// Removes the member adapters' folders of other populations than the one named `keep_prefix`.
    fn remove_member_dirs(&self, keep_prefix: &str) -> Result<(), VllmError> {
        let root = self.sync_root();
        let err = |e: std::io::Error| VllmError::WriteWeights {
            path: root.display().to_string(),
            message: e.to_string(),
        };
        for entry in std::fs::read_dir(root).map_err(err)? {
            let path = entry.map_err(err)?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(MEMBER_PREFIX) && !name.starts_with(keep_prefix) {
                std::fs::remove_dir_all(&path).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Writes member `member`'s adapter, then loads and probes it on every serving server.
    fn load_member(
        &mut self,
        hooks: &dyn MemberHooks,
        member: usize,
        name: &str,
        version: u64,
        unload_old: bool,
    ) -> Result<(), VllmError> {
        let tensors = hooks.member_adapter(member).ok_or_else(|| {
            VllmError::Runtime(
                "the population's members are not low-rank adapters; generate them on the local \
                 engine"
                    .into(),
            )
        })?;
        let rank = tensors.first().map_or(1, |(_, a)| a.size()[0]);
        let modules: Vec<String> = tensors
            .iter()
            .filter_map(|(n, _)| n.strip_suffix(".lora_A.weight"))
            .map(|n| n.trim_start_matches("base_model.model.").to_string())
            .collect();
        let config = LoraConfig::new(rank, rank as f64, TargetModules::Names(modules));
        let dir = self.sync_root().join(name);
        write_adapter(&dir, &config, &tensors)?;
        let reference = self
            .reference_model()
            .map_err(|e| VllmError::Runtime(e.to_string()))?;
        let probe = {
            let rows = self.settings.probe_prompts;
            let row_hooks = hooks.for_requests(&vec![member; rows]);
            let forward_hooks = row_hooks.for_rows(&(0..rows).collect::<Vec<_>>());
            self.probe_reference(reference, forward_hooks.as_ref(), version)
        };
        let job = self.job(Current {
            version,
            dir,
            reference: Arc::new(probe),
            adapter: Some(name.to_string()),
        });
        let name = name.to_string();
        let prefix = name[..name.rfind('-').unwrap_or(0) + 1].to_string();
        self.runtime.block_on(async {
            for replica in self.replicas.iter() {
                if !matches!(replica.state, State::Serving { .. }) {
                    continue;
                }
                if unload_old {
                    let client = &replica.client;
                    unload_matching(client, |id| {
                        id.starts_with(MEMBER_PREFIX) && !id.starts_with(&prefix)
                    })
                    .await;
                }
                sync_server(replica.client.clone(), job.clone()).await?;
            }
            Ok::<(), VllmError>(())
        })
    }
}
