//! A test plugin, a server around it on a Unix socket, and a tiny HTTP client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cjm_worker_sdk::runtime::{ListenAddr, Listener, Server, ServerHandle, ShutdownReason};
use cjm_worker_sdk::{
    async_trait, chunks, CallContext, CancelOutcome, ChunkStream, Command, ErrorCategory, Options,
    PluginError, Typed, WithBlobs, Worker,
};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    #[default]
    Fast,
    Slow,
}

/// Test configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// How hard to try.
    #[schemars(range(min = 1, max = 10))]
    pub level: u32,
    /// Speed.
    pub mode: Mode,
    /// A label; `reject` makes initialize fail.
    #[schemars(regex(pattern = r"^[a-z]+$"))]
    pub label: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            level: 3,
            mode: Mode::Fast,
            label: None,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    Echo(Value),
    Config,
    Fail {
        #[schemars(with = "String")]
        category: ErrorCategory,
        message: String,
    },
    Panic {
        message: String,
    },
    /// Reports progress 0.5 "halfway", then waits until cancelled.
    WaitCancel,
    /// Blocks its thread (no await) until the test opens the gate.
    Block,
    /// Counts itself as active, then waits until the gate opens (async).
    Hold,
    Blobs,
    Stream {
        n: u32,
    },
    StreamFail,
    StreamReserved,
    StreamPanic,
    /// Streams one chunk, then waits for cancellation.
    StreamForever,
    StreamStartFail,
}

/// What the test can observe and control.
#[derive(Default)]
pub(crate) struct Shared {
    pub cancelled: watch::Sender<u32>,
    pub active: watch::Sender<u32>,
    pub started: watch::Sender<u32>,
    pub gate: (Mutex<bool>, Condvar),
    pub gate_async: watch::Sender<bool>,
    pub max_active: watch::Sender<u32>,
    pub cleanups: watch::Sender<u32>,
    pub cancel_hooks: watch::Sender<u32>,
}

impl Shared {
    pub(crate) fn open_gate(&self) {
        let (m, c) = &self.gate;
        *m.lock().unwrap() = true;
        c.notify_all();
        self.gate_async.send_replace(true);
    }

    fn bump(w: &watch::Sender<u32>) {
        w.send_modify(|n| *n += 1);
    }
}

pub(crate) struct TestWorker {
    pub shared: Arc<Shared>,
    config: Mutex<Config>,
}

#[async_trait]
impl Worker for TestWorker {
    type Config = Config;
    type Input = WithBlobs<Command<Op>>;
    type Output = WithBlobs<Value>;
    const MAX_CONCURRENCY: u32 = 2;

    async fn initialize(&self, config: Config) -> Result<(), PluginError> {
        if config.label.as_deref() == Some("reject") {
            return Err(PluginError::config("label `reject` is refused", vec![]));
        }
        *self.config.lock().unwrap() = config;
        Ok(())
    }

    async fn execute(
        &self,
        input: WithBlobs<Command<Op>>,
        ctx: CallContext,
    ) -> Result<WithBlobs<Value>, PluginError> {
        let WithBlobs {
            value: Command(op),
            blobs,
        } = input;
        let plain = |v: Value| WithBlobs {
            value: v,
            blobs: vec![],
        };
        Shared::bump(&self.shared.started);
        match op {
            Op::Echo(v) => Ok(plain(v)),
            Op::Config => Ok(plain(
                serde_json::to_value(&*self.config.lock().unwrap()).unwrap(),
            )),
            Op::Fail { category, message } => Err(PluginError::new(category, message)),
            Op::Panic { message } => panic!("{message}"),
            Op::WaitCancel => {
                ctx.report_progress(0.5, "halfway");
                ctx.cancellation().cancelled().await;
                Shared::bump(&self.shared.cancelled);
                Err(PluginError::cancelled("stopped as asked"))
            }
            Op::Block => {
                let (m, c) = &self.shared.gate;
                let mut open = m.lock().unwrap();
                while !*open {
                    open = c.wait(open).unwrap();
                }
                Ok(plain(json!("unblocked")))
            }
            Op::Hold => {
                // Counted and read in one step: a call that ends in between must not lower
                // what this one saw.
                let mut now = 0;
                self.shared.active.send_modify(|n| {
                    *n += 1;
                    now = *n;
                });
                self.shared.max_active.send_modify(|m| *m = (*m).max(now));
                let mut gate = self.shared.gate_async.subscribe();
                tokio::select! {
                    _ = gate.wait_for(|open| *open) => {}
                    () = ctx.cancellation().cancelled() => {}
                }
                self.shared.active.send_modify(|n| *n -= 1);
                ctx.check_cancelled()?;
                Ok(plain(json!("held")))
            }
            Op::Blobs => {
                let lens: Vec<usize> = blobs.iter().map(Bytes::len).collect();
                let mut out: Vec<Bytes> = blobs.into_iter().rev().collect();
                out.push(Bytes::from_static(b"tail"));
                Ok(WithBlobs {
                    value: json!({"lens": lens, "first": cjm_worker_sdk::core::wire::blob_ref(0)}),
                    blobs: out,
                })
            }
            _ => Err(PluginError::user_input(
                "stream operations need /execute_stream",
            )),
        }
    }

    async fn execute_stream(
        &self,
        input: WithBlobs<Command<Op>>,
        ctx: CallContext,
    ) -> Result<ChunkStream, PluginError> {
        let Command(op) = input.value;
        let shared = Arc::clone(&self.shared);
        Ok(match op {
            Op::Stream { n } => chunks(futures::stream::iter(
                (0..n).map(|i| Ok::<_, PluginError>(json!({"i": i}))),
            )),
            Op::StreamFail => chunks(futures::stream::iter(vec![
                Ok(json!(1)),
                Err(PluginError::resource("out of VRAM", vec![])),
                Ok(json!(3)),
            ])),
            Op::StreamReserved => chunks(futures::stream::iter(vec![Ok::<_, PluginError>(
                json!({"$cjm": {"end": {"chunks": 99}}}),
            )])),
            Op::StreamPanic => chunks(futures::stream::iter(0..3).map(|i| {
                if i == 1 {
                    panic!("stream went wrong");
                }
                Ok::<_, PluginError>(i)
            })),
            Op::StreamForever => {
                // The SDK drops the stream when the client goes away; the token tells the
                // plugin's other work (here: a watcher task).
                let token = ctx.cancellation().clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    Shared::bump(&shared.cancelled);
                });
                let first = futures::stream::iter(vec![Ok::<_, PluginError>(json!("first"))]);
                let rest = futures::stream::once(async move {
                    ctx.cancellation().cancelled().await;
                    Err::<Value, _>(PluginError::cancelled("stream cancelled"))
                });
                chunks(first.chain(rest))
            }
            Op::StreamStartFail => return Err(PluginError::user_input("cannot stream that")),
            other => {
                let input = WithBlobs {
                    value: Command(other),
                    blobs: vec![],
                };
                let out = self.execute(input, ctx).await?.value;
                chunks(futures::stream::once(
                    async move { Ok::<_, PluginError>(out) },
                ))
            }
        })
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        Shared::bump(&self.shared.cleanups);
        Ok(())
    }

    async fn cancel(&self) -> Result<CancelOutcome, PluginError> {
        Shared::bump(&self.shared.cancel_hooks);
        Ok(CancelOutcome::NotSupported)
    }
}

use futures::StreamExt;

/// A running test server.
pub(crate) struct TestServer {
    pub shared: Arc<Shared>,
    pub client: Client,
    pub handle: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub(crate) fn start() -> Self {
        Self::start_with(|o| o)
    }

    pub(crate) fn start_with(f: impl FnOnce(Options) -> Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = Listener::bind(&ListenAddr::Unix(path.clone())).unwrap();
        let shared = Arc::new(Shared::default());
        let worker = TestWorker {
            shared: Arc::clone(&shared),
            config: Mutex::new(Config::default()),
        };
        let options =
            f(Options::new("sdk-test", "1.2.3").max_concurrency(TestWorker::MAX_CONCURRENCY));
        let plugin = Typed::new(worker, "sdk-test", "1.2.3");
        let handle = Server::new(Arc::new(plugin), options)
            .spawn(listener)
            .unwrap();
        Self {
            shared,
            client: Client { path, token: None },
            handle: Some(handle),
            _dir: dir,
        }
    }

    pub(crate) fn shutdown(&mut self) -> ShutdownReason {
        self.handle.take().unwrap().shutdown().unwrap()
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The typed error's category.
    pub(crate) fn category(&self) -> String {
        self.json()["cjm_error"]["category"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[derive(Clone)]
pub(crate) struct Client {
    pub path: PathBuf,
    pub token: Option<String>,
}

/// An open connection with a request in flight, for disconnect tests.
pub(crate) struct InFlight {
    pub response: tokio::task::JoinHandle<Result<hyper::Response<Incoming>, hyper::Error>>,
    pub conn: tokio::task::JoinHandle<()>,
}

impl Client {
    pub(crate) fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://worker{path}"))
            .header("host", "worker");
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b
    }

    pub(crate) async fn open(&self, req: Request<Full<Bytes>>) -> InFlight {
        let stream = UnixStream::connect(&self.path).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let response = tokio::spawn(async move { sender.send_request(req).await });
        InFlight { response, conn }
    }

    pub(crate) async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let inflight = self.open(req).await;
        let resp = inflight.response.await.unwrap().unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        inflight.conn.abort();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.send(
            self.request("GET", path)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Answer {
        let req = self
            .request("POST", path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap();
        self.send(req).await
    }

    /// `POST /execute` (or `/execute_stream`) of operation `op` with `kwargs`.
    pub(crate) async fn call(&self, path: &str, op: &str, kwargs: Value) -> Answer {
        self.post(path, &json!({"args": [op], "kwargs": kwargs}))
            .await
    }
}

/// A server with a calls socket beside its main socket, and a client of each.
pub(crate) fn with_calls_socket(
    f: impl FnOnce(cjm_worker_sdk::Options) -> cjm_worker_sdk::Options,
) -> (TestServer, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let s = TestServer::start_with(|o| f(o.calls_listener(listener)));
    let calls = Client { path, token: None };
    (s, calls, dir)
}

/// Waits until the watched value satisfies `pred` (a readiness signal, not a sleep).
pub(crate) async fn until(w: &watch::Sender<u32>, pred: impl Fn(u32) -> bool) {
    let mut rx = w.subscribe();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| pred(*v)))
        .await
        .expect("timed out waiting for the plugin")
        .unwrap();
}

/// NDJSON lines of a body.
pub(crate) fn lines(body: &Bytes) -> Vec<Value> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
