//! What the tests and benchmarks that start real vLLM servers share: the Python that has vLLM, and how
//! a CPU server is started on a two-core machine (configs/math-vllm.toml's settings).
use std::path::{Path, PathBuf};

/// The Python with vLLM: `ALP_VLLM_PYTHON`, else where `scripts/setup-vllm.sh` installs it.
pub fn vllm_python() -> PathBuf {
    let path = std::env::var_os("ALP_VLLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/alp-rl/vllm-venv/bin/python")
        });
    assert!(
        path.exists(),
        "no vLLM Python at {}: run scripts/setup-vllm.sh (make test does) or set ALP_VLLM_PYTHON",
        path.display()
    );
    path
}

/// Environment of a CPU server that shares two cores: no thread pinning, a 1 GiB KV cache.
pub fn cpu_server_env() -> Vec<(String, String)> {
    [
        ("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        ("VLLM_CPU_KVCACHE_SPACE", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// configs/math-vllm.toml's server arguments: f32, 256-token context, 128 sequences per step, and a
/// token budget no prompt's prefill is split by (vllm-cpu 0.32 crashes on a seeded request whose
/// prefill is split; docs/vllm.md).
pub fn math_vllm_server_args() -> Vec<String> {
    [
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--max-num-seqs",
        "128",
        "--max-num-batched-tokens",
        "32768",
        "--gpu-memory-utilization",
        "0.1",
        "--enforce-eager",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A free loopback port for a server (bound and released; nothing else here races for it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
