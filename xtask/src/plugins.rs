//! `cargo xtask test-plugins`: builds the sample plugins and the conformance suite, makes sure
//! the original's Python worker is installed, then runs the suite (`tests/src/bin/conformance.rs`)
//! against every sample worker and the Python worker. The suite prints a table and fails on
//! any failed check; the generated sample manifests land in `target/sample-plugins/manifests`.

use std::process::Command;

use crate::{cargo, run};

/// `cargo xtask test-plugins`.
pub(crate) fn test_plugins(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`test-plugins` takes no arguments, got `{a}`"));
    }
    cargo(&["build", "-p", "cjm-sample-plugins"])?;
    cargo(&["build", "-p", "cjm-tests", "--bin", "conformance"])?;
    let python = crate::python::ensure_venv()?;
    // The 0.0.46 and cjm-substrate venvs (their paths reach the suite through the environment).
    crate::python312::ensure_venvs()?;
    let target = crate::target_dir()?;
    let bin_dir = target.join("debug");
    run(Command::new(bin_dir.join("conformance"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--python")
        .arg(&python)
        .arg("--manifests-out")
        .arg(target.join("sample-plugins/manifests")))
    .map_err(|e| format!("{e}\nthe protocol conformance suite failed (see the table above)"))?;
    eprintln!("\nxtask test-plugins: every worker conforms");
    Ok(())
}
