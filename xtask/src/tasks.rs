//! The tasks themselves.

use std::path::Path;
use std::process::Command;

use crate::{cargo, run};

/// `cargo xtask test`.
pub fn test(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`test` takes no arguments, got `{a}`"));
    }
    cargo(&["fmt", "--all", "--", "--check"])
        .map_err(|e| format!("{e}\nhint: run `cargo fmt --all`"))?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The original's Python worker, for the compatibility suite.
    let python = crate::python::ensure_venv()?;
    std::env::set_var("CJM_TEST_PYTHON", &python);
    // The settings page's browser test (tests/tests/ui_browser.rs).
    ensure_chromium()?;
    // Build everything first, so the integration tests find every worker binary.
    cargo(&["build", "--workspace", "--all-targets"])?;
    cargo(&["test", "--workspace", "--all-targets", "--no-fail-fast"])?;
    cargo(&["test", "--workspace", "--doc"])?;
    crate::plugins::test_plugins(&[])?;
    crate::readme::readme(&[])?;
    eprintln!("\nxtask test: all suites passed");
    Ok(())
}

/// `cargo xtask demo`: builds the sample plugins and the demo host, then runs the host.
pub fn demo(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`demo` takes no arguments, got `{a}`"));
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "cjm-sample-plugins",
        "-p",
        "cjm-demo",
    ])?;
    let bin = crate::release_bin("cjm-demo")?;
    run(&mut Command::new(bin))
}

/// `cargo xtask bench [--json]`: release build of the samples and the bench, then the bench.
pub fn bench(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.iter().find(|a| *a != "--json") {
        return Err(format!("`bench` takes only --json, got `{a}`"));
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "cjm-sample-plugins",
        "-p",
        "cjm-bench",
    ])?;
    let bin = crate::release_bin("cjm-bench")?;
    run(Command::new(bin).args(args))
}

/// Debian's headless browser and its WebDriver, which the settings page's browser test drives.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Makes sure `/usr/bin/chromium` and `/usr/bin/chromedriver` exist, installing Debian's
/// `chromium` and `chromium-driver` with apt-get (as root) when either is missing.
pub fn ensure_chromium() -> Result<(), String> {
    let present = || Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file();
    if present() {
        eprintln!("\n==> {CHROMIUM} and {CHROMEDRIVER} present");
        return Ok(());
    }
    eprintln!(
        "\n==> {CHROMIUM} or {CHROMEDRIVER} missing: installing Debian's chromium and chromium-driver"
    );
    let hint = "the browser test (tests/tests/ui_browser.rs) needs them: as root, run \
                `apt-get update && apt-get install -y chromium chromium-driver`";
    run(Command::new("apt-get").arg("update")).map_err(|e| format!("{e}\nhint: {hint}"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "chromium", "chromium-driver"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .map_err(|e| format!("{e}\nhint: {hint}"))?;
    if present() {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed chromium and chromium-driver but {CHROMIUM} or {CHROMEDRIVER} is \
             still missing\nhint: {hint}"
        ))
    }
}
