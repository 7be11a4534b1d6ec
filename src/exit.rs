//! How a command's error reaches the user: its message and causes on stderr and a non-zero exit
//! status, never a Rust stack trace for a mistake of the user's (a missing file, a bad config value, a
//! run directory that exists), whatever `RUST_BACKTRACE` says.
//!
//! `fn main() -> anyhow::Result<()>` prints the error's `Debug` form, which appends `anyhow`'s captured
//! backtrace when `RUST_BACKTRACE` is set, as it is on many developers' machines. Every error a command
//! returns is one it meant to report, so only its message and causes are printed. An error that comes
//! from inside libtorch ([`tch::TchError`]) is an internal failure, not the user's: its backtrace, when
//! one was captured, is kept for the bug report. Panics keep Rust's own report.
use std::fmt::Write as _;
use std::process::ExitCode;

/// The exit status of a failed command.
pub const FAILURE: u8 = 1;

/// Prints `result`'s error (if any) as [`error_report`] does and turns it into the process's exit
/// status. A binary's `main` ends with it:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     alp_rl::exit_with(alp_rl::run_cli(alp_rl::Registry::builtin()))
/// }
/// ```
pub fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", error_report(&e));
            ExitCode::from(FAILURE)
        }
    }
}

/// `Error: MESSAGE`, then each cause on its own line under `Caused by:`, then, for an internal error
/// (one from libtorch) whose backtrace was captured, the backtrace.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut out = format!("Error: {e}\n");
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    if !causes.is_empty() {
        out.push_str("\nCaused by:\n");
        for (i, cause) in causes.iter().enumerate() {
            let _ = writeln!(out, "    {i}: {cause}");
        }
    }
    if is_internal(e) && e.backtrace().status() == std::backtrace::BacktraceStatus::Captured {
        let _ = write!(
            out,
            "\nStack backtrace (an internal error):\n{}\n",
            e.backtrace()
        );
    }
    out
}

/// Whether `e` is a failure inside libtorch rather than something the user can fix.
fn is_internal(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<tch::TchError>().is_some())
}

#[cfg(test)]
mod tests {
    use super::error_report;
    use anyhow::Context;

    #[test]
    fn a_user_error_prints_its_message_and_causes_only() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Err::<(), _>(io).context("reading run.toml").unwrap_err();
        assert_eq!(
            error_report(&e),
            "Error: reading run.toml\n\nCaused by:\n    0: no such file\n"
        );
    }

    #[test]
    fn a_libtorch_error_is_internal() {
        let e = anyhow::Error::new(tch::TchError::Torch("shape mismatch".into()));
        assert!(super::is_internal(&e));
        assert!(!super::is_internal(&anyhow::anyhow!("bad config")));
    }
}
