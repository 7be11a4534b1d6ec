//! The venv that `scripts/setup.sh` makes (torch, transformers, safetensors, pandas) as the
//! independent reference: finding its Python and running scripts with it.
//!
//! A crate of its own, apart from `alp-test-support`, because it must never pull in libtorch: cargo
//! unifies a dependency's features across the workspace, so a crate whose tests used
//! `alp-test-support` for the oracle alone got `tch` linked into its test binaries without the rpath
//! that `build/link_libtorch.rs` gives (the tokenizer's tests then failed to start).
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate sits at `support/oracle`), or `ALP_WORKSPACE_ROOT` where binaries
/// built here run from another checkout (`scripts/gpu-check.sh` on a GPU machine).
pub fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("ALP_WORKSPACE_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the oracle crate sits two levels below the workspace root")
        .to_path_buf()
}

/// The venv's Python, or `ALP_ORACLE_PYTHON` (a machine's own Python with torch and transformers,
/// as on a GPU machine); a missing venv is an error with the fix, never a silent skip.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("ALP_ORACLE_PYTHON") {
        return PathBuf::from(python);
    }
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to create the venv with torch and transformers",
        python.display()
    );
    python
}

/// A command that runs the venv's Python.
pub fn python_command() -> Command {
    Command::new(python())
}

/// `scripts/oracles/NAME`, the reference scripts the tests and benchmarks share.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts/oracles").join(name)
}

/// Runs `command` to completion and returns its stdout, panicking with `what` and its stderr when it
/// cannot start or fails.
pub fn run(command: &mut Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
