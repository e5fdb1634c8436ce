//! The original's later wire (cjm-plugin-system 0.0.46 and cjm-substrate): typed `_job_error`
//! failures, the `/reconfigure` and `/task` bodies, the lifecycle hooks' answers and `__wire__`
//! result envelopes. PROTOCOL.md §9 lists these per worker generation.
//!
//! Decoding here never depends on the generation: a 0.0.28 worker never sends `_job_error`, so
//! the same rules serve every original worker.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorCategory, FieldError, PluginError, ResourceShortfall};

/// The key of a typed failure: `{"_job_error": {...}}` as a 500 body of `/execute` and `/task`
/// or as the terminal line of `/execute_stream`.
pub const JOB_ERROR_KEY: &str = "_job_error";

/// The key naming a typed result's kind in a `__wire__` envelope.
pub const WIRE_KIND_KEY: &str = "__wire__";

/// The key of a `__wire__` envelope's payload.
pub const WIRE_DATA_KEY: &str = "data";

/// Paths the 0.0.46 worker serves beyond the seed era's ten.
pub mod paths {
    /// `POST {"old_config", "new_config"}`: hot configuration change (fires release hooks).
    pub const RECONFIGURE: &str = "/reconfigure";
    /// `POST {"task", "method", "kwargs"}`: a task-adapter method.
    pub const TASK: &str = "/task";
    /// `POST`: eager download / cache warming.
    pub const PREFETCH: &str = "/prefetch";
    /// `POST`: the plugin is being disabled (the worker stays).
    pub const ON_DISABLE: &str = "/on_disable";
    /// `POST`: the plugin is enabled again.
    pub const ON_ENABLE: &str = "/on_enable";
    /// `GET`: live option domains of configuration fields.
    pub const CONFIG_OPTIONS: &str = "/config_options";
    /// `GET`: the plugin class's live structural surface.
    pub const STRUCTURAL_SURFACE: &str = "/structural_surface";
}

/// The original's `ResourceShortfall` as sent inside a `_job_error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobShortfall {
    /// `gpu_vram_mb`, `system_ram_mb` or `disk_mb`.
    pub resource: String,
    /// What the plugin needed.
    pub needed: f64,
    /// What was available.
    pub available: f64,
}

/// The original's `JobError` dict, as its worker serializes it. Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// `user_input`, `transient`, `resource` or `fatal` (others are read as `fatal`).
    #[serde(default = "fatal_word")]
    pub category: String,
    /// The message for people.
    #[serde(default)]
    pub message: String,
    /// Whether the original considers a retry safe.
    #[serde(default)]
    pub retriable: Option<bool>,
    /// `repr()` of the exception (`PluginCancelledError(...)` marks a cancellation).
    #[serde(default)]
    pub original_exc_repr: Option<String>,
    /// The Python traceback.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Backoff hint of transient errors.
    #[serde(default)]
    pub retry_after_seconds: Option<f64>,
    /// Names of the invalid inputs.
    #[serde(default)]
    pub fields_invalid: Option<Vec<String>>,
    /// Needed versus available, for resource errors.
    #[serde(default)]
    pub resource_shortfall: Option<JobShortfall>,
    /// The plugin that raised.
    #[serde(default)]
    pub plugin_name: Option<String>,
}

/// How a cancellation's `original_exc_repr` starts: 0.0.46 and cjm-substrate name the class
/// differently.
const CANCELLED_REPRS: [&str; 2] = ["PluginCancelledError", "CapabilityCancelledError"];

fn fatal_word() -> String {
    "fatal".to_owned()
}

impl JobError {
    /// The [`PluginError`] this failure means: the category (a cancellation when the exception
    /// was `PluginCancelledError`), the original's `retriable` flag, the invalid fields, the
    /// shortfall and the backoff hint; the traceback goes to the details, never the message.
    pub fn into_plugin_error(self) -> PluginError {
        let cancelled = self
            .original_exc_repr
            .as_deref()
            .is_some_and(|r| CANCELLED_REPRS.iter().any(|c| r.starts_with(c)));
        let category = if cancelled {
            ErrorCategory::Cancelled
        } else {
            match self.category.as_str() {
                "user_input" => ErrorCategory::UserInput,
                "transient" => ErrorCategory::Transient,
                "resource" => ErrorCategory::Resource,
                _ => ErrorCategory::Fatal,
            }
        };
        let message = if self.message.is_empty() {
            self.original_exc_repr
                .clone()
                .unwrap_or_else(|| "the plugin failed without a message".to_owned())
        } else {
            self.message
        };
        let mut e = PluginError::new(category, message);
        // Cancellation is never retriable (the original's own rule); otherwise its flag wins.
        e.retriable = !cancelled && self.retriable.unwrap_or(e.retriable);
        e.details.fields = self
            .fields_invalid
            .unwrap_or_default()
            .into_iter()
            .map(|field| FieldError {
                field,
                reason: "invalid".to_owned(),
            })
            .collect();
        e.details.resources = self
            .resource_shortfall
            .into_iter()
            .map(|s| ResourceShortfall {
                resource: s.resource,
                needed: s.needed,
                available: s.available,
            })
            .collect();
        e.details.retry_after_seconds = self.retry_after_seconds;
        e.details.traceback = self.traceback;
        e.details.plugin = self.plugin_name;
        e
    }
}

/// The typed failure in `value` when it is a `{"_job_error": {...}}` object. A malformed
/// payload still yields a `fatal` error naming what was wrong, never `None`.
pub fn job_error(value: &Value) -> Option<PluginError> {
    let payload = value.as_object()?.get(JOB_ERROR_KEY)?;
    Some(match JobError::deserialize(payload) {
        Ok(j) => j.into_plugin_error(),
        Err(err) => PluginError::fatal(format!("malformed `{JOB_ERROR_KEY}` payload: {err}")),
    })
}

/// `POST /reconfigure`: the configuration in force and the one to apply. The worker diffs
/// them and fires `_release_<trigger>` for each changed `RELOAD_TRIGGER` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconfigureRequest {
    /// The configuration before.
    pub old_config: Option<Value>,
    /// The configuration to apply.
    pub new_config: Option<Value>,
}

/// `POST /task`: one method of a task adapter, keyword arguments only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The task's address (the adapter's `task`).
    pub task: String,
    /// The adapter's method.
    pub method: String,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

/// `{"status": ..., "detail"?: ...}` answers of `/prefetch`, `/reconfigure`, `/on_disable` and
/// `/on_enable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    /// `prefetched`, `reconfigured`, `disabled`, `enabled`, `not_supported` or `error`.
    pub status: String,
    /// Why, when `status` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl HookStatus {
    /// True when the plugin lacks the hook (a no-op, not a failure).
    pub fn not_supported(&self) -> bool {
        self.status == "not_supported"
    }

    /// The hook's own failure (`{"status": "error"}` answers with 200), as a `fatal` error.
    pub fn into_result(self, hook: &str) -> Result<Self, PluginError> {
        if self.status == "error" {
            return Err(PluginError::fatal(format!(
                "the plugin's {hook} hook failed: {}",
                self.detail.as_deref().unwrap_or("no detail")
            )));
        }
        Ok(self)
    }
}

/// A typed result as the original's `wire_encode` tags it: `{"__wire__": kind, "data": {...}}`.
/// cjm passes such results through untouched; this is the helper to read one.
#[derive(Debug, Clone, PartialEq)]
pub struct WireEnvelope<'a> {
    /// The DTO's kind, e.g. `transcription.result`.
    pub kind: &'a str,
    /// The payload (`null` when absent, as the original reads a missing one as `{}`).
    pub data: &'a Value,
}

impl<'a> WireEnvelope<'a> {
    /// The envelope in `value`, if it is one (an object whose `__wire__` is a string).
    pub fn decode(value: &'a Value) -> Option<Self> {
        let o = value.as_object()?;
        let kind = o.get(WIRE_KIND_KEY)?.as_str()?;
        Some(Self {
            kind,
            data: o.get(WIRE_DATA_KEY).unwrap_or(&Value::Null),
        })
    }

    /// The payload as `T` when the kind is `kind`; `None` for another kind, an error naming
    /// the kind when the payload does not fit.
    pub fn data_as<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Option<Result<T, PluginError>> {
        if self.kind != kind {
            return None;
        }
        let data = if self.data.is_null() {
            Value::Object(Map::new())
        } else {
            self.data.clone()
        };
        Some(serde_json::from_value(data).map_err(|e| {
            PluginError::fatal(format!("`{}` result does not decode: {e}", self.kind))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_errors_map_to_typed_errors_with_their_details() {
        let e = job_error(&json!({"_job_error": {
            "category": "user_input", "message": "bad lang", "retriable": false,
            "original_exc_repr": "PluginInputError('bad lang')",
            "traceback": "Traceback (most recent call last):\n  ...",
            "fields_invalid": ["lang"], "plugin_name": "nltk"
        }}))
        .unwrap();
        assert_eq!(e.category, ErrorCategory::UserInput);
        assert_eq!(e.message, "bad lang");
        assert!(!e.retriable);
        assert_eq!(e.details.fields[0].field, "lang");
        assert!(e
            .details
            .traceback
            .as_deref()
            .unwrap()
            .starts_with("Traceback"));
        assert!(!e.to_string().contains("Traceback"), "{e}");

        let r = job_error(&json!({"_job_error": {
            "category": "resource", "message": "OOM", "retriable": true,
            "original_exc_repr": "PluginResourceError('OOM')",
            "resource_shortfall": {"resource": "gpu_vram_mb", "needed": 4096.0, "available": 512}
        }}))
        .unwrap();
        assert_eq!(r.category, ErrorCategory::Resource);
        assert_eq!(r.details.resources[0].needed, 4096.0);
        assert_eq!(r.details.resources[0].available, 512.0);

        let t = job_error(&json!({"_job_error": {
            "category": "transient", "message": "busy", "retriable": true,
            "original_exc_repr": "PluginTransientError('busy')", "retry_after_seconds": 2.5
        }}))
        .unwrap();
        assert_eq!(t.category, ErrorCategory::Transient);
        assert_eq!(t.details.retry_after_seconds, Some(2.5));
        assert!(t.retriable);
    }

    #[test]
    fn bodies_and_stream_lines_of_0046_workers_are_typed() {
        use crate::wire::{error_from_response, StreamLine, WorkerFlavor};
        let body = json!({"_job_error": {
            "category": "user_input", "message": "no such language", "retriable": false,
            "original_exc_repr": "ValueError('no such language')",
            "traceback": "Traceback (most recent call last): boom"
        }});
        let e = error_from_response(500, body.to_string().as_bytes());
        assert_eq!(e.category, ErrorCategory::UserInput);
        assert_eq!(e.message, "no such language");
        assert_eq!(e.category.exit_code(), 10);
        assert!(e.details.traceback.is_some());
        // 409 is always a cancellation.
        let c = error_from_response(409, br#"{"detail": "cancelled"}"#);
        assert_eq!(c.category, ErrorCategory::Cancelled);
        // The terminal stream line is an error, never a chunk.
        match StreamLine::interpret(body, WorkerFlavor::Original) {
            StreamLine::Error(e) => assert_eq!(e.category, ErrorCategory::UserInput),
            other => panic!("a `_job_error` line was read as {other:?}"),
        }
    }

    #[test]
    fn cancellation_unknown_categories_and_malformed_payloads() {
        let c = job_error(&json!({"_job_error": {
            "category": "transient", "message": "x", "retriable": false,
            "original_exc_repr": "PluginCancelledError('p')"
        }}))
        .unwrap();
        assert_eq!(c.category, ErrorCategory::Cancelled);
        assert!(!c.retriable);
        let sub = job_error(&json!({"_job_error": {
            "category": "transient", "message": "x", "retriable": false,
            "original_exc_repr": "CapabilityCancelledError('p')"
        }}))
        .unwrap();
        assert_eq!(sub.category, ErrorCategory::Cancelled);
        let odd = job_error(&json!({"_job_error": {"category": "weird", "message": "m"}})).unwrap();
        assert_eq!(odd.category, ErrorCategory::Fatal);
        let bad = job_error(&json!({"_job_error": 5})).unwrap();
        assert_eq!(bad.category, ErrorCategory::Fatal);
        assert!(bad.message.contains("malformed"), "{}", bad.message);
        assert!(job_error(&json!({"error": "x"})).is_none());
        assert!(job_error(&json!([1])).is_none());
    }

    #[test]
    fn wire_envelopes_decode_and_hooks_report_failures() {
        #[derive(Deserialize, PartialEq, Debug)]
        struct Tok {
            tokens: Vec<String>,
        }
        let v = json!({"__wire__": "text.tokens", "data": {"tokens": ["a", "b"]}});
        let env = WireEnvelope::decode(&v).unwrap();
        assert_eq!(env.kind, "text.tokens");
        let tok: Tok = env.data_as("text.tokens").unwrap().unwrap();
        assert_eq!(tok.tokens, ["a", "b"]);
        assert!(env.data_as::<Tok>("other").is_none());
        assert!(env.data_as::<u32>("text.tokens").unwrap().is_err());
        assert!(WireEnvelope::decode(&json!({"data": 1})).is_none());

        let ok: HookStatus = serde_json::from_value(json!({"status": "disabled"})).unwrap();
        assert!(ok.into_result("on_disable").is_ok());
        let err: HookStatus =
            serde_json::from_value(json!({"status": "error", "detail": "gpu stuck"})).unwrap();
        let e = err.into_result("on_disable").unwrap_err();
        assert!(e.message.contains("gpu stuck"));
        let body = serde_json::to_value(ReconfigureRequest {
            old_config: Some(json!({"lang": "en"})),
            new_config: Some(json!({"lang": "de"})),
        })
        .unwrap();
        assert_eq!(
            body,
            json!({"old_config": {"lang": "en"}, "new_config": {"lang": "de"}})
        );
    }
}
