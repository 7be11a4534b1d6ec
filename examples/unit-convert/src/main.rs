//! `units-trainer`: the whole alp-rl command line (`train`, `sft`, `eval`, `env ...`) with the
//! built-in environments plus this crate's `unit_convert`.
use unit_convert::UnitConvert;

fn main() -> std::process::ExitCode {
    alp_rl::exit_with(run())
}

fn run() -> anyhow::Result<()> {
    let mut registry = alp_rl::Registry::builtin();
    registry.register(alp_rl::EnvSpec::of::<UnitConvert>())?;
    alp_rl::run_cli(registry)
}
