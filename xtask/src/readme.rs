//! `cargo xtask readme`: builds and runs both README quickstarts from the README's own code
//! blocks, in temporary crates outside the workspace, so the quickstarts cannot rot.
//!
//! - Host quickstart: its `toml` block becomes the dependencies, its `rust,ignore` block
//!   `src/main.rs`; it runs against the `echo` sample and must print `{"text":"hi"}`.
//! - Plugin quickstart: the same for the worker, plus its `json` block as
//!   `.cjm/manifests/hello.json`; every `cjm …` line of its `sh` block is run (with the
//!   workspace's `cjm` first on `PATH`) and each must succeed; each `cjm call` must greet Ada.
//!
//! The crates share the workspace's target directory and `Cargo.lock` and build `--offline`,
//! so this takes seconds once the workspace is built. `cjm-*` path dependencies in the blocks
//! are pointed at this checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, root, run, target_dir};

/// The fenced code blocks of one README section, as (info string, body).
fn section_blocks(readme: &str, heading: &str) -> Result<Vec<(String, String)>, String> {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .ok_or_else(|| format!("README.md has no `{heading}` section"))?;
    let rest = &readme[start + heading.len() + 2..];
    let section = rest.find("\n## ").map_or(rest, |end| &rest[..end]);
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        blocks.push((info.trim().to_string(), body));
    }
    Ok(blocks)
}

/// The one block of `section` whose info string is `info`.
fn block<'a>(blocks: &'a [(String, String)], info: &str, section: &str) -> Result<&'a str, String> {
    let mut found = blocks.iter().filter(|(i, _)| i == info);
    match (found.next(), found.next()) {
        (Some((_, body)), None) => Ok(body),
        (None, _) => Err(format!("README.md `{section}`: no ```{info} block")),
        (Some(_), Some(_)) => Err(format!(
            "README.md `{section}`: more than one ```{info} block"
        )),
    }
}

/// A dependencies block with each `cjm-* = { path = "…" }` pointed at this checkout.
fn local_dependencies(toml: &str, root: &Path) -> String {
    toml.lines()
        .map(|line| {
            let name = line.split(" = ").next().unwrap_or_default().trim();
            if name.starts_with("cjm-") && line.contains("path = ") {
                format!(
                    "{name} = {{ path = {:?} }}",
                    root.join("crates").join(name).display().to_string()
                )
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes a crate `name` in `dir` from a dependencies block and a `main.rs`, then builds it
/// offline into the workspace's target directory.
fn build_crate(
    dir: &Path,
    name: &str,
    deps: &str,
    main_rs: &str,
    target: &Path,
) -> Result<PathBuf, String> {
    let root = root();
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         # Not part of any workspace.\n[workspace]\n\n{}\n",
        local_dependencies(deps, &root)
    );
    write(&dir.join("Cargo.toml"), &manifest)?;
    write(&dir.join("src/main.rs"), main_rs)?;
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))
        .map_err(|e| format!("cannot copy Cargo.lock: {e}"))?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo_bin)
        .args(["build", "--offline", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target))
    .map_err(|e| format!("{e}\nthe README quickstart `{name}` does not build"))?;
    Ok(target.join("debug").join(name))
}

/// Runs `cmd`, failing unless it succeeds; returns its stdout.
fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    eprintln!("\n==> {what}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start `{what}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprint!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("`{what}` failed ({})", out.status))
    }
}

/// `cargo xtask readme`.
pub(crate) fn readme(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`readme` takes no arguments, got `{a}`"));
    }
    let root = root();
    let text = std::fs::read_to_string(root.join("README.md"))
        .map_err(|e| format!("cannot read README.md: {e}"))?;
    const HOST: &str = "## Quickstart: host developers";
    const PLUGIN: &str = "## Quickstart: plugin authors";
    let host = section_blocks(&text, HOST)?;
    let plugin = section_blocks(&text, PLUGIN)?;

    // The `cjm` command and the echo sample the quickstarts use.
    cargo(&[
        "build",
        "-p",
        "cjm",
        "-p",
        "cjm-sample-plugins",
        "--bin",
        "cjm",
        "--bin",
        "echo",
    ])?;
    let target = target_dir()?;
    let bin_dir = target.join("debug");
    let tmp = TempDir(std::env::temp_dir().join(format!("cjm-readme-{}", std::process::id())));
    let data_dir = tmp.0.join("data");

    // Host quickstart, against the echo sample.
    let host_dir = tmp.0.join("my-host");
    let echo_manifest = format!(
        "{{\"name\": \"echo\", \"version\": \"0.1.0\", \"category\": \"samples\", \"command\": {:?}}}",
        bin_dir.join("echo").display().to_string()
    );
    write(&host_dir.join(".cjm/manifests/echo.json"), &echo_manifest)?;
    let host_bin = build_crate(
        &host_dir,
        "cjm-readme-host",
        block(&host, "toml", HOST)?,
        block(&host, "rust,ignore", HOST)?,
        &target,
    )?;
    let out = output(
        Command::new(&host_bin)
            .current_dir(&host_dir)
            .env("CJM_DATA_DIR", &data_dir),
        "the host quickstart",
    )?;
    if out.trim() != r#"{"text":"hi"}"# {
        return Err(format!(
            "the host quickstart printed {out:?}, its comment promises {{\"text\":\"hi\"}}"
        ));
    }

    // Plugin quickstart: the worker, its manifest, then the README's `cjm` lines.
    let hello_dir = tmp.0.join("hello");
    build_crate(
        &hello_dir,
        "hello",
        block(&plugin, "toml", PLUGIN)?,
        block(&plugin, "rust,ignore", PLUGIN)?,
        &target,
    )?;
    write(
        &hello_dir.join(".cjm/manifests/hello.json"),
        block(&plugin, "json", PLUGIN)?,
    )?;
    // The manifest names `target/debug/hello` relative to the crate, as a plain `cargo build`
    // would place it; here the build went to the shared target directory.
    std::os::unix::fs::symlink(&target, hello_dir.join("target"))
        .map_err(|e| format!("cannot link the target directory: {e}"))?;
    let path = std::env::join_paths(
        std::iter::once(bin_dir.clone()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .map_err(|e| format!("cannot extend PATH: {e}"))?;
    let mut calls = 0;
    for line in block(&plugin, "sh", PLUGIN)?.lines() {
        let line = line.trim();
        if !line.starts_with("cjm ") {
            continue;
        }
        let out = output(
            Command::new("sh")
                .args(["-c", line])
                .current_dir(&hello_dir)
                .env("PATH", &path)
                .env("CJM_DATA_DIR", &data_dir),
            line,
        )?;
        if line.starts_with("cjm call ") {
            calls += 1;
            if !out.contains("Ada!") {
                return Err(format!("`{line}` printed {out:?}, which greets no Ada"));
            }
        }
    }
    if calls == 0 {
        return Err(format!(
            "README.md `{PLUGIN}`: the sh block has no `cjm call` line"
        ));
    }
    eprintln!("\nxtask readme: both quickstarts build and run");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_blocks_of_one_section() {
        let md = "# t\n\n## A\n\ntext\n\n```toml\n[dependencies]\nx = 1\n```\n\n```rust,ignore\nfn main() {}\n```\n\n## B\n\n```json\n{}\n```\n";
        let a = section_blocks(md, "## A").unwrap();
        assert_eq!(
            a,
            vec![
                ("toml".to_string(), "[dependencies]\nx = 1\n".to_string()),
                ("rust,ignore".to_string(), "fn main() {}\n".to_string()),
            ]
        );
        assert_eq!(block(&a, "toml", "A").unwrap(), "[dependencies]\nx = 1\n");
        assert!(block(&a, "json", "A").is_err());
        assert!(section_blocks(md, "## C").is_err());
    }

    #[test]
    fn points_cjm_path_dependencies_at_the_checkout() {
        let deps = "[dependencies]\n# a comment\ncjm-host = { path = \"../cjm/crates/cjm-host\" }\nserde_json = \"1\"";
        let got = local_dependencies(deps, Path::new("/repo"));
        assert_eq!(
            got,
            "[dependencies]\n# a comment\ncjm-host = { path = \"/repo/crates/cjm-host\" }\nserde_json = \"1\""
        );
    }

    #[test]
    fn the_readme_has_both_quickstarts() {
        let text = std::fs::read_to_string(root().join("README.md")).unwrap();
        for h in [
            "## Quickstart: host developers",
            "## Quickstart: plugin authors",
        ] {
            let b = section_blocks(&text, h).unwrap();
            assert!(block(&b, "toml", h).unwrap().contains("cjm-"));
            assert!(
                block(&b, "rust,ignore", h).unwrap().contains("fn main")
                    || block(&b, "rust,ignore", h).unwrap().contains("main!(")
            );
        }
    }
}
