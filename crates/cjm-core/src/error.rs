//! The error taxonomy shared by host, worker and wire: [`PluginError`] and [`ErrorCategory`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of failure happened. Callers decide on retries, eviction and messages from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    /// The call's arguments were wrong. Not retriable as is.
    UserInput,
    /// The configuration was invalid or rejected. Not retriable as is.
    Config,
    /// A passing failure: the worker crashed or restarted, a connection broke. Retriable.
    Transient,
    /// Not enough memory, VRAM or another resource. Retriable once resources free up.
    Resource,
    /// A deadline passed.
    Timeout,
    /// The call was cancelled.
    Cancelled,
    /// The plugin is not loaded (or unknown).
    NotLoaded,
    /// The plugin is loaded but disabled.
    Disabled,
    /// Anything else: a plugin bug, a protocol violation, a worker that cannot start.
    Fatal,
}

impl ErrorCategory {
    /// Every category.
    pub const ALL: [ErrorCategory; 9] = [
        Self::UserInput,
        Self::Config,
        Self::Transient,
        Self::Resource,
        Self::Timeout,
        Self::Cancelled,
        Self::NotLoaded,
        Self::Disabled,
        Self::Fatal,
    ];

    /// The serialized name (`"user_input"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserInput => "user_input",
            Self::Config => "config",
            Self::Transient => "transient",
            Self::Resource => "resource",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::NotLoaded => "not_loaded",
            Self::Disabled => "disabled",
            Self::Fatal => "fatal",
        }
    }

    /// Whether an error of this category is retriable unless said otherwise.
    pub fn default_retriable(self) -> bool {
        matches!(self, Self::Transient | Self::Resource | Self::Timeout)
    }

    /// The HTTP status a cjm worker answers with for this category (see PROTOCOL.md).
    pub fn http_status(self) -> u16 {
        match self {
            Self::UserInput => 400,
            Self::Disabled => 403,
            Self::NotLoaded => 404,
            Self::Cancelled => 409,
            Self::Config => 422,
            Self::Fatal => 500,
            Self::Transient => 503,
            Self::Timeout => 504,
            Self::Resource => 507,
        }
    }

    /// A process exit code per category, used by the `cjm` command (documented there).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::UserInput => 10,
            Self::Config => 11,
            Self::Transient => 12,
            Self::Resource => 13,
            Self::Timeout => 14,
            Self::Cancelled => 15,
            Self::NotLoaded => 16,
            Self::Disabled => 17,
            Self::Fatal => 18,
        }
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid field of a configuration or request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// JSON pointer-like path of the field, e.g. `model` or `languages/2` (empty for the root).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// What a refused admission needed and what was available.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceShortfall {
    /// The resource: `gpu_vram_mb`, `system_ram_mb`, …
    pub resource: String,
    /// How much was needed.
    pub needed: f64,
    /// How much was available.
    pub available: f64,
}

/// The details a caller may need to act on an error. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetails {
    /// Invalid fields (config and user-input errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
    /// Needed versus available (resource errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceShortfall>,
    /// The worker's exit status, when it died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<String>,
    /// Whether the kernel's OOM killer ended the worker (a `resource` error, "worker out of
    /// memory"; `exit_status` says what the evidence was).
    #[serde(default, skip_serializing_if = "is_false")]
    pub out_of_memory: bool,
    /// The last lines the worker wrote to stderr, when it died or failed to start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log_lines: Vec<String>,
    /// Seconds after which a retry may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<f64>,
    /// The plugin involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// A traceback or backtrace, when the worker sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ErrorDetails {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A typed failure of a plugin operation, the same value on both sides of the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub struct PluginError {
    /// The kind of failure.
    pub category: ErrorCategory,
    /// A message for people.
    pub message: String,
    /// Whether retrying the same operation may succeed.
    pub retriable: bool,
    /// Extra facts (boxed, so results carrying a `PluginError` stay small).
    #[serde(default, skip_serializing_if = "ErrorDetails::is_empty")]
    pub details: Box<ErrorDetails>,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.details.plugin {
            write!(f, "[{p}] ")?;
        }
        write!(f, "{} error: {}", self.category, self.message)?;
        for field in &self.details.fields {
            write!(f, "; {field}")?;
        }
        for r in &self.details.resources {
            write!(
                f,
                "; {} needed {} but {} available",
                r.resource, r.needed, r.available
            )?;
        }
        if let Some(s) = &self.details.exit_status {
            write!(f, "; worker {s}")?;
        }
        Ok(())
    }
}

impl PluginError {
    /// An error of `category`, retriable per [`ErrorCategory::default_retriable`].
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            retriable: category.default_retriable(),
            details: Box::default(),
        }
    }

    /// Bad call arguments.
    pub fn user_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::UserInput, message)
    }

    /// Invalid configuration, naming each invalid field.
    pub fn config(message: impl Into<String>, fields: Vec<FieldError>) -> Self {
        let mut e = Self::new(ErrorCategory::Config, message);
        e.details.fields = fields;
        e
    }

    /// A passing failure (retriable).
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Transient, message)
    }

    /// Not enough of a resource.
    pub fn resource(message: impl Into<String>, shortfalls: Vec<ResourceShortfall>) -> Self {
        let mut e = Self::new(ErrorCategory::Resource, message);
        e.details.resources = shortfalls;
        e
    }

    /// A deadline passed.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Timeout, message)
    }

    /// The call was cancelled.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Cancelled, message)
    }

    /// The plugin `name` is not loaded.
    pub fn not_loaded(name: &str) -> Self {
        Self::new(
            ErrorCategory::NotLoaded,
            format!("plugin `{name}` is not loaded"),
        )
        .with_plugin(name)
    }

    /// The plugin `name` is disabled.
    pub fn disabled(name: &str) -> Self {
        Self::new(
            ErrorCategory::Disabled,
            format!("plugin `{name}` is disabled"),
        )
        .with_plugin(name)
    }

    /// Anything else.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Fatal, message)
    }

    /// Sets whether the error is retriable.
    pub fn retriable(mut self, retriable: bool) -> Self {
        self.retriable = retriable;
        self
    }

    /// Names the plugin involved.
    pub fn with_plugin(mut self, name: &str) -> Self {
        self.details.plugin = Some(name.to_owned());
        self
    }

    /// Attaches a traceback or backtrace.
    pub fn with_traceback(mut self, tb: impl Into<String>) -> Self {
        self.details.traceback = Some(tb.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn categories_serialize_snake_case_and_map_to_statuses() {
        for c in ErrorCategory::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        }
        assert_eq!(ErrorCategory::Cancelled.http_status(), 409);
        let codes: std::collections::HashSet<_> =
            ErrorCategory::ALL.iter().map(|c| c.exit_code()).collect();
        assert_eq!(codes.len(), 9);
    }

    #[test]
    fn retriable_defaults() {
        assert!(PluginError::transient("x").retriable);
        assert!(PluginError::resource("x", vec![]).retriable);
        assert!(!PluginError::user_input("x").retriable);
        assert!(!PluginError::fatal("x").retriable);
        assert!(PluginError::fatal("x").retriable(true).retriable);
    }

    #[test]
    fn errors_round_trip_and_display_details() {
        let e = PluginError::config(
            "invalid configuration",
            vec![FieldError {
                field: "model".into(),
                reason: "\"huge\" is not one of [\"small\",\"large\"]".into(),
            }],
        )
        .with_plugin("whisper");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["category"], "config");
        assert_eq!(v["details"]["fields"][0]["field"], "model");
        assert_eq!(serde_json::from_value::<PluginError>(v).unwrap(), e);
        let text = e.to_string();
        assert!(text.starts_with("[whisper] config error: invalid configuration; model:"));

        let r = PluginError::resource(
            "not enough VRAM",
            vec![ResourceShortfall {
                resource: "gpu_vram_mb".into(),
                needed: 4096.0,
                available: 1024.0,
            }],
        );
        assert!(r
            .to_string()
            .contains("gpu_vram_mb needed 4096 but 1024 available"));
        // Empty details are omitted on the wire.
        let plain = serde_json::to_value(PluginError::fatal("boom")).unwrap();
        assert_eq!(
            plain,
            json!({"category": "fatal", "message": "boom", "retriable": false})
        );
    }
}
