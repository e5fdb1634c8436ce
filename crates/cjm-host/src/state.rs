//! The visible state of a loaded plugin.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// The worker is being spawned and has not answered yet.
    Starting,
    /// Ready for calls, none running.
    Ready,
    /// Ready, with calls running.
    Busy,
    /// The worker died and will not be restarted (policy `never`, or a clean exit under
    /// `on-failure`).
    Crashed,
    /// The worker died and is being restarted.
    Restarting,
    /// Unloaded.
    Stopped,
    /// Crash loop: restarted too often; left stopped with its last log lines.
    Failed,
}

impl PluginState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Busy => "busy",
            Self::Crashed => "crashed",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    /// True in the states where calls can be served.
    pub fn is_serving(self) -> bool {
        matches!(self, Self::Ready | Self::Busy)
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
