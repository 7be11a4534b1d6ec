//! What a run on several ranks must satisfy before it starts: a config the ranks can split (checked
//! by every rank alike, before anything is written), and ranks that agree on the config, the
//! program, the model and where the run stands (checked once they have met).
use std::path::Path;

use anyhow::{bail, Result};

use super::ranks::{weights_digest, Ranks};
use crate::config::{BackendKind, TrainConfig};

/// Refuses, naming the key and the fix, what the ranks of `ranks` cannot run yet (nothing for one
/// process).
pub fn check_config(config: &TrainConfig, ranks: &Ranks) -> Result<()> {
    let world = ranks.world_size();
    if world == 1 {
        return Ok(());
    }
    if config.rollout.backend == BackendKind::Vllm {
        bail!(
            "rollout.backend = \"vllm\" with {world} ranks: a run on several ranks generates on \
             each rank's local engine for now; use rollout.backend = \"local\", or one process \
             (vLLM servers already scale the rollouts out, docs/vllm.md)"
        );
    }
    let minis = if config.eggroll_settings().is_some() {
        1
    } else {
        config.learner.mini_batches.max(1)
    };
    let prompts = config.rollout.prompts_per_step;
    if prompts < world * minis {
        bail!(
            "rollout.prompts_per_step = {prompts} cannot give each of {world} ranks a whole group \
             in each of its {minis} mini-batch(es): use at least {} (a multiple of {} splits evenly)",
            world * minis,
            world * minis
        );
    }
    if !prompts.is_multiple_of(world * minis) {
        tracing::warn!(
            prompts_per_step = prompts,
            ranks = world,
            mini_batches = minis,
            "the groups do not split evenly over the ranks' mini-batches: the update is a valid \
             one, but not exactly one process's"
        );
    }
    Ok(())
}

/// Refuses to go on unless every rank has the same resolved config (the error lists the keys that
/// differ, with each rank's value), program version and world size. Runs before anything is written.
pub fn agree_on_config(ranks: &Ranks, config_toml: &str) -> Result<()> {
    if !ranks.is_distributed() {
        return Ok(());
    }
    let all = ranks.all_gather(config_toml.as_bytes())?;
    let leader = flatten(&String::from_utf8_lossy(&all[0]));
    let mut differences = Vec::new();
    for (rank, text) in all.iter().enumerate().skip(1) {
        let theirs = flatten(&String::from_utf8_lossy(text));
        let keys: std::collections::BTreeSet<&String> =
            leader.keys().chain(theirs.keys()).collect();
        for key in keys {
            let (a, b) = (leader.get(key), theirs.get(key));
            if a != b {
                let show = |v: Option<&String>| v.map_or("(unset)".to_string(), |v| v.clone());
                differences.push(format!(
                    "{key}: rank {rank} has {}, rank 0 has {}",
                    show(b),
                    show(a)
                ));
            }
        }
    }
    if !differences.is_empty() {
        bail!(
            "the ranks of this run were given different configs (every rank must run the same \
             config and --set overrides):\n  {}",
            differences.join("\n  ")
        );
    }
    let version = format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        option_env!("ALP_RL_GIT_DESCRIBE").unwrap_or("no git description")
    );
    let world = ranks.world_size().to_string();
    ranks.agree(&[("alp-rl version", &version), ("world size", &world)])
}

/// Refuses to go on unless every rank starts from the same weights (`weights_dir`, by content) at
/// the same step.
pub fn agree_on_start(ranks: &Ranks, weights_dir: &Path, step: u64) -> Result<()> {
    if !ranks.is_distributed() {
        return Ok(());
    }
    let weights = weights_digest(weights_dir)?;
    let step = step.to_string();
    ranks.agree(&[
        (
            "starting weights (sha256 of the safetensors files)",
            &weights,
        ),
        ("resume step", &step),
    ])
}

/// `key.path = value` of every leaf of a TOML document.
fn flatten(text: &str) -> std::collections::BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    match toml::from_str::<toml::Table>(text) {
        Ok(t) => walk("", &toml::Value::Table(t), &mut out),
        // (Not expected: the text is a config serialised by this program.) Compare it whole.
        Err(_) => {
            out.insert("(the whole config)".into(), text.to_string());
        }
    }
    out
}
