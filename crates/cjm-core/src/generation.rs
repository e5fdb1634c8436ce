//! Worker generations: which implementation of the worker protocol a plugin runs on.
//!
//! A plugin's generation is known before its worker is spawned (from its manifest and its
//! installed environment), because the launch itself differs between generations. The host
//! branches on it in one place per concern (launch, error decoding, hot config) instead of
//! asking "is this Python?" here and there. PROTOCOL.md §9 lists every difference.

use serde::{Deserialize, Serialize};

/// Which implementation of the worker protocol a plugin's worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerGeneration {
    /// A cjm worker built with `cjm-worker-sdk` (protocol v1 with cjm's extensions).
    Native,
    /// The original's universal Python worker of the cjm-plugin-system 0.0.28 era.
    Seed,
    /// The original's worker as of cjm-plugin-system 0.0.46 (manifest v2.0, adapters,
    /// `_job_error` bodies, `/reconfigure`).
    V0046,
    /// The worker of cjm-substrate, the original's successor (0.0.46's endpoints).
    Substrate,
}

impl WorkerGeneration {
    /// The name used in logs, `cjm info` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Seed => "seed",
            Self::V0046 => "v0046",
            Self::Substrate => "substrate",
        }
    }

    /// True for the original's Python workers (every generation but [`Self::Native`]).
    pub fn is_python(self) -> bool {
        !matches!(self, Self::Native)
    }
}

impl std::fmt::Display for WorkerGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for g in [
            WorkerGeneration::Native,
            WorkerGeneration::Seed,
            WorkerGeneration::V0046,
            WorkerGeneration::Substrate,
        ] {
            let text = serde_json::to_string(&g).unwrap();
            assert_eq!(text, format!("\"{}\"", g.as_str()));
            assert_eq!(serde_json::from_str::<WorkerGeneration>(&text).unwrap(), g);
            assert_eq!(g.is_python(), g != WorkerGeneration::Native);
        }
    }
}
