//! The calls socket between the host and a native worker (PROTOCOL.md, "The calls socket"):
//! calls and streams travel on it, control requests on the main socket, and a host that turns
//! it off makes no such socket.
//!
//! Which socket carried what is read from `/proc/net/unix`: a listening socket and every
//! connection it accepted are listed under its path, the connecting ends under none.

mod common;

use std::path::{Path, PathBuf};

use cjm_host::{Call, PluginManager};
use common::Scratch;
use futures::StreamExt;
use serde_json::json;

/// Sockets listed under `path`: its listener, plus one per connection it accepted.
fn listed_at(path: &Path) -> usize {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = path.to_string_lossy();
    table
        .lines()
        .filter(|l| l.split_whitespace().nth(7) == Some(&*path))
        .count()
}

/// The worker's main socket and calls socket, by name in the runtime directory.
fn sockets(m: &PluginManager) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut main = Vec::new();
    let mut calls = Vec::new();
    for e in std::fs::read_dir(m.runtime_dir()).unwrap().flatten() {
        let p = e.path();
        if p.to_string_lossy().ends_with(".calls.sock") {
            calls.push(p);
        } else {
            main.push(p);
        }
    }
    (main, calls)
}

#[tokio::test]
async fn calls_and_streams_go_to_the_calls_socket_and_control_to_the_main_one() {
    calls_and_streams_go_to_the_calls_socket(true).await;
}

#[tokio::test]
async fn without_multiplexing_calls_go_to_the_calls_socket_one_per_connection() {
    calls_and_streams_go_to_the_calls_socket(false).await;
}

/// Where calls, streams and control requests go; `mux`: whether the host multiplexes calls
/// (then every `/execute` shares one connection, and a stream takes one of its own).
async fn calls_and_streams_go_to_the_calls_socket(mux: bool) {
    let s = Scratch::new();
    s.worker_manifest("w", json!({"max_concurrency": 4}));
    let m = s.builder().calls_mux(mux).build().unwrap();
    m.load("w", None).await.unwrap();
    let (main, calls) = sockets(&m);
    let (main, calls) = (&main[0], &calls[0]);
    // The handshake's connection, on the main socket; nothing accepted on the calls socket.
    assert_eq!(listed_at(main), 2);
    assert_eq!(listed_at(calls), 1);

    let out = m
        .execute("w", Call::new(vec![json!("echo")]).kwarg("v", json!(1)))
        .await
        .unwrap();
    assert_eq!(out.value["kwargs"]["v"], json!(1), "{}", out.value);
    assert_eq!(listed_at(calls), 2, "the call came on the calls socket");
    assert_eq!(listed_at(main), 2, "and not on the main socket");

    let chunks: Vec<_> = m
        .execute_stream("w", Call::new(vec![]).kwarg("n", json!(3)))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(chunks.len(), 3);
    for (i, c) in chunks.into_iter().enumerate() {
        assert_eq!(c.unwrap(), json!({"i": i}));
    }
    // Without multiplexing, the pooled connection carried the stream too; with it, the
    // stream went as an HTTP request on a connection of its own.
    let after_stream = if mux { 3 } else { 2 };
    assert_eq!(listed_at(calls), after_stream);

    // Two calls at once: a second connection on the calls socket, or both on the multiplexed
    // one. While they sleep, control requests answer on the main socket, and `/cancel` ends
    // them.
    let sleep = || Call::new(vec![json!("sleep")]).kwarg("ms", json!(60_000));
    let (a, b) = (m.clone(), m.clone());
    let first = tokio::spawn(async move { a.execute("w", sleep()).await });
    let second = tokio::spawn(async move { b.execute("w", sleep()).await });
    // Until both run in the worker (its `/stats`, asked on the main socket).
    let mut tries = 0;
    while m.stats("w").await.unwrap().worker.and_then(|w| w.in_flight) != Some(2) {
        tries += 1;
        assert!(tries < 10_000, "the calls never started");
        tokio::task::yield_now().await;
    }
    assert_eq!(m.progress("w").await.unwrap().message, "sleeping");
    assert_eq!(listed_at(calls), 3);
    // The multiplexed connection carries the next call too.
    if mux {
        let out = m
            .execute("w", Call::new(vec![json!("echo")]).kwarg("v", json!(3)))
            .await
            .unwrap();
        assert_eq!(out.value["kwargs"]["v"], json!(3), "{}", out.value);
        assert_eq!(listed_at(calls), 3);
        // So do calls with blobs, as frames, while they are small: two at once, where HTTP
        // would take the stream's idle connection and open another.
        let blob = || Call::new(vec![json!("blob")]).with_blob(b"abc".to_vec());
        let (x, y) = futures::join!(m.execute("w", blob()), m.execute("w", blob()));
        for out in [x.unwrap(), y.unwrap()] {
            assert_eq!(out.value, json!({"total": 3, "blobs": 1}));
            assert_eq!(out.blobs.len(), 1);
        }
        assert_eq!(listed_at(calls), 3);
    }
    m.cancel("w").await.unwrap();
    for call in [first, second] {
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(e.category, cjm_host::ErrorCategory::Cancelled, "{e}");
    }
    assert_eq!(
        listed_at(main),
        2,
        "control requests reused the main connection"
    );

    // Unloading removes both socket files.
    m.unload("w").await.unwrap();
    assert!(!main.exists() && !calls.exists());
}

#[tokio::test]
async fn a_host_can_turn_the_calls_socket_off() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.builder().calls_socket(false).build().unwrap();
    m.load("w", None).await.unwrap();
    let (main, calls) = sockets(&m);
    assert_eq!((main.len(), calls.len()), (1, 0));
    let out = m
        .execute("w", Call::new(vec![json!("echo")]).kwarg("v", json!(2)))
        .await
        .unwrap();
    assert_eq!(out.value["kwargs"]["v"], json!(2), "{}", out.value);
    // The call took the main socket, on the connection of the handshake.
    assert_eq!(listed_at(&main[0]), 2);
    m.unload_all().await;
}
