//! The code base's structure limits (issue 25): no import circle between the files of a crate or
//! between its top-level modules, no function over 100 lines and no file over 600 lines outside tests.
//! `scripts/structure_check.py` reads the sources; this test runs it so that CI holds the line.
use std::process::Command;

#[test]
fn no_import_circle_no_long_function_no_long_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/structure_check.py"))
        .output()
        .expect("run python3 scripts/structure_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("structure check: 0 problem(s)"), "{stdout}");
}
