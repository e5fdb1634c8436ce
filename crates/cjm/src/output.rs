//! Printing: errors with their category, progress notes on a terminal only, logging set-up.

use std::io::IsTerminal;

use cjm_core::PluginError;

/// Sends host and worker logs to stderr when asked (`-v`, `-vv`), else only warnings.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CJM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A progress note for people watching a terminal; silent when stderr is piped.
pub fn note(text: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{text}");
    }
}

/// Prints a failed operation: category, message, invalid fields, exit status and the worker's
/// last lines.
pub fn report(e: &PluginError) {
    eprintln!("cjm: {} error: {}", e.category, e.message);
    for f in &e.details.fields {
        eprintln!(
            "  field {}: {}",
            if f.field.is_empty() {
                "<root>"
            } else {
                &f.field
            },
            f.reason
        );
    }
    for r in &e.details.resources {
        eprintln!(
            "  {}: needed {}, available {}",
            r.resource, r.needed, r.available
        );
    }
    if let Some(s) = &e.details.exit_status {
        eprintln!("  worker {s}");
    }
    if !e.details.last_log_lines.is_empty() {
        eprintln!("  last worker output:");
        for l in &e.details.last_log_lines {
            eprintln!("    {l}");
        }
    }
    if e.retriable {
        eprintln!("  (retrying may succeed)");
    }
}

/// JSON for stdout: pretty on a terminal, one line when piped.
pub fn json(value: &serde_json::Value) -> String {
    if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        value.to_string()
    }
}
