//! Printing: errors with their category, progress notes on a terminal only, logging set-up.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::IsTerminal;

use cjm_core::{ErrorCategory, PluginError};

/// Sends host and worker logs to stderr when asked (`-v`, `-vv`), else only warnings.
pub(crate) fn init_logging(verbose: u8) {
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
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A progress note for people watching a terminal; silent when stderr is piped.
pub(crate) fn note(text: &str) {
    if std::io::stderr().is_terminal() {
        warn_line(text);
    }
}

/// Prints a failed operation: category, message, invalid fields, exit status and the worker's
/// last lines, every part [cleaned](clean). `own_timeout`: the user's `--timeout` passed, so
/// retrying the same call would just time out again.
pub(crate) fn report(e: &PluginError, own_timeout: bool) {
    warn_line(&format!("cjm: {} error: {}", e.category, e.message));
    for f in &e.details.fields {
        let field = if f.field.is_empty() {
            "<root>"
        } else {
            &f.field
        };
        warn_line(&format!("  field {field}: {}", f.reason));
    }
    for r in &e.details.resources {
        warn_line(&format!(
            "  {}: needed {}, available {}",
            r.resource, r.needed, r.available
        ));
    }
    if let Some(s) = &e.details.exit_status {
        warn_line(&format!("  worker {s}"));
    }
    if !e.details.last_log_lines.is_empty() {
        warn_line("  last worker output:");
        for l in &e.details.last_log_lines {
            warn_line(&format!("    {}", clean(l, false)));
        }
    }
    if own_timeout && e.category == ErrorCategory::Timeout {
        warn_line("  (the --timeout given passed; a longer one may let the call finish)");
    } else if e.retriable {
        warn_line("  (retrying may succeed)");
    }
}

/// JSON for stdout: pretty on a terminal, one line when piped.
pub(crate) fn json(value: &serde_json::Value) -> String {
    if std::io::stdout().is_terminal() {
        json_terminal_safe(serde_json::to_string_pretty(value).unwrap_or_default())
    } else {
        json_terminal_safe(value.to_string())
    }
}

/// Makes text from manifests, workers and error messages safe to print on a terminal: every C0
/// control (except `\t`, and `\n` when `multi_line`), DEL and every C1 control (U+0080–U+009F,
/// which some terminals read as ESC-sequences too) is replaced by a visible escape such as
/// `\x1b` or `\u{9b}`, so that a plugin cannot retitle, clear or reprogram the user's terminal.
pub(crate) fn clean(text: &str, multi_line: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t' && !(multi_line && c == '\n'))
            || matches!(c, '\u{2028}' | '\u{2029}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// Prints one line of text on stdout, [cleaned](clean) (newlines kept).
pub(crate) fn say_line(text: &str) {
    println!("{}", clean(text, true));
}

/// Prints one line of text on stderr, [cleaned](clean) (newlines kept).
pub(crate) fn warn_line(text: &str) {
    eprintln!("{}", clean(text, true));
}

/// One-line JSON for stdout (stream chunks), terminal-safe like [`json`].
pub(crate) fn json_line(value: &serde_json::Value) -> String {
    json_terminal_safe(value.to_string())
}

/// `println!`, with the text [cleaned](clean) for the terminal.
macro_rules! say {
    ($($t:tt)*) => { $crate::output::say_line(&format!($($t)*)) };
}
pub(crate) use say;

/// `eprintln!`, with the text [cleaned](clean) for the terminal.
macro_rules! tell {
    ($($t:tt)*) => { $crate::output::warn_line(&format!($($t)*)) };
}
pub(crate) use tell;

/// JSON text with the characters JSON leaves raw but terminals may act on (DEL and the C1
/// controls) written as `\u` escapes; the JSON value is unchanged.
fn json_terminal_safe(text: String) -> String {
    if !text.chars().any(|c| c.is_control() && c as u32 >= 0x7f) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c as u32 >= 0x7f {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_visibly() {
        assert_eq!(
            clean("a\x1b]0;pwned\x07\x1b[2J\u{9b}31m\x7fb", false),
            "a\\x1b]0;pwned\\x07\\x1b[2J\\u{9b}31m\\x7fb"
        );
        assert_eq!(clean("two\nlines\tok", true), "two\nlines\tok");
        assert_eq!(clean("two\nlines", false), "two\\x0alines");
        assert_eq!(clean("cr\rhidden", true), "cr\\x0dhidden");
        assert!(matches!(clean("plain é", false), Cow::Borrowed(_)));
    }

    #[test]
    fn json_keeps_its_value_but_escapes_c1() {
        let v = serde_json::json!({"d": "x\u{9b}2J\u{7f}\x1b"});
        let text = json_terminal_safe(v.to_string());
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }
}
