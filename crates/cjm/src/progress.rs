//! A progress bar or spinner on stderr from the worker's reported progress, for `call` and
//! `stream` on a terminal; nothing at all when stderr is not a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use cjm_core::Progress;
use cjm_host::PluginManager;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar's length: progress fractions are shown in tenths of a percent.
const SCALE: u64 = 1000;

/// How often the worker's progress is asked for.
const POLL: Duration = Duration::from_millis(100);

/// What the terminal shows for one progress report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BarState {
    /// Nothing reported yet (0 and no message): no bar.
    Idle,
    /// Indeterminate (`-1`): a spinner with the message.
    Spinner(String),
    /// A fraction: position out of [`SCALE`], with the message.
    Bar(u64, String),
}

/// Maps a worker's progress report to what is drawn. The message is cleaned of terminal
/// controls (it comes from the plugin).
pub(crate) fn bar_state(p: &Progress) -> BarState {
    let message = crate::output::clean(&p.message, false).into_owned();
    if p.progress.is_nan() || p.progress < 0.0 {
        BarState::Spinner(message)
    } else if p.progress == 0.0 && message.is_empty() {
        BarState::Idle
    } else {
        // Truncation is intended: 0.9996 is not yet done.
        let pos = (p.progress.min(1.0) * SCALE as f64) as u64;
        BarState::Bar(pos, message)
    }
}

/// The bar for one call: hidden unless stderr is a terminal.
pub(crate) fn bar() -> ProgressBar {
    if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(SCALE), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {elapsed} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        )
    } else {
        ProgressBar::hidden()
    }
}

/// Applies one state to the bar.
fn apply(bar: &ProgressBar, state: BarState) {
    match state {
        BarState::Idle => {}
        BarState::Spinner(m) => {
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(m);
            bar.tick();
        }
        BarState::Bar(pos, m) => {
            bar.set_position(pos);
            bar.set_message(m);
        }
    }
}

/// Polls the loaded plugin `name`'s progress into `bar` until dropped (the call ended). Does
/// nothing when the bar is hidden (stderr is not a terminal). Uses
/// [`PluginManager::progress`].
pub(crate) async fn follow(manager: &PluginManager, name: &str, bar: &ProgressBar) {
    if bar.is_hidden() {
        return std::future::pending().await;
    }
    let mut last = BarState::Idle;
    loop {
        if let Ok(p) = manager.progress(name).await {
            let state = bar_state(&p);
            if state != last {
                last = state.clone();
                apply(bar, state);
            }
        }
        bar.tick();
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(progress: f64, message: &str) -> Progress {
        Progress {
            progress,
            message: message.into(),
        }
    }

    #[test]
    fn maps_progress_to_bar_states() {
        assert_eq!(bar_state(&p(0.0, "")), BarState::Idle);
        assert_eq!(
            bar_state(&p(0.0, "starting")),
            BarState::Bar(0, "starting".into())
        );
        assert_eq!(bar_state(&p(0.25, "a")), BarState::Bar(250, "a".into()));
        assert_eq!(
            bar_state(&p(1.0, "done")),
            BarState::Bar(1000, "done".into())
        );
        assert_eq!(bar_state(&p(7.0, "")), BarState::Bar(1000, String::new()));
        assert_eq!(
            bar_state(&p(-1.0, "loading")),
            BarState::Spinner("loading".into())
        );
        assert_eq!(
            bar_state(&p(f64::NAN, "")),
            BarState::Spinner(String::new())
        );
        assert_eq!(
            bar_state(&p(0.5, "x\x1b[2Jy")),
            BarState::Bar(500, "x\\x1b[2Jy".into())
        );
    }

    #[test]
    fn applies_states_to_a_bar() {
        let bar = ProgressBar::with_draw_target(Some(SCALE), ProgressDrawTarget::hidden());
        apply(&bar, BarState::Bar(420, "step 3".into()));
        assert_eq!(bar.position(), 420);
        assert_eq!(bar.message(), "step 3");
        apply(&bar, BarState::Spinner("loading".into()));
        assert_eq!(bar.message(), "loading");
    }
}
