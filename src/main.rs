//! `alp-rl`: the command line of the library (`src/lib.rs`) with the built-in environments.
fn main() -> std::process::ExitCode {
    alp_rl::exit_with(alp_rl::run_cli(alp_rl::Registry::builtin()))
}
