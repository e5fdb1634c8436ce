//! The author-facing [`Worker`] trait, typed inputs and outputs, and [`Typed`], the adapter
//! that turns a `Worker` into a [`cjm_core::Plugin`].

use std::any::Any;
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use cjm_core::describe::{InputKind, OperationDescription};
use cjm_core::wire::ExecuteRequest;
use cjm_core::{
    schema_defaults, Call, CallContext, CancelOutcome, ChunkStream, FieldError, Output, Plugin,
    PluginError,
};
use futures::{Stream, StreamExt};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A plugin, as its author writes it: typed configuration, typed input, typed output.
///
/// Only [`execute`](Worker::execute) must be written. Every method takes `&self` and calls run
/// concurrently (up to [`MAX_CONCURRENCY`](Worker::MAX_CONCURRENCY)), so state lives behind
/// interior mutability (`Mutex`, atomics, `ArcSwap`…).
///
/// Plugin code runs on its own multi-thread runtime, apart from the HTTP server: blocking or
/// CPU-heavy code does not stall `/health`, `/progress` or `/cancel`. Long CPU work should
/// still check [`CallContext::is_cancelled`] now and then.
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// The configuration. Its JSON Schema (from [`JsonSchema`]: doc comments become
    /// descriptions, `#[serde(default)]` fills `default`, `#[schemars(range(min = 1))]`,
    /// `#[schemars(length(max = 8))]`, `#[schemars(regex(pattern = ..))]` and enums become
    /// constraints) is served on `/config_schema`, and every configuration is validated
    /// against it before [`initialize`](Worker::initialize) sees it. Add
    /// `#[serde(deny_unknown_fields)]` to refuse unknown keys. Use [`NoConfig`] for none.
    type Config: Serialize + DeserializeOwned + JsonSchema + Send + 'static;

    /// What a call receives, built from the request's `args`/`kwargs`: see [`FromCall`]
    /// ([`Kwargs`], [`Args`], [`Command`], [`WithBlobs`], or untyped [`serde_json::Value`] /
    /// [`ExecuteRequest`] / [`Call`]).
    type Input: FromCall + Send + 'static;

    /// What a call returns: anything [`Serialize`], or [`WithBlobs`] to return binary
    /// payloads without base64.
    type Output: IntoOutput + Send + 'static;

    /// How many calls may run at once (more wait in a queue). The host may lower it with
    /// `CJM_MAX_CONCURRENCY`.
    const MAX_CONCURRENCY: u32 = 1;

    /// The operations meant to be called as streams (`/execute_stream`), by name, as
    /// `WORKER --describe` reports them; `"*"` marks every operation (for an input that is not
    /// a [`Command`]). Informational: every operation may be called either way.
    const STREAMING: &'static [&'static str] = &[];

    /// Applies a validated configuration: once after start and again for every hot update.
    /// An error leaves the previous configuration in force (as far as the SDK is concerned:
    /// `/config` keeps answering the previous one).
    async fn initialize(&self, config: Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Runs one call. `ctx` carries the cancellation token, the progress cell (read by
    /// `/progress`) and the deadline.
    async fn execute(
        &self,
        input: Self::Input,
        ctx: CallContext,
    ) -> Result<Self::Output, PluginError>;

    /// Runs one call as a stream of chunks (NDJSON on the wire). Build the stream with
    /// [`chunks`] from any stream of serializable items. By default: one chunk, the result of
    /// [`execute`](Worker::execute).
    async fn execute_stream(
        &self,
        input: Self::Input,
        ctx: CallContext,
    ) -> Result<ChunkStream, PluginError> {
        let out = self.execute(input, ctx).await?.into_output()?;
        Ok(Box::pin(futures::stream::once(
            async move { Ok(out.value) },
        )))
    }

    /// Releases what the plugin holds: on `/cleanup` and when the worker shuts down.
    async fn cleanup(&self) -> Result<(), PluginError> {
        Ok(())
    }

    /// Called on `/cancel`, after the SDK has already fired every running call's cancellation
    /// token. Override it only for work the token does not reach (a subprocess, a remote job).
    async fn cancel(&self) -> Result<CancelOutcome, PluginError> {
        Ok(CancelOutcome::NotSupported)
    }
}

/// The configuration of a plugin that has none: any object is accepted and ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NoConfig {}

/// Builds a call's input from the request.
pub trait FromCall: Sized {
    /// Takes what it needs out of `call` (its `args`, `kwargs` and `blobs`).
    fn from_call(call: &mut Call) -> Result<Self, PluginError>;

    /// What this input accepts, for `WORKER --describe`. By default: anything.
    fn describe() -> InputShape {
        InputShape::any()
    }
}

/// What a [`FromCall`] input accepts: how the call's arguments are read and their JSON
/// Schema. `WORKER --describe` turns it into the operations it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct InputShape {
    /// How `args`/`kwargs` are read.
    pub kind: InputKind,
    /// The JSON Schema of what is read (`kwargs` object, `args` array, or the externally tagged
    /// enum of a [`Command`]); `true` for anything.
    pub schema: Value,
    /// Whether the input takes the request's blobs.
    pub blobs: bool,
}

impl InputShape {
    /// Any arguments, untyped.
    pub fn any() -> Self {
        Self {
            kind: InputKind::Any,
            schema: Value::Bool(true),
            blobs: false,
        }
    }

    /// An input of `kind` read into `T`, with `T`'s generated schema.
    pub fn of<T: JsonSchema>(kind: InputKind) -> Self {
        Self {
            kind,
            schema: schema_value::<T>(),
            blobs: false,
        }
    }

    /// The operations this input offers: one per variant of a [`Command`]'s enum (unit
    /// variants take no keyword arguments), otherwise one unnamed operation. `streaming`:
    /// [`Worker::STREAMING`].
    pub fn operations(&self, streaming: &[&str]) -> Vec<OperationDescription> {
        let streams = |name: Option<&str>| streaming.iter().any(|s| *s == "*" || Some(*s) == name);
        if self.kind != InputKind::Command {
            return vec![OperationDescription {
                name: None,
                description: String::new(),
                input_schema: self.schema.clone(),
                streams: streams(None),
                blobs: self.blobs,
            }];
        }
        let mut ops = Vec::new();
        let defs = self.schema.get("$defs").cloned();
        let with_defs = |mut schema: Value| {
            if let (Some(defs), Value::Object(m)) = (&defs, &mut schema) {
                if schema_refers(&Value::Object(m.clone())) {
                    m.insert("$defs".into(), defs.clone());
                }
            }
            schema
        };
        let no_kwargs = || serde_json::json!({"type": "object", "additionalProperties": false});
        for variant in command_variants(&self.schema) {
            let description = variant
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let names: Vec<String> = match (variant.get("const"), variant.get("enum")) {
                (Some(Value::String(c)), _) => vec![c.clone()],
                (_, Some(Value::Array(e))) => e
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            };
            for name in names {
                ops.push(OperationDescription {
                    streams: streams(Some(&name)),
                    name: Some(name),
                    description: description.clone(),
                    input_schema: no_kwargs(),
                    blobs: self.blobs,
                });
            }
            if let Some(Value::Object(props)) = variant.get("properties") {
                for (name, schema) in props {
                    let input_schema = with_defs(inline_ref(schema, defs.as_ref()));
                    let description = if description.is_empty() {
                        schema
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    } else {
                        description.clone()
                    };
                    ops.push(OperationDescription {
                        streams: streams(Some(name)),
                        name: Some(name.clone()),
                        description,
                        input_schema,
                        blobs: self.blobs,
                    });
                }
            }
        }
        ops
    }
}

/// `T`'s JSON Schema as a value.
fn schema_value<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Bool(true))
}

/// The variants of an externally tagged enum's schema (`oneOf`/`anyOf`, or the schema itself
/// for an enum of unit variants only).
fn command_variants(schema: &Value) -> Vec<&Value> {
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(vs)) = schema.get(key) {
            return vs.iter().collect();
        }
    }
    vec![schema]
}

/// A newtype variant's schema is a `$ref` to its struct: the definition itself (with the
/// variant's own keys, such as its description, laid over it), so its fields show.
fn inline_ref(schema: &Value, defs: Option<&Value>) -> Value {
    let target = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs?.get(name));
    match (target, schema) {
        (Some(Value::Object(def)), Value::Object(own)) => {
            let mut out = def.clone();
            for (k, v) in own {
                if k != "$ref" {
                    out.insert(k.clone(), v.clone());
                }
            }
            Value::Object(out)
        }
        _ => schema.clone(),
    }
}

/// Whether `schema` has a `$ref` anywhere.
fn schema_refers(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(schema_refers),
        Value::Array(a) => a.iter().any(schema_refers),
        _ => false,
    }
}

/// The untyped escape hatch: `{"args": [...], "kwargs": {...}}` as received.
impl FromCall for Value {
    fn from_call(call: &mut Call) -> Result<Self, PluginError> {
        let mut m = Map::new();
        m.insert("args".into(), Value::Array(std::mem::take(&mut call.args)));
        m.insert(
            "kwargs".into(),
            Value::Object(std::mem::take(&mut call.kwargs)),
        );
        Ok(Value::Object(m))
    }
}

/// The untyped escape hatch, as a struct.
impl FromCall for ExecuteRequest {
    fn from_call(call: &mut Call) -> Result<Self, PluginError> {
        Ok(ExecuteRequest {
            args: std::mem::take(&mut call.args),
            kwargs: std::mem::take(&mut call.kwargs),
        })
    }
}

/// Everything: `args`, `kwargs` and `blobs` (the context is passed separately).
impl FromCall for Call {
    fn from_call(call: &mut Call) -> Result<Self, PluginError> {
        Ok(Call {
            args: std::mem::take(&mut call.args),
            kwargs: std::mem::take(&mut call.kwargs),
            blobs: std::mem::take(&mut call.blobs),
            ctx: call.ctx.clone(),
        })
    }
}

fn bad_input(what: impl std::fmt::Display, e: &serde_json::Error) -> PluginError {
    PluginError::user_input(format!("invalid {what}: {e}"))
}

/// Deserializes `value` into `T`; a failure names the field it happened at (`text`,
/// `items[2].name`) in the message and in the error's `fields`. `prefix` is how the path starts
/// (the operation's name for a [`Command`]). `what` names the input in a failure's message; it
/// is only formatted then.
fn decode<T: DeserializeOwned>(
    value: Value,
    what: std::fmt::Arguments<'_>,
    prefix: &str,
) -> Result<T, PluginError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = match (prefix.is_empty(), path.as_str()) {
            (_, ".") => String::new(),
            (true, p) => p.to_owned(),
            (false, p) => p.strip_prefix(prefix).map_or_else(
                || format!("{prefix}.{p}"),
                |rest| rest.trim_start_matches('.').to_owned(),
            ),
        };
        let mut err = if field.is_empty() {
            bad_input(what, &inner)
        } else {
            PluginError::user_input(format!("invalid {what}: `{field}`: {inner}"))
        };
        err.details.fields = vec![FieldError {
            field,
            reason: inner.to_string(),
        }];
        err
    })
}

/// Keyword arguments only, deserialized into `T` (typically a struct):
/// `{"kwargs": {"text": "hi"}}` → `T { text: "hi" }`. Positional arguments are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kwargs<T>(pub T);

impl<T: DeserializeOwned + JsonSchema> FromCall for Kwargs<T> {
    fn from_call(call: &mut Call) -> Result<Self, PluginError> {
        if !call.args.is_empty() {
            return Err(PluginError::user_input(format!(
                "this plugin takes keyword arguments only, got {} positional",
                call.args.len()
            )));
        }
        let kwargs = Value::Object(std::mem::take(&mut call.kwargs));
        decode(kwargs, format_args!("keyword arguments"), "").map(Kwargs)
    }

    fn describe() -> InputShape {
        InputShape::of::<T>(InputKind::Kwargs)
    }
}

/// Positional arguments only, deserialized into `T` from the `args` array (a tuple, a `Vec`,
/// a tuple struct). Keyword arguments are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args<T>(pub T);

impl<T: DeserializeOwned + JsonSchema> FromCall for Args<T> {
    fn from_call(call: &mut Call) -> Result<Self, PluginError> {
        if !call.kwargs.is_empty() {
            return Err(PluginError::user_input(
                "this plugin takes positional arguments only",
            ));
        }
        let args = Value::Array(std::mem::take(&mut call.args));
        decode(args, format_args!("positional arguments"), "").map(Args)
    }

    fn describe() -> InputShape {
        InputShape::of::<T>(InputKind::Args)
    }
}

/// The original's convention, an operation name then its parameters:
/// `{"args": ["sleep"], "kwargs": {"seconds": 1}}`, deserialized into an externally tagged
/// enum `T` as `{"sleep": {"seconds": 1}}`. A unit variant takes no keyword arguments.
///
/// ```
/// # use cjm_worker_sdk::Command;
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// #[serde(rename_all = "snake_case")]
/// enum Op { Echo(serde_json::Value), Sleep { seconds: f64 }, Ping }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command<T>(pub T);

impl<T: DeserializeOwned + JsonSchema> FromCall for Command<T> {
    fn from_call(call: &mut Call) -> Result<Self, PluginError> {
        let not_first = || {
            PluginError::user_input("expected the operation name as the first positional argument")
        };
        match call.args.as_slice() {
            [Value::String(_)] => {}
            [Value::String(_), ..] => {
                return Err(PluginError::user_input(
                    "expected the operation name as the only positional argument",
                ))
            }
            _ => return Err(not_first()),
        }
        // Moved out, not copied: the call's only argument is this name.
        let Some(Value::String(op)) = call.args.pop() else {
            return Err(not_first());
        };
        let kwargs = std::mem::take(&mut call.kwargs);
        let empty = kwargs.is_empty();
        let mut tagged = Map::new();
        tagged.insert(op.clone(), Value::Object(kwargs));
        match decode(Value::Object(tagged), format_args!("operation `{op}`"), &op) {
            Ok(v) => Ok(Command(v)),
            Err(e) if empty => serde_json::from_value(Value::String(op.clone()))
                .map(Command)
                .map_err(|_| e),
            Err(e) => Err(e),
        }
    }

    fn describe() -> InputShape {
        InputShape::of::<T>(InputKind::Command)
    }
}

/// A value with binary payloads: as an input, the request frame's blobs (JSON requests have
/// none); as an output, blobs sent back in a frame without base64. Refer to blob `i` from
/// the value as `{"$cjm_blob": i}` ([`cjm_core::wire::blob_ref`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WithBlobs<T> {
    /// The JSON part.
    pub value: T,
    /// The payloads.
    pub blobs: Vec<Bytes>,
}

impl<T: FromCall> FromCall for WithBlobs<T> {
    fn from_call(call: &mut Call) -> Result<Self, PluginError> {
        let blobs = std::mem::take(&mut call.blobs);
        Ok(WithBlobs {
            value: T::from_call(call)?,
            blobs,
        })
    }

    fn describe() -> InputShape {
        InputShape {
            blobs: true,
            ..T::describe()
        }
    }
}

/// Turns a call's return value into an [`Output`].
pub trait IntoOutput {
    /// The conversion; a value that cannot be serialized is a `fatal` error.
    fn into_output(self) -> Result<Output, PluginError>;
}

fn serialize_json<T: Serialize>(v: T) -> Result<Value, PluginError> {
    serde_json::to_value(v)
        .map_err(|e| PluginError::fatal(format!("the plugin's result is not serializable: {e}")))
}

/// `v` as a JSON value. A `Value` is taken as it is: serializing it into a new one would copy
/// every string and map in it (8 MiB more for an 8 MiB string echoed).
fn to_json<T: Serialize + 'static>(v: T) -> Result<Value, PluginError> {
    let mut slot = Some(v);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<Value>>() {
        Some(value) => Ok(value.take().unwrap_or_default()),
        // `Some(v)` serializes as `v`.
        None => serialize_json(slot),
    }
}

impl<T: Serialize + 'static> IntoOutput for T {
    fn into_output(self) -> Result<Output, PluginError> {
        to_json(self).map(Output::from)
    }
}

impl<T: Serialize + 'static> IntoOutput for WithBlobs<T> {
    fn into_output(self) -> Result<Output, PluginError> {
        Ok(Output::with_blobs(to_json(self.value)?, self.blobs))
    }
}

/// Turns a stream of serializable items into the [`ChunkStream`] that
/// [`Worker::execute_stream`] returns. `Value` items pass as they are; an item that cannot be
/// serialized ends the stream with a `fatal` error.
pub fn chunks<S, T>(stream: S) -> ChunkStream
where
    S: Stream<Item = Result<T, PluginError>> + Send + 'static,
    T: Serialize + 'static,
{
    Box::pin(stream.map(|item| item.and_then(to_json)))
}

/// A [`Worker`] as a [`Plugin`]: deserializes configurations and inputs, serializes outputs,
/// serves the generated schema and remembers the configuration in force.
pub struct Typed<W: Worker> {
    worker: W,
    name: String,
    version: String,
    /// Generated on first use (start-up stays light).
    schema: OnceLock<Value>,
    /// `None` until the first accepted configuration: the schema's defaults then.
    config: Mutex<Option<Value>>,
}

impl<W: Worker> std::fmt::Debug for Typed<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<W: Worker> Typed<W> {
    /// Wraps `worker` under `name` and `version`.
    pub fn new(worker: W, name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            worker,
            name: name.into(),
            version: version.into(),
            schema: OnceLock::new(),
            config: Mutex::new(None),
        }
    }

    /// The configuration's JSON Schema, generated from `W::Config`.
    pub fn schema(&self) -> &Value {
        self.schema.get_or_init(|| {
            serde_json::to_value(schemars::schema_for!(W::Config))
                .unwrap_or_else(|_| Value::Object(Map::new()))
        })
    }

    /// The wrapped worker.
    pub fn worker(&self) -> &W {
        &self.worker
    }

    fn set_config(&self, v: Value) {
        match self.config.lock() {
            Ok(mut g) => *g = Some(v),
            Err(p) => *p.into_inner() = Some(v),
        }
    }
}

#[async_trait]
impl<W: Worker> Plugin for Typed<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    async fn initialize(&self, config: Value) -> Result<(), PluginError> {
        let typed: W::Config = serde_json::from_value(config).map_err(|e| {
            PluginError::config(
                format!("invalid configuration: {e}"),
                vec![FieldError {
                    field: String::new(),
                    reason: e.to_string(),
                }],
            )
        })?;
        // The configuration in force, defaults included, as the plugin sees it.
        let in_force = serialize_json(&typed)?;
        self.worker.initialize(typed).await?;
        self.set_config(in_force);
        Ok(())
    }

    async fn execute(&self, mut call: Call) -> Result<Output, PluginError> {
        let input = W::Input::from_call(&mut call)?;
        self.worker.execute(input, call.ctx).await?.into_output()
    }

    async fn execute_stream(&self, mut call: Call) -> Result<ChunkStream, PluginError> {
        let input = W::Input::from_call(&mut call)?;
        self.worker.execute_stream(input, call.ctx).await
    }

    async fn config_schema(&self) -> Result<Value, PluginError> {
        Ok(self.schema().clone())
    }

    async fn current_config(&self) -> Result<Value, PluginError> {
        let current = match self.config.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        Ok(current.unwrap_or_else(|| Value::Object(schema_defaults(self.schema()))))
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        self.worker.cleanup().await
    }

    async fn cancel(&self) -> Result<CancelOutcome, PluginError> {
        self.worker.cancel().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    enum Op {
        /// Returns its kwargs.
        Echo(Value),
        /// Naps.
        Sleep {
            /// How long.
            seconds: f64,
        },
        Ping,
        Pong,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Item {
        name: String,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Batch {
        items: Vec<Item>,
    }

    /// The buffer of the string in `v`, to tell a value moved from one copied.
    fn string_buffer(v: &Value) -> *const u8 {
        v["text"].as_str().map_or(std::ptr::null(), str::as_ptr)
    }

    #[test]
    fn a_value_result_is_moved_not_copied() {
        let value = json!({"text": "x".repeat(1024)});
        let before = string_buffer(&value);
        let out = value.into_output().unwrap();
        assert_eq!(string_buffer(&out.value), before);
        let blobbed = WithBlobs {
            value: json!({"text": "y".repeat(1024)}),
            blobs: vec![Bytes::from_static(b"z")],
        };
        let before = string_buffer(&blobbed.value);
        let out = blobbed.into_output().unwrap();
        assert_eq!(string_buffer(&out.value), before);
        assert_eq!(out.blobs.len(), 1);
    }

    #[test]
    fn typed_results_and_chunks_are_serialized() {
        use futures::FutureExt;
        #[derive(Serialize)]
        struct Word {
            index: usize,
            word: &'static str,
        }
        let out = Word {
            index: 1,
            word: "hi",
        }
        .into_output()
        .unwrap();
        assert_eq!(out.value, json!({"index": 1, "word": "hi"}));
        let first = json!({"text": "x".repeat(64)});
        let before = string_buffer(&first);
        let mut values = chunks(futures::stream::iter(vec![Ok(first)]));
        let moved = values.next().now_or_never().flatten().unwrap().unwrap();
        assert_eq!(string_buffer(&moved), before);
        let mut typed = chunks(futures::stream::iter(vec![Ok(Word {
            index: 2,
            word: "yo",
        })]));
        let chunk = typed.next().now_or_never().flatten().unwrap().unwrap();
        assert_eq!(chunk, json!({"index": 2, "word": "yo"}));
    }

    #[test]
    fn a_command_describes_each_variant_with_its_fields() {
        let shape = WithBlobs::<Command<Op>>::describe();
        assert_eq!(shape.kind, InputKind::Command);
        assert!(shape.blobs);
        let ops = shape.operations(&["sleep"]);
        let names: Vec<_> = ops.iter().filter_map(|o| o.name.as_deref()).collect();
        assert_eq!(names.len(), 4, "{ops:?}");
        for n in ["echo", "sleep", "ping", "pong"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let sleep = ops
            .iter()
            .find(|o| o.name.as_deref() == Some("sleep"))
            .unwrap();
        assert!(sleep.streams && sleep.blobs);
        assert_eq!(sleep.description, "Naps.");
        assert_eq!(
            sleep.input_schema["properties"]["seconds"]["type"],
            "number"
        );
        assert_eq!(sleep.input_schema["required"], json!(["seconds"]));
        let echo = ops
            .iter()
            .find(|o| o.name.as_deref() == Some("echo"))
            .unwrap();
        assert!(!echo.streams);
        assert_eq!(echo.description, "Returns its kwargs.");
        let ping = ops
            .iter()
            .find(|o| o.name.as_deref() == Some("ping"))
            .unwrap();
        assert_eq!(ping.input_schema["additionalProperties"], false);
    }

    #[test]
    fn kwargs_args_and_raw_inputs_describe_themselves() {
        let k = Kwargs::<Batch>::describe();
        assert_eq!(k.kind, InputKind::Kwargs);
        assert!(!k.blobs);
        let ops = k.operations(&["*"]);
        assert_eq!(ops.len(), 1);
        assert!(ops[0].name.is_none() && ops[0].streams);
        assert_eq!(ops[0].input_schema["properties"]["items"]["type"], "array");
        assert!(
            ops[0].input_schema.get("$defs").is_some(),
            "Item's definition kept"
        );
        let a = Args::<(u32, String)>::describe();
        assert_eq!(a.kind, InputKind::Args);
        assert_eq!(a.schema["type"], "array");
        assert!(!a.operations(&[])[0].streams);
        for any in [
            Value::describe(),
            ExecuteRequest::describe(),
            Call::describe(),
        ] {
            assert_eq!(any.kind, InputKind::Any);
            assert_eq!(any.schema, Value::Bool(true));
        }
        assert!(WithBlobs::<Value>::describe().blobs);
    }

    #[test]
    fn a_wrongly_typed_kwarg_names_its_field() {
        let Kwargs(ok) =
            Kwargs::<Batch>::from_call(&mut call(json!([]), json!({"items": [{"name": "a"}]})))
                .unwrap();
        assert_eq!(ok.items[0].name, "a");
        let e = Kwargs::<Batch>::from_call(&mut call(
            json!([]),
            json!({"items": [{"name": "a"}, {"name": 3}]}),
        ))
        .unwrap_err();
        assert_eq!(e.category, cjm_core::ErrorCategory::UserInput);
        assert_eq!(e.details.fields.len(), 1, "{e:?}");
        assert_eq!(e.details.fields[0].field, "items[1].name");
        assert!(e.message.contains("`items[1].name`"), "{}", e.message);
        let e = Command::<Op>::from_call(&mut call(json!(["sleep"]), json!({"seconds": "lots"})))
            .unwrap_err();
        assert_eq!(e.details.fields[0].field, "seconds", "{e:?}");
        assert!(
            e.message.contains("operation `sleep`: `seconds`"),
            "{}",
            e.message
        );
        let e = Args::<(u32, String)>::from_call(&mut call(json!([1, 2]), json!({}))).unwrap_err();
        assert_eq!(e.details.fields[0].field, "[1]", "{e:?}");
    }

    fn call(args: Value, kwargs: Value) -> Call {
        let Value::Array(args) = args else { panic!() };
        let Value::Object(kwargs) = kwargs else {
            panic!()
        };
        Call::new(args).with_kwargs(kwargs)
    }

    #[test]
    fn commands_map_onto_tagged_enums() {
        let Command(op) =
            Command::<Op>::from_call(&mut call(json!(["sleep"]), json!({"seconds": 1.5}))).unwrap();
        assert_eq!(op, Op::Sleep { seconds: 1.5 });
        let Command(op) =
            Command::<Op>::from_call(&mut call(json!(["echo"]), json!({"a": 1}))).unwrap();
        assert_eq!(op, Op::Echo(json!({"a": 1})));
        let Command(op) = Command::<Op>::from_call(&mut call(json!(["ping"]), json!({}))).unwrap();
        assert_eq!(op, Op::Ping);
        let e = Command::<Op>::from_call(&mut call(json!(["nope"]), json!({}))).unwrap_err();
        assert_eq!(e.category, cjm_core::ErrorCategory::UserInput);
        assert!(e.message.contains("unknown variant"), "{}", e.message);
        for args in [json!([]), json!([3]), json!([{"op": "ping"}])] {
            let e = Command::<Op>::from_call(&mut call(args, json!({}))).unwrap_err();
            assert!(e.message.contains("first positional argument"), "{e}");
        }
        let mut two = call(json!(["ping", 2]), json!({}));
        let e = Command::<Op>::from_call(&mut two).unwrap_err();
        assert!(e.message.contains("only positional argument"), "{e}");
        assert_eq!(
            two.args,
            vec![json!("ping"), json!(2)],
            "a refused call keeps its args"
        );
    }

    #[test]
    fn kwargs_and_args() {
        #[derive(Debug, Deserialize, JsonSchema)]
        struct In {
            text: String,
        }
        let Kwargs(i) =
            Kwargs::<In>::from_call(&mut call(json!([]), json!({"text": "hi"}))).unwrap();
        assert_eq!(i.text, "hi");
        assert!(Kwargs::<In>::from_call(&mut call(json!([1]), json!({"text": "hi"}))).is_err());
        let e = Kwargs::<In>::from_call(&mut call(json!([]), json!({}))).unwrap_err();
        assert!(e.message.contains("missing field `text`"), "{}", e.message);
        let Args((a, b)) =
            Args::<(u32, String)>::from_call(&mut call(json!([1, "x"]), json!({}))).unwrap();
        assert_eq!((a, b.as_str()), (1, "x"));
        assert!(Args::<(u32,)>::from_call(&mut call(json!([1]), json!({"k": 1}))).is_err());
        let raw = Value::from_call(&mut call(json!([1]), json!({"k": 2}))).unwrap();
        assert_eq!(raw, json!({"args": [1], "kwargs": {"k": 2}}));
        let mut c = call(json!([]), json!({})).with_blob(Bytes::from_static(b"abc"));
        let w = WithBlobs::<ExecuteRequest>::from_call(&mut c).unwrap();
        assert_eq!(w.blobs, vec![Bytes::from_static(b"abc")]);
    }

    #[test]
    fn outputs() {
        assert_eq!(
            json!({"a": 1}).into_output().unwrap().value,
            json!({"a": 1})
        );
        let o = WithBlobs {
            value: json!({"img": cjm_core::wire::blob_ref(0)}),
            blobs: vec![Bytes::from_static(b"\x00\x01")],
        }
        .into_output()
        .unwrap();
        assert_eq!(o.blobs.len(), 1);
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1u8); // non-string keys cannot become JSON
        assert_eq!(
            bad.into_output().unwrap_err().category,
            cjm_core::ErrorCategory::Fatal
        );
    }
}
