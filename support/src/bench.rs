//! Benchmark settings: every benchmark reads its sizes from `BENCH_*` variables with a default.

/// The value of the environment variable `name` parsed as `T`, or `default` when it is unset or does
/// not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
