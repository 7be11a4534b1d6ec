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
