//! Self-description: what a worker prints for `WORKER --describe` (PROTOCOL.md,
//! "Self-description") without binding a socket or initialising its plugin. The host reads it
//! to learn a plugin's configuration schema and operations without loading it, and
//! `cjm manifest` writes a manifest from it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::Resources;

/// The command-line flag that makes a worker print its [`WorkerDescription`] and exit 0.
pub const DESCRIBE_FLAG: &str = "--describe";

/// The version of the description's shape ([`WorkerDescription::describe_version`]).
pub const DESCRIBE_VERSION: u32 = 1;

/// What `WORKER --describe` prints on stdout: one JSON document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerDescription {
    /// The shape's version ([`DESCRIBE_VERSION`]).
    pub describe_version: u32,
    /// The protocol the worker speaks when serving.
    pub protocol: u32,
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// What the plugin does (may be empty).
    #[serde(default)]
    pub description: String,
    /// The configuration's JSON Schema.
    pub config_schema: Value,
    /// How a call's `args`/`kwargs` are read.
    pub input: InputKind,
    /// The operations: one per variant for [`InputKind::Command`], else a single unnamed one.
    pub operations: Vec<OperationDescription>,
    /// Calls that run at once.
    pub max_concurrency: u32,
    /// Declared resources.
    #[serde(default)]
    pub resources: Resources,
}

/// How a worker reads a call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// Anything: `args` and `kwargs` as received.
    Any,
    /// Keyword arguments only (the operation's `input_schema` is the kwargs object's schema).
    Kwargs,
    /// Positional arguments only (`input_schema` is the `args` array's schema).
    Args,
    /// The operation's name as the only positional argument, its parameters as kwargs.
    Command,
}

/// One operation a worker offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationDescription {
    /// The operation's name (the first positional argument); `None` for a worker whose input
    /// is not a [`InputKind::Command`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it does (from the variant's doc comment).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// JSON Schema of its input; `true` (anything) when the input is untyped.
    pub input_schema: Value,
    /// Whether it is meant to be called with `/execute_stream`.
    #[serde(default)]
    pub streams: bool,
    /// Whether it takes binary payloads (blobs) beside its JSON input.
    #[serde(default)]
    pub blobs: bool,
}

impl WorkerDescription {
    /// Parses what a worker printed, naming what is wrong.
    pub fn parse(stdout: &[u8]) -> Result<Self, String> {
        let d: Self =
            serde_json::from_slice(stdout).map_err(|e| format!("not a worker description: {e}"))?;
        if d.describe_version != DESCRIBE_VERSION {
            return Err(format!(
                "describe_version {} is not supported (expected {DESCRIBE_VERSION})",
                d.describe_version
            ));
        }
        Ok(d)
    }

    /// The operation called `name`.
    pub fn operation(&self, name: &str) -> Option<&OperationDescription> {
        self.operations
            .iter()
            .find(|o| o.name.as_deref() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let d = WorkerDescription {
            describe_version: DESCRIBE_VERSION,
            protocol: 1,
            name: "echo".into(),
            version: "1.0.0".into(),
            description: String::new(),
            config_schema: json!({"type": "object"}),
            input: InputKind::Command,
            operations: vec![OperationDescription {
                name: Some("sleep".into()),
                description: "Naps.".into(),
                input_schema: json!({"type": "object"}),
                streams: false,
                blobs: true,
            }],
            max_concurrency: 8,
            resources: Resources::default(),
        };
        let text = serde_json::to_vec(&d).unwrap();
        let back = WorkerDescription::parse(&text).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.operation("sleep").unwrap().description, "Naps.");
        assert!(back.operation("nope").is_none());
        let mut v = serde_json::to_value(&d).unwrap();
        v["describe_version"] = json!(2);
        let err = WorkerDescription::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.contains("describe_version 2"), "{err}");
        assert!(WorkerDescription::parse(b"hello").is_err());
    }
}
