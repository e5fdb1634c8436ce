//! The multiplexed calls wire (PROTOCOL.md, "The multiplexed calls wire") on a worker's calls
//! socket, spoken byte by byte by a raw client: calls in flight together, cancel frames, limits,
//! the token in the preface, broken frames and shutdown.

mod common;

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use cjm_core::wire::{features, mux, HealthResponse, StatsResponse};
use cjm_worker_sdk::runtime::ShutdownReason;
use common::{until, with_calls_socket, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A raw multiplexed connection.
struct Raw {
    s: UnixStream,
    buf: BytesMut,
    decoder: mux::Decoder,
}

impl Raw {
    /// Connects and writes the preface (with `token`) and `first` in one write.
    async fn open(path: &Path, token: Option<&str>, first: &[u8]) -> Self {
        let mut s = UnixStream::connect(path).await.unwrap();
        let mut opening = mux::preface(token).to_vec();
        opening.extend_from_slice(first);
        s.write_all(&opening).await.unwrap();
        Self {
            s,
            buf: BytesMut::new(),
            decoder: mux::Decoder::new(u64::from(u32::MAX)),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next answer as (id, status, JSON body); `None` once the worker closed. A test that
    /// waits for an answer that never comes fails instead of hanging.
    async fn next(&mut self) -> Option<(u64, u16, Value)> {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.next_now())
            .await
            .expect("no answer and no end of the connection within 20 s")
    }

    async fn next_now(&mut self) -> Option<(u64, u16, Value)> {
        loop {
            match self.decoder.next(&mut self.buf).unwrap() {
                Some(mux::Frame::Answer {
                    id,
                    status,
                    frame,
                    body,
                }) => {
                    assert!(!frame);
                    return Some((id, status, serde_json::from_slice(&body).unwrap()));
                }
                Some(other) => panic!("the worker sent {other:?}"),
                None => {}
            }
            if self.s.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }
}

/// A call frame of operation `op` with `kwargs`.
fn call(id: u64, op: &str, kwargs: Value) -> Vec<u8> {
    call_with(id, &mux::CallHead::default(), op, kwargs)
}

fn call_with(id: u64, head: &mux::CallHead, op: &str, kwargs: Value) -> Vec<u8> {
    let body = json!({"args": [op], "kwargs": kwargs}).to_string();
    let mut f = mux::call_head(id, head, body.len()).to_vec();
    f.extend_from_slice(body.as_bytes());
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_sent_with_the_preface_are_answered_each_under_its_id() {
    let (s, calls, _dir) = with_calls_socket(|o| o);
    let h: HealthResponse = serde_json::from_slice(&s.client.get("/health").await.body).unwrap();
    assert!(h.features.iter().any(|f| f == features::CALLS_MUX));

    // Three calls in the preface's own write, a typed error among them.
    let mut first = call(7, "echo", json!({"v": 1}));
    first.extend(call(
        8,
        "fail",
        json!({"category": "resource", "message": "no"}),
    ));
    first.extend(call(9, "echo", json!({"v": 3})));
    let mut c = Raw::open(&calls.path, None, &first).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.next().await.unwrap());
    }
    got.sort_by_key(|a| a.0);
    assert_eq!((got[0].0, got[0].1, &got[0].2), (7, 200, &json!({"v": 1})));
    assert_eq!((got[1].0, got[1].1), (8, 507));
    assert_eq!(got[1].2["cjm_error"]["category"], "resource");
    assert_eq!((got[2].0, got[2].1, &got[2].2), (9, 200, &json!({"v": 3})));

    // A deadline and a tag in the head, as `x-cjm-timeout-ms` and `x-cjm-call-tag`: a call
    // that waits past its deadline is answered `timeout`.
    let head = mux::CallHead {
        frame: false,
        timeout_ms: Some(50),
        tag: Some("job-1".into()),
    };
    c.send(&call_with(10, &head, "wait_cancel", json!({})))
        .await;
    let (id, status, body) = c.next().await.unwrap();
    assert_eq!((id, status), (10, 504), "{body}");
    assert_eq!(body["cjm_error"]["category"], "timeout");
    // A tag the HTTP header could not carry is refused the same way.
    let bad = mux::CallHead {
        tag: Some("two words".into()),
        ..Default::default()
    };
    c.send(&call_with(11, &bad, "echo", json!({}))).await;
    let (id, status, body) = c.next().await.unwrap();
    assert_eq!((id, status), (11, 400), "{body}");
    let stats: StatsResponse = serde_json::from_slice(&s.client.get("/stats").await.body).unwrap();
    assert_eq!((stats.calls, stats.errors), (Some(5), Some(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_frame_cancels_its_call_and_the_connection_goes_on() {
    let (s, calls, _dir) = with_calls_socket(|o| o);
    let mut c = Raw::open(&calls.path, None, &call(1, "wait_cancel", json!({}))).await;
    until(&s.shared.started, |n| n == 1).await;
    c.send(&mux::cancel(1)).await;
    until(&s.shared.cancelled, |n| n == 1).await;
    // No answer for the cancelled call: the next one is the echo's.
    c.send(&call(2, "echo", json!({"v": 2}))).await;
    assert_eq!(c.next().await.unwrap(), (2, 200, json!({"v": 2})));
    // A cancel for a call that is not running is ignored.
    c.send(&mux::cancel(99)).await;
    c.send(&call(3, "echo", json!({"v": 3}))).await;
    assert_eq!(c.next().await.unwrap(), (3, 200, json!({"v": 3})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_body_limit_is_refused_and_its_bytes_skipped() {
    let (_s, calls, _dir) = with_calls_socket(|o| o.max_json_body(200).max_frame_body(200));
    let mut c = Raw::open(&calls.path, None, &[]).await;
    // Over the limit, but not over the frame limit (the limit and a head's room): refused
    // after it is read.
    c.send(&call(1, "echo", json!({"v": "x".repeat(300)})))
        .await;
    let (id, status, body) = c.next().await.unwrap();
    assert_eq!((id, status), (1, 413), "{body}");
    // Far over: refused as it comes, and its bytes are skipped.
    c.send(&call(2, "echo", json!({"v": "x".repeat(100_000)})))
        .await;
    let (id, status, body) = c.next().await.unwrap();
    assert_eq!((id, status), (2, 413), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("limit"), "{body}");
    c.send(&call(3, "echo", json!({"v": 3}))).await;
    assert_eq!(c.next().await.unwrap(), (3, 200, json!({"v": 3})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preface_must_carry_the_token_and_a_broken_frame_ends_the_connection() {
    let (_s, calls, _dir) = with_calls_socket(|o| o.auth_token("s3cret"));
    let mut c = Raw::open(&calls.path, Some("wrong"), &call(1, "echo", json!({}))).await;
    assert_eq!(c.next().await, None, "closed without an answer");
    let mut c = Raw::open(&calls.path, None, &call(1, "echo", json!({}))).await;
    assert_eq!(c.next().await, None);

    let mut c = Raw::open(
        &calls.path,
        Some("s3cret"),
        &call(1, "echo", json!({"v": 1})),
    )
    .await;
    assert_eq!(c.next().await.unwrap(), (1, 200, json!({"v": 1})));
    // An answer frame, which only a worker sends.
    let mut answer = BytesMut::new();
    mux::put_answer_head(&mut answer, 2, 200, false, 0).unwrap();
    c.send(&answer).await;
    assert_eq!(c.next().await, None);
    // An unknown kind.
    let mut c = Raw::open(
        &calls.path,
        Some("s3cret"),
        &[9, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .await;
    assert_eq!(c.next().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_calls_a_connection_holds_then_closes_it() {
    let (mut s, path, _dir, mut c) = held_call_1("hold").await;
    stop_while_call_1_is_held(&mut s, &path, &mut c).await;
}

/// A server with a minute's grace to stop, and a multiplexed connection whose call 1 (`op`,
/// which waits for the gate) has started.
async fn held_call_1(op: &str) -> (TestServer, PathBuf, tempfile::TempDir, Raw) {
    let (s, calls, dir) =
        with_calls_socket(|o| o.shutdown_grace(std::time::Duration::from_secs(60)));
    let c = Raw::open(&calls.path, None, &call(1, op, json!({}))).await;
    until(&s.shared.started, |n| n == 1).await;
    (s, calls.path, dir, c)
}

/// Stops the server while call 1 of `c` is held at the gate: the calls socket stops accepting,
/// the stop waits for the call, which is answered once the gate opens, and then the connection
/// closes and the stop ends.
async fn stop_while_call_1_is_held(s: &mut TestServer, path: &Path, c: &mut Raw) {
    let handle = s.handle.take().unwrap();
    let stopping = tokio::task::spawn_blocking(move || handle.shutdown().unwrap());
    loop {
        match UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => tokio::task::yield_now().await,
        }
    }
    assert!(
        !stopping.is_finished(),
        "the held call keeps the stop waiting"
    );
    s.shared.open_gate();
    let (id, status, _) = c.next().await.unwrap();
    assert_eq!((id, status), (1, 200));
    assert_eq!(c.next().await, None, "closed once its calls were answered");
    assert_eq!(stopping.await.unwrap(), ShutdownReason::Requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_still_works_on_the_calls_socket_beside_multiplexed_connections() {
    let (_s, calls, _dir) = with_calls_socket(|o| o);
    let mut c = Raw::open(&calls.path, None, &call(1, "echo", json!({"v": 1}))).await;
    assert_eq!(c.next().await.unwrap(), (1, 200, json!({"v": 1})));
    let a = calls.call("/execute", "echo", json!({"v": 2})).await;
    assert_eq!((a.status.as_u16(), a.json()), (200, json!({"v": 2})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_holds_its_thread_holds_up_no_other_call_of_the_connection() {
    let (s, calls, _dir) = with_calls_socket(|o| o);
    let mut c = Raw::open(&calls.path, None, &call(1, "block", json!({}))).await;
    until(&s.shared.started, |n| n == 1).await;
    // The blocked call holds a plugin thread; the connection goes on on the other.
    c.send(&call(2, "echo", json!({"v": 2}))).await;
    assert_eq!(c.next().await.unwrap(), (2, 200, json!({"v": 2})));
    s.shared.open_gate();
    let (id, status, _) = c.next().await.unwrap();
    assert_eq!((id, status), (1, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_taken_over_from_a_held_task_still_ends_with_a_graceful_stop() {
    let (mut s, path, _dir, mut c) = held_call_1("block").await;
    // Answered only once another task has taken the connection over.
    c.send(&call(2, "echo", json!({"v": 2}))).await;
    assert_eq!(c.next().await.unwrap(), (2, 200, json!({"v": 2})));
    // The held task hands its answer to the task that took over, which writes it and closes.
    stop_while_call_1_is_held(&mut s, &path, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_hold_their_threads_still_run_side_by_side() {
    // Two calls in one write, each holding a plugin thread until the gate opens: the second
    // starts while the first holds the connection's task, on the other plugin thread.
    let (s, calls, _dir) = with_calls_socket(|o| o);
    let mut both = call(1, "block", json!({}));
    both.extend(call(2, "block", json!({})));
    let mut c = Raw::open(&calls.path, None, &both).await;
    until(&s.shared.started, |n| n == 2).await;
    s.shared.open_gate();
    let mut ids = [c.next().await.unwrap().0, c.next().await.unwrap().0];
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
}
