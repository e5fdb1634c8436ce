//! cjm's project tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `test`: formatting, clippy, every workspace test and doc test, and the suites that need
//!   outside tools (installed here when missing).
//! - `test-plugins`: the sample plugins against the protocol conformance suite.
//! - `demo`: the demo host on the built-in sample plugins.
//! - `bench`: the performance figures.
//! - `fuzz`: every property test with at least 100 000 cases each.
//!
//! Written with the standard library only, so it builds in seconds on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod plugins;
mod python;
mod python312;
mod tasks;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, rest)) => (t.as_str(), rest),
        None => {
            eprintln!("{}", USAGE);
            return ExitCode::from(2);
        }
    };
    let result = match task {
        "test" => tasks::test(rest),
        "test-plugins" => plugins::test_plugins(rest),
        "demo" => tasks::demo(rest),
        "bench" => tasks::bench(rest),
        "fuzz" => tasks::fuzz(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test          fmt check, clippy -D warnings, all workspace tests and doc tests, test-plugins
  test-plugins  build the sample plugins and run the protocol conformance suite against each
                and against the original's Python worker (prints a table)
  demo          run the demo host on the built-in sample plugins
  bench         print the performance figures (release build); --json for one JSON object
  fuzz          every property test (tests/prop_*.rs) with 100 000 cases each (--cases N for
                more), optimized with overflow checks on (profile `fuzz`)";

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `cargo <args>` in the workspace root, failing with the command line on error.
pub fn cargo(args: &[&str]) -> Result<(), String> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

/// Runs a command in the workspace root, announcing it, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    cmd.current_dir(root());
    let line = format!("{cmd:?}").replace('"', "");
    eprintln!("\n==> {line}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start `{line}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` failed ({status})"))
    }
}
