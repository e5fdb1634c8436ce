//! cjm's project tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `test`: formatting, clippy, every workspace test and doc test, and the suites that need
//!   outside tools (installed here when missing).
//! - `test-plugins`: the sample plugins against the protocol conformance suite.
//! - `readme`: both README quickstarts, built and run from the README's code blocks.
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
mod readme;
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
        "readme" => readme::readme(rest),
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
  test          fmt check, clippy -D warnings, all workspace tests and doc tests, test-plugins,
                readme
  test-plugins  build the sample plugins and run the protocol conformance suite against each
                and against the original's Python worker (prints a table)
  readme        build and run both README quickstarts from the README's own code blocks
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

/// The cargo target directory, as `cargo metadata` reports it: honours `CARGO_TARGET_DIR`,
/// `build.target-dir` in a cargo config, and the default `<root>/target`.
pub fn target_dir() -> Result<PathBuf, String> {
    target_dir_with(None)
}

/// [`target_dir`], with `CARGO_TARGET_DIR` overridden for the `cargo metadata` child when
/// `env_target` is given (for tests).
fn target_dir_with(env_target: Option<&Path>) -> Result<PathBuf, String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ])
    .current_dir(root());
    if let Some(t) = env_target {
        cmd.env("CARGO_TARGET_DIR", t);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `cargo metadata`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo metadata` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    json_string_field(&text, "target_directory")
        .map(PathBuf::from)
        .ok_or_else(|| "`cargo metadata` printed no target_directory".to_string())
}

/// The string value of the first `"key":"…"` in compact JSON text, unescaped (enough for
/// `cargo metadata`'s one-line output; xtask stays dependency-free to build in seconds).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A release binary of this workspace, in the target directory `cargo metadata` reports.
pub fn release_bin(name: &str) -> Result<PathBuf, String> {
    Ok(target_dir()?.join("release").join(name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_follows_cargo_target_dir() {
        let relocated = std::env::temp_dir().join("cjm-xtask-relocated-target");
        assert_eq!(target_dir_with(Some(&relocated)).unwrap(), relocated);
    }

    #[test]
    fn target_dir_defaults_under_the_root_or_the_environment() {
        let expected = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) if !d.is_empty() => root().join(d),
            _ => root().join("target"),
        };
        let got = target_dir().unwrap();
        assert_eq!(
            got.canonicalize().unwrap_or(got),
            expected.canonicalize().unwrap_or(expected)
        );
    }

    #[test]
    fn reads_escaped_json_strings() {
        let j = r#"{"a":1,"target_directory":"/x/\"q\"/\\b\u00e9","z":"no"}"#;
        assert_eq!(
            json_string_field(j, "target_directory").unwrap(),
            "/x/\"q\"/\\bé"
        );
        assert_eq!(json_string_field(j, "missing"), None);
    }
}
