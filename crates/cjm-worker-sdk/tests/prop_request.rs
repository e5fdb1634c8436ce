//! Property test of the worker's request decoding, end to end: arbitrary requests (paths,
//! content types, deadline headers, bodies of any bytes, wrong JSON, good, cut and lying
//! frames) sent over one keep-alive connection to a real in-process worker on a Unix socket.
//! Every answer is a success or a typed error (`cjm_error`) with a 4xx status (504 only for a
//! deadline); a well-formed call is echoed exactly (JSON and frames alike); streams end with
//! their end line; and the worker still answers `/health` at the end.
//!
//! Cases: proptest's default (256) under `cargo test`; `PROPTEST_CASES` under
//! `cargo xtask fuzz`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cjm_core::wire::{self, ErrorBody, ExecuteRequest, StreamDecoder, WorkerFlavor};
use cjm_worker_sdk::runtime::{ListenAddr, Listener, Server};
use cjm_worker_sdk::{
    async_trait, CallContext, ErrorCategory, Options, PluginError, Typed, WithBlobs, Worker,
};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A small configuration, so that `/initialize` validates something.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct EchoConfig {
    #[schemars(range(min = 1, max = 10))]
    level: u32,
    label: Option<String>,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            level: 1,
            label: None,
        }
    }
}

/// Echoes the call it was given: `{"call": {"args", "kwargs"}, "blobs": [lengths]}`.
struct Echo;

#[async_trait]
impl Worker for Echo {
    type Config = EchoConfig;
    type Input = WithBlobs<Value>;
    type Output = Value;
    const MAX_CONCURRENCY: u32 = 4;

    async fn execute(&self, input: WithBlobs<Value>, _: CallContext) -> Result<Value, PluginError> {
        let lens: Vec<usize> = input.blobs.iter().map(Bytes::len).collect();
        Ok(json!({"call": input.value, "blobs": lens}))
    }
}

const MAX_JSON: u64 = 4096;
const MAX_FRAME: u64 = 8192;

/// One generated request.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: &'static str,
    content_type: Option<String>,
    timeout: Option<String>,
    body: Vec<u8>,
    /// The call this body encodes, when it is a well-formed one (JSON or frame).
    call: Option<GoodCall>,
}

fn frame(json: &Value, blobs: &[Bytes]) -> Vec<u8> {
    wire::encode_frame(json, blobs)
        .iter()
        .flat_map(|p| p.iter().copied())
        .collect()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|x| Value::from(if x.is_finite() { x } else { 0.5 })),
        ".{0,8}".prop_map(Value::String),
        Just(json!({"$cjm_blob": 0})),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("[a-z$_]{0,6}", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn execute_request() -> impl Strategy<Value = ExecuteRequest> {
    (
        prop::collection::vec(json_value(), 0..4),
        prop::collection::vec(("[a-z_]{1,6}", json_value()), 0..4),
    )
        .prop_map(|(args, kwargs)| ExecuteRequest {
            args,
            kwargs: kwargs.into_iter().collect(),
        })
}

fn blobs() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(
        prop::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from),
        0..4,
    )
}

/// A well-formed call: the request and its blobs' lengths.
type GoodCall = (ExecuteRequest, Vec<usize>);

/// A body, the call it encodes when it is a well-formed one, and whether it is a frame.
type Body = (Vec<u8>, Option<GoodCall>, bool);

/// A body and, when it is a well-formed call, that call.
fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        // Any bytes.
        2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| (b, None, false)),
        // Any JSON, often object-shaped with wrong fields.
        2 => json_value().prop_map(|v| (v.to_string().into_bytes(), None, false)),
        2 => (json_value(), json_value()).prop_map(|(a, k)| {
            (json!({"args": a, "kwargs": k}).to_string().into_bytes(), None, false)
        }),
        // A well-formed JSON call.
        3 => execute_request().prop_map(|r| {
            let body = serde_json::to_vec(&r).unwrap();
            (body, Some((r, Vec::new())), false)
        }),
        // A well-formed frame call.
        3 => (execute_request(), blobs()).prop_map(|(r, b)| {
            let body = frame(&serde_json::to_value(&r).unwrap(), &b);
            let lens = b.iter().map(Bytes::len).collect();
            (body, Some((r, lens)), true)
        }),
        // A frame cut short, with a byte changed, or with lying lengths.
        2 => (execute_request(), blobs(), any::<prop::sample::Index>(), any::<u8>(), 0u8..3).prop_map(
            |(r, b, at, byte, how)| {
                let mut body = frame(&serde_json::to_value(&r).unwrap(), &b);
                let i = at.index(body.len());
                match how {
                    0 => body.truncate(i),
                    1 => body[i] ^= byte | 1,
                    _ => {
                        let header = json!({"json": r, "blobs": [u64::MAX, 1u64 << 40]}).to_string();
                        body = b"CJMF".to_vec();
                        body.extend_from_slice(&(header.len() as u32).to_le_bytes());
                        body.extend_from_slice(header.as_bytes());
                    }
                }
                (body, None, true)
            }
        ),
        // Over the body limits.
        1 => Just((vec![b' '; MAX_FRAME as usize + 1], None, false)),
        // Blank: the empty call.
        1 => prop_oneof![Just(Vec::new()), Just(b" \n\t".to_vec())]
            .prop_map(|b| (b, Some((ExecuteRequest::default(), Vec::new())), false)),
    ]
}

/// The JSON content types the worker accepts, among those generated.
const JSON_TYPES: [&str; 5] = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/problem+json",
    "Application/Vnd.Example+JSON ; charset=utf-8",
];

fn request() -> impl Strategy<Value = Req> {
    let path = prop::sample::select(vec![
        "/execute",
        "/execute",
        "/execute",
        "/execute_stream",
        "/execute_stream",
        "/initialize",
        "/initialize",
        "/cancel",
        "/cleanup",
        "/health",
        "/config",
        "/progress",
        "/stats",
        "/config_schema",
        "/nope",
    ]);
    let content_type = prop::option::of(prop_oneof![
        prop::sample::select(JSON_TYPES.to_vec()).prop_map(str::to_owned),
        Just("application/vnd.cjm.frame".to_owned()),
        Just("text/plain".to_owned()),
        "[ -~]{0,24}",
    ]);
    let timeout = prop::option::of(prop_oneof![
        (10_000u64..1_000_000).prop_map(|n| n.to_string()),
        "[ -~]{0,10}",
        Just("18446744073709551615".to_owned()),
    ]);
    (
        prop::sample::select(vec!["POST", "POST", "POST", "GET"]),
        path,
        content_type,
        timeout,
        body(),
    )
        .prop_map(|(method, path, ct, timeout, (body, call, is_frame))| {
            // A well-formed call needs the matching content type to be one.
            let content_type = match (&call, is_frame) {
                (Some(_), true) => Some(wire::content_types::FRAME.to_owned()),
                (Some(_), false) => ct.filter(|c| JSON_TYPES.contains(&c.as_str())),
                _ => ct,
            };
            Req {
                method,
                path,
                content_type,
                timeout,
                body,
                call,
            }
        })
}

/// A client on one keep-alive connection, reconnecting if the worker closes it.
struct Client {
    path: PathBuf,
    sender: Option<SendRequest<Full<Bytes>>>,
    reconnects: u64,
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Client {
    async fn connect(path: &Path) -> SendRequest<Full<Bytes>> {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    async fn send(&mut self, r: &Req) -> Answer {
        for attempt in 0..2 {
            let sender = match &mut self.sender {
                Some(s) if s.is_ready() => s,
                _ => {
                    if attempt > 0 || self.sender.is_some() {
                        self.reconnects += 1;
                    }
                    self.sender.insert(Self::connect(&self.path).await)
                }
            };
            let mut b = Request::builder()
                .method(r.method)
                .uri(format!("http://worker{}", r.path))
                .header("host", "worker");
            if let Some(ct) = &r.content_type {
                b = b.header("content-type", ct);
            }
            if let Some(t) = &r.timeout {
                b = b.header(wire::headers::TIMEOUT_MS, t);
            }
            let req = b.body(Full::new(Bytes::from(r.body.clone()))).unwrap();
            match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let content_type = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    match resp.into_body().collect().await {
                        Ok(body) => {
                            return Answer {
                                status,
                                content_type,
                                body: body.to_bytes(),
                            }
                        }
                        Err(_) => self.sender = None,
                    }
                }
                Err(_) => self.sender = None,
            }
        }
        panic!("no answer to {r:?}, twice");
    }
}

/// What every answer must be.
fn check(r: &Req, a: &Answer) -> Result<(), TestCaseError> {
    if !a.status.is_success() {
        let e: ErrorBody = serde_json::from_slice(&a.body).map_err(|e| {
            TestCaseError::fail(format!("{} answered a non-JSON error: {e}", a.status))
        })?;
        let typed = e
            .cjm_error
            .ok_or_else(|| TestCaseError::fail("no cjm_error"))?;
        let s = a.status.as_u16();
        prop_assert!(
            matches!(s, 400 | 404 | 405 | 413 | 415 | 422) || s == 504 && r.timeout.is_some(),
            "status {} for {:?}: {:?}",
            s,
            r,
            typed
        );
        prop_assert!(
            matches!(
                typed.category,
                ErrorCategory::UserInput | ErrorCategory::Config | ErrorCategory::Timeout
            ),
            "{:?}",
            typed
        );
        let good_deadline = r
            .timeout
            .as_ref()
            .is_none_or(|t| t.trim().parse::<u64>().is_ok());
        let a_call = r.method == "POST" && r.path.starts_with("/execute");
        prop_assert!(
            !(a_call && r.call.is_some() && good_deadline),
            "a well-formed call was refused: {} {:?}",
            s,
            typed
        );
        return Ok(());
    }
    match (r.method, r.path) {
        ("POST", "/execute_stream") => {
            prop_assert!(a.content_type.starts_with(wire::content_types::NDJSON));
            let mut d = StreamDecoder::new(WorkerFlavor::Cjm);
            d.push(&a.body);
            d.close();
            let mut chunks = Vec::new();
            while let Some(item) = d.next_item() {
                chunks.push(item.map_err(|e| TestCaseError::fail(format!("stream error: {e}")))?);
            }
            prop_assert!(d.ended_cleanly());
            prop_assert_eq!(chunks.len(), 1);
            if let Some((call, lens)) = &r.call {
                prop_assert_eq!(&chunks[0], &json!({"call": call, "blobs": lens}));
            }
        }
        _ => {
            prop_assert!(
                a.content_type.starts_with(wire::content_types::JSON),
                "{}",
                a.content_type
            );
            let v: Value = serde_json::from_slice(&a.body)
                .map_err(|e| TestCaseError::fail(format!("200 with a non-JSON body: {e}")))?;
            if let ("POST", "/execute", Some((call, lens))) = (r.method, r.path, &r.call) {
                // Round trip: the call the worker decoded is the one we encoded.
                prop_assert_eq!(v, json!({"call": call, "blobs": lens}));
            }
        }
    }
    Ok(())
}

#[test]
fn arbitrary_requests_get_typed_answers_and_the_worker_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = Listener::bind(&ListenAddr::Unix(path.clone())).unwrap();
    let options = Options::new("fuzz", "0.1.0")
        .max_concurrency(Echo::MAX_CONCURRENCY)
        .max_json_body(MAX_JSON)
        .max_frame_body(MAX_FRAME);
    let plugin = Typed::new(Echo, "fuzz".to_owned(), "0.1.0".to_owned());
    let server = Server::new(Arc::new(plugin), options)
        .spawn(listener)
        .unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = RefCell::new(Client {
        path: path.clone(),
        sender: None,
        reconnects: 0,
    });
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let cases = runner.config().cases;
    let result = runner.run(&request(), |r| {
        let answer = rt.block_on(client.borrow_mut().send(&r));
        check(&r, &answer)
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // Still up, and still the same process serving.
    let health = Req {
        method: "GET",
        path: "/health",
        content_type: None,
        timeout: None,
        body: Vec::new(),
        call: None,
    };
    let a = rt.block_on(client.borrow_mut().send(&health));
    assert_eq!(a.status, StatusCode::OK);
    let h: wire::HealthResponse = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(h.pid, std::process::id());
    eprintln!(
        "{cases} requests, {} reconnects",
        client.borrow().reconnects
    );
    drop(client);
    drop(rt);
    server.shutdown().unwrap();
}
