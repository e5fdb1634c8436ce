//! The [`Plugin`] trait: what an author implements and what the host's proxy implements, so a
//! caller cannot tell an isolated plugin from an in-process one.
//!
//! The trait is object safe and uses [`async_trait`](mod@async_trait) (boxed futures), so managers can hold
//! `Arc<dyn Plugin>` of any kind side by side.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
pub use tokio_util::sync::CancellationToken;

use crate::error::PluginError;
use crate::protocols::{CloudAware, LifecycleAware};

/// A stream of result chunks. The stream ends after the last chunk; an `Err` item is terminal.
pub type ChunkStream = BoxStream<'static, Result<Value, PluginError>>;

/// How far a running call has come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Fraction done in `0.0..=1.0`, or `-1.0` when indeterminate.
    pub progress: f64,
    /// A status message.
    #[serde(default)]
    pub message: String,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            progress: 0.0,
            message: String::new(),
        }
    }
}

/// A shared, cheaply clonable progress cell: the call writes, `/progress` reads.
#[derive(Debug, Clone, Default)]
pub struct ProgressCell(Arc<Mutex<Progress>>);

impl ProgressCell {
    /// Records progress. Values outside `0..=1` (other than `-1`, indeterminate) are clamped;
    /// NaN counts as indeterminate.
    pub fn set(&self, fraction: f64, message: impl Into<String>) {
        let progress = if fraction.is_nan() || fraction < 0.0 {
            -1.0
        } else {
            fraction.min(1.0)
        };
        let p = Progress {
            progress,
            message: message.into(),
        };
        match self.0.lock() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }

    /// The latest progress.
    pub fn get(&self) -> Progress {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The per-call context: cancellation, progress and deadline.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    cancel: CancellationToken,
    progress: ProgressCell,
    deadline: Option<Instant>,
    tag: Option<std::sync::Arc<str>>,
}

impl CallContext {
    /// A context with a fresh cancellation token, its own progress cell and no deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context around a cancellation token and a progress cell made elsewhere (a worker
    /// registers both before the call starts, for `/cancel` and `/progress`), with no deadline:
    /// unlike `new().with_cancel(..).with_progress(..)`, it makes no token or cell only to
    /// replace them.
    pub fn from_parts(cancel: CancellationToken, progress: ProgressCell) -> Self {
        Self {
            cancel,
            progress,
            deadline: None,
            tag: None,
        }
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Tags the call (a job id, say): a cjm worker logs what the call does under the tag
    /// (`x-cjm-call-tag`, PROTOCOL.md §4).
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into().into());
        self
    }

    /// The call's tag, if it has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Uses `token` for cancellation.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Reports progress into `cell`.
    pub fn with_progress(mut self, cell: ProgressCell) -> Self {
        self.progress = cell;
        self
    }

    /// The cancellation token; a plugin checks it or awaits [`CancellationToken::cancelled`].
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// True once the call has been cancelled (by `/cancel`, a disconnect or the caller).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(cancelled)` once the call has been cancelled: `ctx.check_cancelled()?` in loops.
    pub fn check_cancelled(&self) -> Result<(), PluginError> {
        if self.is_cancelled() {
            Err(PluginError::cancelled("the call was cancelled"))
        } else {
            Ok(())
        }
    }

    /// Reports progress (fraction in `0..=1`, or negative for indeterminate) and a message.
    pub fn report_progress(&self, fraction: f64, message: impl Into<String>) {
        self.progress.set(fraction, message);
    }

    /// The progress cell.
    pub fn progress(&self) -> &ProgressCell {
        &self.progress
    }

    /// When the call must be done by, if the caller set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// One call: the original's `args` and `kwargs`, large binary payloads, and the context.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Binary payloads, referenced from `args`/`kwargs` as `{"$cjm_blob": index}` (PROTOCOL.md).
    pub blobs: Vec<Bytes>,
    /// Cancellation, progress and deadline.
    pub ctx: CallContext,
}

impl Call {
    /// A call with positional arguments only.
    pub fn new(args: Vec<Value>) -> Self {
        Self {
            args,
            ..Self::default()
        }
    }

    /// Adds a keyword argument.
    pub fn kwarg(mut self, key: impl Into<String>, value: Value) -> Self {
        self.kwargs.insert(key.into(), value);
        self
    }

    /// Sets the keyword arguments.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Attaches a binary payload and returns the call; reference it as `{"$cjm_blob": i}`.
    pub fn with_blob(mut self, blob: impl Into<Bytes>) -> Self {
        self.blobs.push(blob.into());
        self
    }

    /// Replaces the context.
    pub fn with_ctx(mut self, ctx: CallContext) -> Self {
        self.ctx = ctx;
        self
    }
}

/// The result of a call: a JSON value and any binary payloads it references.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// The JSON result (`null` for none).
    pub value: Value,
    /// Binary payloads referenced from `value` as `{"$cjm_blob": index}`.
    pub blobs: Vec<Bytes>,
}

impl Output {
    /// A result with binary payloads.
    pub fn with_blobs(value: Value, blobs: Vec<Bytes>) -> Self {
        Self { value, blobs }
    }
}

impl From<Value> for Output {
    fn from(value: Value) -> Self {
        Self {
            value,
            blobs: Vec::new(),
        }
    }
}

/// The result of a call as JSON text, not parsed into a [`Value`]: for callers that pass the
/// result on as JSON (`cjm serve` does), which then costs no parse and no second write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawOutput {
    /// Exactly one JSON value, as UTF-8 text (checked by [`RawOutput::checked`]).
    pub json: Bytes,
    /// Binary payloads referenced from the value as `{"$cjm_blob": index}`.
    pub blobs: Vec<Bytes>,
}

impl RawOutput {
    /// `json` once checked to be exactly one JSON value in UTF-8 (whitespace around it
    /// allowed), without building it: a worker's answer that is not JSON is an error here, not
    /// in whoever the text is passed on to.
    pub fn checked(json: Bytes, blobs: Vec<Bytes>) -> Result<Self, PluginError> {
        let text = std::str::from_utf8(&json)
            .map_err(|e| PluginError::fatal(format!("the answer is not UTF-8: {e}")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| PluginError::fatal(format!("the answer is not JSON: {e}")))?;
        Ok(Self { json, blobs })
    }

    /// The text of `out`'s value.
    pub fn from_output(out: Output) -> Result<Self, PluginError> {
        let json =
            crate::wire::to_json_vec(&out.value).map_err(|e| PluginError::fatal(e.to_string()))?;
        Ok(Self {
            json: json.into(),
            blobs: out.blobs,
        })
    }

    /// Parses the text into an [`Output`].
    pub fn parse(self) -> Result<Output, PluginError> {
        let value = serde_json::from_slice(&self.json)
            .map_err(|e| PluginError::fatal(format!("the answer is not JSON: {e}")))?;
        Ok(Output::with_blobs(value, self.blobs))
    }
}

/// The answer to a cancel request (the original's `/cancel` statuses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The running calls were asked to stop.
    Cancelled,
    /// The plugin cannot cancel.
    NotSupported,
    /// Cancelling failed.
    Error {
        /// Why.
        detail: String,
    },
}

/// A plugin, in-process or behind a worker.
///
/// Every method takes `&self`: plugins are shared between concurrent calls and keep their state
/// behind interior mutability. Only [`name`](Plugin::name), [`version`](Plugin::version),
/// [`initialize`](Plugin::initialize) and [`execute`](Plugin::execute) must be written; the rest
/// have the original's defaults (no schema, no config, no-op cleanup, cancel not supported).
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name.
    fn name(&self) -> &str;

    /// The plugin's version.
    fn version(&self) -> &str;

    /// Applies a configuration. Called once after start and again for every hot update; the
    /// configuration has been validated against [`config_schema`](Plugin::config_schema).
    /// An error leaves the previous configuration in force.
    async fn initialize(&self, config: Value) -> Result<(), PluginError>;

    /// Runs one call.
    async fn execute(&self, call: Call) -> Result<Output, PluginError>;

    /// Runs one call as a stream of chunks. By default, one chunk: the result of
    /// [`execute`](Plugin::execute).
    async fn execute_stream(&self, call: Call) -> Result<ChunkStream, PluginError> {
        let out = self.execute(call).await?;
        Ok(Box::pin(futures::stream::once(
            async move { Ok(out.value) },
        )))
    }

    /// The JSON Schema of the configuration (`{}` when there is none).
    async fn config_schema(&self) -> Result<Value, PluginError> {
        Ok(Value::Object(Map::new()))
    }

    /// The configuration in force (`{}` when there is none).
    async fn current_config(&self) -> Result<Value, PluginError> {
        Ok(Value::Object(Map::new()))
    }

    /// Releases everything the plugin holds. Called once before the plugin goes away.
    async fn cleanup(&self) -> Result<(), PluginError> {
        Ok(())
    }

    /// Asks the running calls to stop.
    async fn cancel(&self) -> Result<CancelOutcome, PluginError> {
        Ok(CancelOutcome::NotSupported)
    }

    /// The progress of the latest call.
    async fn progress(&self) -> Result<Progress, PluginError> {
        Ok(Progress::default())
    }

    /// The lifecycle view of this plugin, if it manages processes or resources.
    fn lifecycle(&self) -> Option<&dyn LifecycleAware> {
        None
    }

    /// The cloud view of this plugin, if it runs on remote resources.
    fn cloud(&self) -> Option<&dyn CloudAware> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    #[test]
    fn raw_outputs_are_checked_without_being_built() {
        let ok = RawOutput::checked(Bytes::from_static(b" {\"a\": [1, \"\xc3\xa9\"]}\n"), vec![]);
        let ok = ok.unwrap();
        assert_eq!(ok.clone().parse().unwrap().value, json!({"a": [1, "é"]}));
        for bad in [&b"{\"a\": 1} x"[..], b"", b"{\"a\"", b"\"\xff\"", b"1 2"] {
            let e = RawOutput::checked(Bytes::copy_from_slice(bad), vec![]).unwrap_err();
            assert_eq!(e.category, crate::ErrorCategory::Fatal, "{bad:?}");
        }
        let out = Output::with_blobs(json!({"x": "y"}), vec![Bytes::from_static(b"b")]);
        let raw = RawOutput::from_output(out.clone()).unwrap();
        assert_eq!(&raw.json[..], br#"{"x":"y"}"#);
        assert_eq!(raw.parse().unwrap(), out);
    }

    struct Minimal;

    #[async_trait]
    impl Plugin for Minimal {
        fn name(&self) -> &str {
            "minimal"
        }
        fn version(&self) -> &str {
            "1.0.0"
        }
        async fn initialize(&self, _config: Value) -> Result<(), PluginError> {
            Ok(())
        }
        async fn execute(&self, call: Call) -> Result<Output, PluginError> {
            call.ctx.check_cancelled()?;
            call.ctx.report_progress(0.5, "half");
            Ok(json!({"args": call.args, "kwargs": call.kwargs}).into())
        }
    }

    #[test]
    fn defaults_of_the_trait() {
        futures::executor::block_on(async {
            let p: Arc<dyn Plugin> = Arc::new(Minimal);
            assert_eq!(p.config_schema().await.unwrap(), json!({}));
            assert_eq!(p.current_config().await.unwrap(), json!({}));
            assert_eq!(p.cancel().await.unwrap(), CancelOutcome::NotSupported);
            assert_eq!(p.progress().await.unwrap(), Progress::default());
            assert!(p.lifecycle().is_none() && p.cloud().is_none());
            let chunks: Vec<_> = p
                .execute_stream(Call::new(vec![json!(1)]).kwarg("k", json!("v")))
                .await
                .unwrap()
                .collect()
                .await;
            assert_eq!(chunks.len(), 1);
            assert_eq!(
                chunks[0].as_ref().unwrap(),
                &json!({"args": [1], "kwargs": {"k": "v"}})
            );
        });
    }

    #[test]
    fn context_cancellation_and_progress() {
        let cell = ProgressCell::default();
        let ctx = CallContext::new().with_progress(cell.clone());
        let call = Call::new(vec![]).with_ctx(ctx.clone());
        let out = futures::executor::block_on(Minimal.execute(call)).unwrap();
        assert_eq!(out.value["args"], json!([]));
        assert_eq!(cell.get().progress, 0.5);
        assert_eq!(cell.get().message, "half");
        ctx.cancellation().cancel();
        let err = futures::executor::block_on(Minimal.execute(Call::new(vec![]).with_ctx(ctx)))
            .unwrap_err();
        assert_eq!(err.category, crate::ErrorCategory::Cancelled);
    }

    #[test]
    fn progress_is_clamped() {
        let cell = ProgressCell::default();
        cell.set(7.0, "");
        assert_eq!(cell.get().progress, 1.0);
        cell.set(-0.2, "");
        assert_eq!(cell.get().progress, -1.0);
        cell.set(f64::NAN, "");
        assert_eq!(cell.get().progress, -1.0);
    }

    #[test]
    fn cancel_outcome_wire_shape() {
        assert_eq!(
            serde_json::to_value(CancelOutcome::Cancelled).unwrap(),
            json!({"status": "cancelled"})
        );
        assert_eq!(
            serde_json::to_value(CancelOutcome::NotSupported).unwrap(),
            json!({"status": "not_supported"})
        );
        assert_eq!(
            serde_json::to_value(CancelOutcome::Error { detail: "x".into() }).unwrap(),
            json!({"status": "error", "detail": "x"})
        );
    }
}
