//! `cjm secret`: the per-plugin secret store shared with the original's host
//! (`<data-dir>/secrets/secrets.json`, see `cjm_host::secrets`). Values are read from stdin or
//! a prompt that does not echo, never from the command line, and are never printed.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::Path;
use std::process::ExitCode;

use cjm_core::PluginError;
use cjm_host::secrets::SecretStore;
use serde_json::json;

use crate::cli::SecretCommand;
use crate::output::{self, note, say};

fn store_error(e: cjm_host::secrets::SecretError) -> PluginError {
    PluginError::config(e.to_string(), Vec::new()).retriable(false)
}

/// Runs one `cjm secret` command against the store of `data_dir`.
pub(crate) fn run(data_dir: &Path, cmd: SecretCommand) -> Result<ExitCode, PluginError> {
    let store = SecretStore::for_data_dir(data_dir);
    match cmd {
        SecretCommand::Set { name, key } => {
            let value = read_value(&name, &key)?;
            store.set(&name, &key, &value).map_err(store_error)?;
            note(&format!(
                "set {key} for {name} in {} (takes effect at the plugin's next start, and at once in a running `cjm serve`)",
                store.path().display()
            ));
        }
        SecretCommand::Unset { name, key } => {
            if store.unset(&name, &key).map_err(store_error)? {
                note(&format!("removed {key} of {name}"));
            } else {
                note(&format!("{name} has no secret {key}"));
            }
        }
        SecretCommand::List { name, json } => {
            let mut all = store.list().map_err(store_error)?;
            if let Some(n) = &name {
                all.retain(|p, _| p == n);
            }
            if json {
                say!("{}", output::json(&json!(all)));
            } else if all.is_empty() {
                note("no secrets set");
            } else {
                for (plugin, keys) in all {
                    for k in keys {
                        say!("{plugin:<24} {k}");
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The value: one line from a prompt without echo on a terminal, else all of stdin (one
/// trailing newline removed).
fn read_value(name: &str, key: &str) -> Result<String, PluginError> {
    let stdin = std::io::stdin();
    let fail = |e: std::io::Error| PluginError::user_input(format!("cannot read the value: {e}"));
    let mut value = String::new();
    if stdin.is_terminal() {
        // Echo goes off before the prompt shows, so nothing typed after it is ever shown.
        let echo_off = set_echo(false);
        output::warn_line(&format!("value of {key} for {name} (not shown): "));
        let read = stdin.lock().read_line(&mut value);
        if echo_off {
            set_echo(true);
        }
        read.map_err(fail)?;
    } else {
        std::io::Read::read_to_string(&mut stdin.lock(), &mut value).map_err(fail)?;
    }
    let value = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value)
        .to_owned();
    if value.is_empty() {
        return Err(PluginError::user_input(
            "empty value: give it on stdin (`… | cjm secret set NAME KEY`) or at the prompt",
        ));
    }
    Ok(value)
}

/// Turns the terminal's echo off or on with `stty` (on the inherited stdin); true if it worked.
fn set_echo(on: bool) -> bool {
    std::process::Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .stdin(std::process::Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}
