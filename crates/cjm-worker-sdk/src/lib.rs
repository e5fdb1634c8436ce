//! # cjm-worker-sdk
//!
//! The plugin author's half of cjm: implement [`Worker`], add [`main!`], and the result is a
//! worker binary that the cjm host spawns as its own process and calls over protocol v1
//! (`PROTOCOL.md`).
//!
//! ```
//! use cjm_worker_sdk::{async_trait, CallContext, Kwargs, PluginError, Worker};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! #[derive(Default, Serialize, Deserialize, JsonSchema)] // the schema of /config_schema
//! #[serde(default, deny_unknown_fields)]
//! struct Config {
//!     /// The greeting word.
//!     #[schemars(length(min = 1, max = 20))]
//!     greeting: String,
//! }
//!
//! #[derive(Deserialize, JsonSchema)] // {"kwargs": {"names": ["Ada", "Grace"]}}
//! struct Names { names: Vec<String> }
//! #[derive(Default)]
//! struct Greeter(std::sync::Mutex<Config>);
//!
//! #[async_trait]
//! impl Worker for Greeter {
//!     type Config = Config;
//!     type Input = Kwargs<Names>; // or Args<T>, Command<Enum>, serde_json::Value, ...
//!     type Output = Vec<String>; // anything Serialize
//!     const MAX_CONCURRENCY: u32 = 4; // calls at once; more wait
//!
//!     async fn initialize(&self, config: Config) -> Result<(), PluginError> {
//!         *self.0.lock().unwrap() = config; // validated; also every hot update
//!         Ok(())
//!     }
//!     async fn execute(&self, Kwargs(n): Kwargs<Names>, ctx: CallContext) -> Result<Vec<String>, PluginError> {
//!         let (greeting, names) = (self.0.lock().unwrap().greeting.clone(), n.names);
//!         let mut out = Vec::new();
//!         for (i, name) in names.iter().enumerate() {
//!             ctx.check_cancelled()?; // /cancel, a disconnect or the deadline
//!             ctx.report_progress(i as f64 / names.len() as f64, name.as_str()); // /progress
//!             out.push(format!("{greeting} {name}"));
//!         }
//!         Ok(out)
//!     }
//! }
//! cjm_worker_sdk::main!(Greeter::default()); // name and version: the crate's
//! ```
//!
//! That is the whole program (`examples/sample-plugins` has more: `echo`, a streaming
//! `transcriber`). Run one by hand with `greeter --listen unix:/tmp/g.sock`, then
//! `curl --unix-socket /tmp/g.sock localhost/health` (POST bodies need
//! `-H 'content-type: application/json'`).
//!
//! ## What the author gets
//!
//! - **Typed configuration**: [`Worker::Config`] derives `serde` and [`schemars::JsonSchema`];
//!   the schema (doc comments, defaults, ranges, lengths, patterns, enums) is served on
//!   `/config_schema`, every configuration is validated against it and deserialized before
//!   [`Worker::initialize`] sees it (invalid ones answer `422` naming each field, and the
//!   previous configuration stays in force). `initialize` is also the hot re-configure.
//! - **Typed inputs and outputs**: [`Kwargs`], [`Args`], [`Command`] (the original's
//!   `["operation"]` + kwargs convention), [`WithBlobs`] (binary payloads without base64), or
//!   the untyped [`serde_json::Value`] (`{"args", "kwargs"}` as received). Outputs are anything
//!   [`serde::Serialize`].
//! - **Zero-copy blobs**: started by a local host, the worker adopts its blob channel and
//!   blobs cross as sealed memfds, mapped read-only: a [`WithBlobs`] input reads them in place.
//!   Answer with a blob you were given (or a slice of it), or one built in a [`BlobBuf`], and
//!   the host gets the same memory back without a copy; other large blobs are copied once.
//! - **Streams**: [`Worker::execute_stream`] returns a stream (see [`chunks`]); the SDK writes
//!   NDJSON with protocol v1's end and error lines.
//! - **A call context** ([`CallContext`]): progress (read by `/progress`), a cancellation token
//!   (fired by `/cancel`, by the client disconnecting, by the deadline, by shutdown) and the
//!   deadline.
//! - **Isolation of plugin code**: plugin futures run on a multi-thread runtime apart from the
//!   HTTP server's single-thread runtime, so a plugin that blocks its thread does not stall
//!   `/health`, `/progress`, `/cancel` or `/stats`. A panic answers `500` and the worker lives
//!   on. Started by a local host, the worker also serves the host's calls socket on the plugin
//!   runtime itself, so a call runs on the thread that read it, with no hop between threads
//!   (see [`Options::calls_listener`]); control stays on the server's thread.
//! - **Lifecycle**: `SIGTERM` stops accepting, lets calls finish for 1.5 s, cancels the rest,
//!   runs [`Worker::cleanup`] and exits 0; the worker also exits when the host
//!   (`CJM_HOST_PID`) is gone.
//!
//! How the worker serves is set with [`Options`] builder methods (`main!`'s `key = value`
//! pairs). Running the process itself (the command line, the listening socket, exit statuses,
//! the server) is in [`runtime`]: plugins written against the untyped [`Plugin`] trait run with
//! [`runtime::run_plugin`], and a server can be embedded on a thread of its own with
//! [`runtime::Server::spawn`] (tests do this).

#![warn(missing_docs)]
// Library code never unwraps, panics or prints; tests may.
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::print_stdout
    )
)]

mod macros;
// Thin Linux-specific glue over cjm-sys; the only other place `unsafe` is allowed.
#[allow(unsafe_code)]
mod platform;
pub mod runtime;
mod server;
mod worker;

pub use cjm_core as core;
pub use cjm_core::wire::ExecuteRequest;
pub use cjm_core::{
    Call, CallContext, CancelOutcome, CancellationToken, ChunkStream, ErrorCategory, FieldError,
    Output, Plugin, PluginError, Progress,
};
/// Blobs in sealed memfds: answer with a blob built in [`BlobBuf`] (or with a blob you were
/// given, or a slice of it) and the host receives it without a copy.
pub use cjm_sys::shared_blob::{self, BlobBuf};

pub use server::{
    Options, DEFAULT_IDLE_RELEASE, DEFAULT_MAX_FRAME_BODY, DEFAULT_MAX_JSON_BODY,
    DEFAULT_SHUTDOWN_GRACE,
};
pub use worker::{
    chunks, Args, Command, FromCall, InputShape, IntoOutput, Kwargs, NoConfig, Typed, WithBlobs,
    Worker,
};

/// Re-exported for `#[async_trait] impl Worker for ...`.
pub use async_trait::async_trait;
/// Re-exported: payload bytes.
pub use bytes;
/// Re-exported: stream combinators for [`Worker::execute_stream`].
pub use futures;
/// Re-exported: the JSON Schema derive used by [`Worker::Config`].
pub use schemars;
/// Re-exported: the runtime plugin code runs on (timers, `spawn_blocking`, ...).
pub use tokio;
