//! The server side of serving adapters: loading one under a name (and checking the version the
//! server then reports), unloading the ones nothing names any more. Used by the weight sync
//! ([`crate::replica::sync_server`]) for a trained adapter and for a population's members.
use std::path::Path;
use std::time::Duration;

use crate::client::ServerClient;
use crate::error::VllmError;

/// Adapters this backend loads are named this plus their version.
pub const ADAPTER_PREFIX: &str = "alp-policy-v";

/// The name version `version`'s adapter is served under.
pub fn adapter_name(version: u64) -> String {
    format!("{ADAPTER_PREFIX}{version}")
}

/// Loads the adapter in `dir` on one server under `name`, then sets and checks the server's version.
pub(crate) async fn load_on_server(
    client: &ServerClient,
    name: &str,
    dir: &Path,
    version: u64,
    timeout: Duration,
) -> Result<(), VllmError> {
    // A failed sync of this version may have left its name loaded (with the files that failed):
    // vLLM refuses a name twice, and this load must read the files anew.
    if client.model_ids().await?.iter().any(|id| id == name) {
        client.unload_lora_adapter(name).await?;
    }
    client
        .load_lora_adapter(name, dir, timeout)
        .await
        .map_err(|e| match e {
            VllmError::Status {
                status: 404, body, ..
            } => VllmError::Incompatible {
                server: client.name().to_string(),
                problem: format!(
                    "POST /v1/load_lora_adapter answered 404 ({body}): start the server with \
                     --enable-lora --max-lora-rank R and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
                ),
            },
            VllmError::Status { status, body, .. } => VllmError::SyncMismatch {
                server: client.name().to_string(),
                version,
                problem: format!(
                    "loading the adapter in {} answered HTTP {status}: {body} (a rank above the \
                     server's --max-lora-rank is refused this way)",
                    dir.display()
                ),
            },
            other => other,
        })?;
    client.set_version(&version.to_string()).await?;
    let reported = client.version().await?;
    if reported.as_deref() != Some(version.to_string().as_str()) {
        return Err(VllmError::SyncMismatch {
            server: client.name().to_string(),
            version,
            problem: format!("GET /weight_info reports version {reported:?}"),
        });
    }
    Ok(())
}

/// Unloads every adapter of ours but `keep` from a server (older versions); a failure only warns,
/// since nothing names those adapters any more.
pub(crate) async fn unload_others(client: &ServerClient, keep: &str) {
    unload_matching(client, |id| id.starts_with(ADAPTER_PREFIX) && id != keep).await
}

/// Unloads the adapters a server lists whose names `unload` picks; failures only warn.
pub(crate) async fn unload_matching(client: &ServerClient, unload: impl Fn(&str) -> bool) {
    let ids = match client.model_ids().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(server = client.name(), error = %e, "listing adapters to unload");
            return;
        }
    };
    for id in ids.iter().filter(|id| unload(id)) {
        if let Err(e) = client.unload_lora_adapter(id).await {
            tracing::warn!(server = client.name(), adapter = %id, error = %e, "unloading an old adapter");
        }
    }
}
