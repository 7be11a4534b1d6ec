//! Running the `alp-rl` binary as a user does. Cargo names the binary only to the app's own tests and
//! benches (`env!("CARGO_BIN_EXE_alp-rl")`), so they hand its path over:
//!
//! ```ignore
//! const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));
//! ```
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

/// The `alp-rl` binary at a path.
#[derive(Clone, Copy, Debug)]
pub struct AlpRl {
    bin: &'static str,
}

impl AlpRl {
    pub const fn new(bin: &'static str) -> Self {
        Self { bin }
    }

    /// `alp-rl` logging at `warn`, so that stderr holds warnings and errors and no progress lines.
    pub fn command(&self) -> Command {
        let mut command = Command::new(self.bin);
        command.env("RUST_LOG", "warn");
        command
    }

    /// Runs `alp-rl ARGS` to completion.
    pub fn output<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command().args(args).output().expect("run alp-rl")
    }

    /// `alp-rl train CONFIG --out OUT`, to be given more arguments or spawned.
    pub fn train_command(&self, config: impl AsRef<OsStr>, out: &Path) -> Command {
        let mut command = self.command();
        command.arg("train").arg(config).arg("--out").arg(out);
        command
    }

    /// Runs `alp-rl train CONFIG --out OUT EXTRA` to completion.
    pub fn train(&self, config: impl AsRef<OsStr>, out: &Path, extra: &[&str]) -> Output {
        self.train_command(config, out)
            .args(extra)
            .output()
            .expect("run alp-rl")
    }

    /// Writes a tiny random model with `alp-rl new-model --preset tiny --out DIR EXTRA`, asserting it
    /// succeeded.
    pub fn new_model(&self, dir: &Path, extra: &[&str]) {
        let mut command = self.command();
        command
            .args(["new-model", "--preset", "tiny", "--out"])
            .arg(dir)
            .args(extra);
        ok(command.output().expect("run alp-rl"));
    }
}

/// Asserts that an `alp-rl` command succeeded, showing its stderr otherwise; returns its stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "alp-rl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("alp-rl prints UTF-8")
}
