//! The tasks themselves.

use std::path::Path;
use std::process::Command;

use crate::{cargo, run};

/// `cargo xtask test`.
pub(crate) fn test(args: &[String]) -> Result<(), String> {
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
    // Every public item documented, every intra-doc link resolving.
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // The original's Python worker, for the compatibility suite.
    let python = crate::python::ensure_venv()?;
    std::env::set_var("CJM_TEST_PYTHON", &python);
    // cjm-plugin-system 0.0.46 and cjm-substrate (Python 3.12), for tests/tests/python_0046.rs.
    crate::python312::ensure_venvs()?;
    // A real published plugin and its adapter, installed by the original's cjm-ctl
    // (tests/tests/real_plugin_0046.rs).
    crate::python312::ensure_real_plugin()?;
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

/// Fewest cases per property in a `cargo xtask fuzz` run.
const FUZZ_CASES: u64 = 100_000;

/// `cargo xtask fuzz [--cases N]`: the property tests (`tests/prop_*.rs` of cjm-core and
/// cjm-worker-sdk) with `PROPTEST_CASES` set, built with the `fuzz` profile (optimized, with
/// debug assertions and overflow checks, so arithmetic overflow is a failure as in tests).
pub(crate) fn fuzz(args: &[String]) -> Result<(), String> {
    let cases = match args {
        [] => FUZZ_CASES,
        [flag, n] if flag == "--cases" => n
            .parse::<u64>()
            .ok()
            .filter(|&n| n >= FUZZ_CASES)
            .ok_or_else(|| format!("--cases takes a number of at least {FUZZ_CASES}, got `{n}`"))?,
        other => {
            return Err(format!(
                "`fuzz` takes only --cases N, got `{}`",
                other.join(" ")
            ))
        }
    };
    let started = std::time::Instant::now();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "test",
        "--profile",
        "fuzz",
        "-p",
        "cjm-core",
        "-p",
        "cjm-worker-sdk",
        "--test",
        "prop_*",
        "--no-fail-fast",
        "--",
        "--nocapture",
    ])
    .env("PROPTEST_CASES", cases.to_string());
    run(&mut cmd)?;
    eprintln!(
        "\nxtask fuzz: every property passed {cases} cases in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask demo`: builds the sample plugins and the demo host, then runs the host.
pub(crate) fn demo(args: &[String]) -> Result<(), String> {
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
pub(crate) fn bench(args: &[String]) -> Result<(), String> {
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
pub(crate) fn ensure_chromium() -> Result<(), String> {
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
