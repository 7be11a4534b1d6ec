//! Benchmark settings: every benchmark reads its sizes from `BENCH_*` variables with a default.

/// The value of the environment variable `name` parsed as `T`, or `default` when it is unset or does
/// not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The CPU's vector and matrix extensions that change float speed and results (benchmarks print
/// them: ratios are only comparable within one machine kind).
pub fn cpu_flags() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
                .iter()
                .filter(|f| l.split_whitespace().any(|w| w == **f))
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The environment variables that cap libtorch below the CPU's instruction set (`ATEN_CPU_CAPABILITY`,
/// `ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`: how an AVX-512 machine runs as an AVX2 one), as
/// `"; capped: NAME=VALUE ..."`, or nothing when none is set.
pub fn libtorch_isa_caps() -> String {
    let caps: Vec<String> = [
        "ATEN_CPU_CAPABILITY",
        "ONEDNN_MAX_CPU_ISA",
        "MKL_ENABLE_INSTRUCTIONS",
    ]
    .iter()
    .filter_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}")))
    .collect();
    if caps.is_empty() {
        String::new()
    } else {
        format!("; capped: {}", caps.join(" "))
    }
}

/// `BENCH_DEVICE`: `cpu` (the default) or `cuda` (the first GPU).
#[cfg(feature = "model")]
pub fn device() -> tch::Device {
    match env_or("BENCH_DEVICE", "cpu".to_string()).as_str() {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        other => panic!("BENCH_DEVICE: cpu or cuda, not {other:?}"),
    }
}

/// How the Python references name `device` (`cpu` or `cuda`).
#[cfg(feature = "model")]
pub fn device_name(device: tch::Device) -> &'static str {
    match device {
        tch::Device::Cpu => "cpu",
        _ => "cuda",
    }
}
