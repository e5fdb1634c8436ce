//! The host against real worker processes: load, calls, streams, config, supervision, teardown.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cjm_host::{
    Call, CallContext, CancellationToken, ErrorCategory, PluginState, SupervisorOptions,
};
use common::{alive, wait_gone, Scratch};
use futures::StreamExt;
use serde_json::json;

fn op(name: &str) -> Call {
    Call::new(vec![json!(name)])
}

#[tokio::test]
async fn load_execute_stream_stats_unload() {
    let s = Scratch::new();
    s.worker_manifest("echo", json!({}));
    let m = s.manager();
    assert_eq!(m.discovered().len(), 1);
    m.load("echo", None).await.unwrap();
    assert_eq!(m.loaded(), ["echo"]);
    assert_eq!(m.state("echo"), Some(PluginState::Ready));

    let out = m
        .execute("echo", op("echo").kwarg("text", json!("hi")))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"args": [], "kwargs": {"text": "hi"}}));

    let chunks: Vec<_> = m
        .execute_stream("echo", Call::new(vec![]).kwarg("n", json!(5)))
        .await
        .unwrap()
        .collect()
        .await;
    let values: Vec<_> = chunks.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (0..5).map(|i| json!({"i": i})).collect::<Vec<_>>());

    let stats = m.stats("echo").await.unwrap();
    assert_eq!(stats.calls, 2);
    assert_eq!(stats.errors, 0);
    assert!(stats.latency_p50_us.is_some());
    let w = stats.worker.expect("worker stats");
    assert!(w.memory_rss_mb > 0.0);
    let pid = stats.pid.unwrap();
    assert_eq!(w.pid, pid);
    assert!(alive(pid));

    m.unload("echo").await.unwrap();
    assert!(m.loaded().is_empty());
    assert!(!alive(pid), "the worker is gone after unload");
    let err = m.execute("echo", op("echo")).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NotLoaded);
    // Logs outlive the worker.
    let logs = m.logs("echo", 50).unwrap();
    assert!(
        logs.iter().any(|l| l.starts_with("--- Starting echo")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn stream_failure_is_an_error_not_a_chunk() {
    let s = Scratch::new();
    s.worker_manifest("echo", json!({}));
    let m = s.manager();
    m.load("echo", None).await.unwrap();
    let items: Vec<_> = m
        .execute_stream(
            "echo",
            Call::new(vec![])
                .kwarg("n", json!(5))
                .kwarg("fail_at", json!(2)),
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_ref().unwrap(), &json!({"i": 0}));
    assert_eq!(items[1].as_ref().unwrap(), &json!({"i": 1}));
    let err = items[2].as_ref().unwrap_err();
    assert_eq!(err.category, ErrorCategory::Resource);
    assert!(err.message.contains("out of memory"));
    let stats = m.stats("echo").await.unwrap();
    assert_eq!(stats.errors, 1);
    m.unload_all().await;
}

#[tokio::test]
async fn bad_manifests_beside_good_ones_and_errors_of_load() {
    let s = Scratch::new();
    s.worker_manifest("good", json!({}));
    s.write("bad.json", r#"{"name": "bad", "command": 5}"#);
    s.write(
        "dies.json",
        r#"{"name": "dies", "command": "/bin/sh", "args": ["-c", "echo boom >&2; exit 7"]}"#,
    );
    s.write(
        "missing.json",
        r#"{"name": "missing", "command": "/definitely/not/here"}"#,
    );
    let m = s.manager();
    let invalid = m.invalid_manifests();
    assert_eq!(invalid.len(), 1);
    assert!(invalid[0]
        .to_string()
        .contains("bad.json: command: must be a string"));

    let results = m.load_all(HashMap::new()).await;
    let by_name: HashMap<_, _> = results.into_iter().collect();
    assert!(by_name["good"].is_ok());
    let dies = by_name["dies"].as_ref().unwrap_err();
    assert_eq!(
        dies.details.exit_status.as_deref(),
        Some("exited with status 7")
    );
    assert!(
        dies.details.last_log_lines.iter().any(|l| l == "boom"),
        "{dies:?}"
    );
    let missing = by_name["missing"].as_ref().unwrap_err();
    assert!(
        missing.message.contains("/definitely/not/here"),
        "{missing}"
    );
    assert_eq!(m.loaded(), ["good"], "failed loads leave nothing behind");
    let unknown = m.load("nope", None).await.unwrap_err();
    assert!(unknown.message.contains("no plugin `nope` was discovered"));
    let twice = m.load("good", None).await.unwrap_err();
    assert!(twice.message.contains("already loaded"));
    m.unload_all().await;
}

#[tokio::test]
async fn load_all_is_concurrent_and_workers_are_distinct() {
    let s = Scratch::new();
    for i in 0..4 {
        s.worker_manifest(&format!("w{i}"), json!({}));
    }
    let m = s.manager();
    let results = m.load_all(HashMap::new()).await;
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    let mut pids = Vec::new();
    for i in 0..4 {
        let out = m.execute(&format!("w{i}"), op("pid")).await.unwrap();
        pids.push(out.value.as_u64().unwrap() as u32);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4);
    m.unload_all().await;
    m.unload_all().await; // idempotent
    assert!(wait_gone(&pids, Duration::from_secs(5)).is_empty());
}

#[tokio::test]
async fn configuration_is_validated_hot_updated_and_kept_on_rejection() {
    let s = Scratch::new();
    s.worker_manifest("cfg", json!({}));
    let m = s.manager();
    // The worker's own schema governs (the manifest has none).
    let err = m.load("cfg", Some(json!({"level": 99}))).await;
    // Without a manifest schema the host cannot check before spawning; the worker refuses.
    let err = err.unwrap_err();
    assert_eq!(err.category, ErrorCategory::Config);
    assert!(
        err.details.fields.iter().any(|f| f.field == "level"),
        "{err:?}"
    );
    assert!(m.loaded().is_empty());

    m.load("cfg", Some(json!({"greeting": "hi"})))
        .await
        .unwrap();
    assert_eq!(
        m.config("cfg").unwrap(),
        json!({"greeting": "hi", "level": 1}),
        "with the worker's defaults"
    );
    let greet = |name: &'static str| op("greet").kwarg("name", json!(name));
    assert_eq!(
        m.execute("cfg", greet("Ada")).await.unwrap().value,
        json!("hi Ada")
    );

    m.update_config("cfg", json!({"greeting": "hey"}))
        .await
        .unwrap();
    assert_eq!(
        m.execute("cfg", greet("Bo")).await.unwrap().value,
        json!("hey Bo")
    );

    // Invalid per schema (host-side, the worker's schema was fetched at load).
    let bad = m
        .update_config("cfg", json!({"level": 0, "colour": "red"}))
        .await
        .unwrap_err();
    assert_eq!(bad.category, ErrorCategory::Config);
    let fields: Vec<_> = bad
        .details
        .fields
        .iter()
        .map(|f| f.field.as_str())
        .collect();
    assert!(
        fields.contains(&"level") && fields.contains(&"colour"),
        "{fields:?}"
    );
    // Rejected by the plugin itself.
    let rejected = m
        .update_config("cfg", json!({"greeting": "reject"}))
        .await
        .unwrap_err();
    assert_eq!(rejected.category, ErrorCategory::Config);
    assert_eq!(
        m.config("cfg").unwrap(),
        json!({"greeting": "hey", "level": 1})
    );
    assert_eq!(
        m.execute("cfg", greet("Cy")).await.unwrap().value,
        json!("hey Cy")
    );
    m.unload_all().await;
}

#[tokio::test]
async fn manifest_schema_is_checked_before_spawning() {
    let s = Scratch::new();
    s.worker_manifest(
        "typed",
        json!({"config_schema": {"type": "object", "additionalProperties": false,
            "properties": {"greeting": {"type": "string", "default": "yo"}}}}),
    );
    let m = s.manager();
    let err = m
        .load("typed", Some(json!({"greting": "x"})))
        .await
        .unwrap_err();
    assert_eq!(err.details.fields[0].field, "greting");
    assert!(err.details.fields[0].reason.contains("unknown key"));
    m.load("typed", None).await.unwrap();
    assert_eq!(
        m.config("typed").unwrap(),
        json!({"greeting": "yo"}),
        "defaults from the schema"
    );
    m.unload_all().await;
}

#[tokio::test]
async fn reload_respawns_with_the_current_config() {
    let s = Scratch::new();
    s.worker_manifest("r", json!({}));
    let m = s.manager();
    m.load("r", Some(json!({"greeting": "hola"})))
        .await
        .unwrap();
    let pid1 = m.stats("r").await.unwrap().pid.unwrap();
    m.disable("r").unwrap();
    m.reload("r", None).await.unwrap();
    let pid2 = m.stats("r").await.unwrap().pid.unwrap();
    assert_ne!(pid1, pid2);
    assert!(!alive(pid1));
    let err = m.execute("r", op("pid")).await.unwrap_err();
    assert_eq!(
        err.category,
        ErrorCategory::Disabled,
        "disabled survives a reload"
    );
    m.enable("r").unwrap();
    let out = m
        .execute("r", op("greet").kwarg("name", json!("Di")))
        .await
        .unwrap();
    assert_eq!(out.value, json!("hola Di"));
    m.reload("r", Some(json!({"greeting": "ciao"})))
        .await
        .unwrap();
    let out = m
        .execute("r", op("greet").kwarg("name", json!("Ed")))
        .await
        .unwrap();
    assert_eq!(out.value, json!("ciao Ed"));
    m.unload_all().await;
}

#[tokio::test]
async fn a_crash_is_noticed_at_once_and_the_worker_restarts_with_its_config() {
    let s = Scratch::new();
    s.worker_manifest("c", json!({}));
    let m = s.manager_with(SupervisorOptions {
        backoff_base: Duration::from_millis(10),
        ..SupervisorOptions::default()
    });
    m.load("c", Some(json!({"greeting": "again"})))
        .await
        .unwrap();
    let pid1 = m.stats("c").await.unwrap().pid.unwrap();
    let mut states = m.watch_state("c").unwrap();
    states.borrow_and_update();
    let err = m
        .execute("c", op("exit").kwarg("code", json!(9)))
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Transient);
    assert!(err.retriable);
    // The supervisor sees the exit without any further call and restarts the worker.
    states.changed().await.unwrap();
    let st = m
        .wait_for_state("c", Duration::from_secs(10), |s| s == PluginState::Ready)
        .await
        .unwrap();
    assert_eq!(st, PluginState::Ready);
    let stats = m.stats("c").await.unwrap();
    assert_eq!(stats.restarts, 1);
    assert_eq!(stats.last_exit.as_deref(), Some("exited with status 9"));
    assert_ne!(stats.pid.unwrap(), pid1);
    let out = m
        .execute("c", op("greet").kwarg("name", json!("Fi")))
        .await
        .unwrap();
    assert_eq!(
        out.value,
        json!("again Fi"),
        "config re-applied after the restart"
    );
    m.unload_all().await;
}

#[tokio::test]
async fn restart_never_leaves_it_crashed() {
    let s = Scratch::new();
    s.worker_manifest("n", json!({"restart": "never"}));
    let m = s.manager();
    m.load("n", None).await.unwrap();
    let _ = m.execute("n", op("exit")).await;
    let st = m
        .wait_for_state("n", Duration::from_secs(10), |s| s == PluginState::Crashed)
        .await
        .unwrap();
    assert_eq!(st, PluginState::Crashed);
    let err = m.execute("n", op("pid")).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::Transient);
    assert!(err.message.contains("exited with status 3"), "{err}");
    m.unload_all().await;
}

#[tokio::test]
async fn a_crash_loop_ends_in_failed_with_the_last_log_lines() {
    let s = Scratch::new();
    let flag = s.dir.path().join("fail-from-now-on");
    s.worker_manifest(
        "loop",
        json!({"env_vars": {"CJM_TEST_FAIL_FILE": common::path_str(&flag)}}),
    );
    let m = s.manager_with(SupervisorOptions {
        backoff_base: Duration::from_millis(1),
        max_crashes: 3,
        ..SupervisorOptions::default()
    });
    m.load("loop", None).await.unwrap();
    std::fs::write(&flag, "").unwrap();
    let _ = m.execute("loop", op("exit")).await;
    let st = m
        .wait_for_state("loop", Duration::from_secs(20), |s| {
            s == PluginState::Failed
        })
        .await
        .unwrap();
    assert_eq!(st, PluginState::Failed);
    let err = m.execute("loop", op("pid")).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::Fatal);
    assert!(err.message.contains("crashed repeatedly"), "{err}");
    assert!(!err.details.last_log_lines.is_empty(), "{err:?}");
    m.unload_all().await;
}

#[tokio::test]
async fn cancel_and_deadline() {
    let s = Scratch::new();
    s.worker_manifest("slow", json!({}));
    let m = s.manager();
    m.load("slow", None).await.unwrap();

    let token = CancellationToken::new();
    let call = op("sleep").with_ctx(CallContext::new().with_cancel(token.clone()));
    let m2 = m.clone();
    let task = tokio::spawn(async move { m2.execute("slow", call).await });
    // Wait until the call is running on the worker (its progress says so), then cancel.
    loop {
        let p = m.progress("slow").await.unwrap();
        if p.message == "sleeping" {
            break;
        }
        tokio::task::yield_now().await;
    }
    token.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.category, ErrorCategory::Cancelled);

    let started = Instant::now();
    let call = op("sleep").with_ctx(
        CallContext::new().with_deadline(Some(Instant::now() + Duration::from_millis(200))),
    );
    let err = m.execute("slow", call).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::Timeout);
    assert!(started.elapsed() < Duration::from_secs(30));

    // The worker survived both and still serves.
    let out = m
        .execute("slow", op("sleep").kwarg("ms", json!(1)))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"slept_ms": 1}));
    // Dropping a stream midway cancels it; the worker keeps serving.
    let mut stream = m
        .execute_stream(
            "slow",
            Call::new(vec![])
                .kwarg("n", json!(1000))
                .kwarg("delay_ms", json!(5)),
        )
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    assert!(m.execute("slow", op("pid")).await.is_ok());
    m.unload_all().await;
}

/// A blob that says when its memory is let go of.
struct Watched {
    data: Vec<u8>,
    released: Option<tokio::sync::oneshot::Sender<()>>,
}

impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(tx) = self.released.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_running_call_holds_no_copy_of_its_arguments() {
    let s = Scratch::new();
    s.worker_manifest("slow", json!({}));
    let m = s.manager();
    m.load("slow", None).await.unwrap();

    // Small enough to travel in the request's frame, not in a memfd of its own.
    let (tx, released) = tokio::sync::oneshot::channel();
    let blob = bytes::Bytes::from_owner(Watched {
        data: vec![7; 64 << 10],
        released: Some(tx),
    });
    let token = CancellationToken::new();
    let call = op("sleep")
        .kwarg("ms", json!(3_600_000))
        .with_blob(blob)
        .with_ctx(CallContext::new().with_cancel(token.clone()));
    let m2 = m.clone();
    let task = tokio::spawn(async move { m2.execute("slow", call).await });
    // Once the request is written, nothing in the host holds the blob, while the worker
    // sleeps for an hour (the wait is bounded only so that a failure cannot hang the suite).
    tokio::time::timeout(Duration::from_secs(60), released)
        .await
        .expect("the call's blob was still held 60 s into the call")
        .unwrap();
    assert!(!task.is_finished(), "the call is still running");
    token.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.category, ErrorCategory::Cancelled);
    m.unload_all().await;
}

#[tokio::test]
async fn binary_payloads_travel_as_frames() {
    let s = Scratch::new();
    s.worker_manifest("blob", json!({}));
    let m = s.manager();
    m.load("blob", None).await.unwrap();
    let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    let call = op("blob")
        .with_blob(data.clone())
        .with_blob(b"tail".to_vec());
    let out = m.execute("blob", call).await.unwrap();
    assert_eq!(out.value, json!({"total": data.len() + 4, "blobs": 2}));
    assert_eq!(out.blobs.len(), 2);
    assert_eq!(&out.blobs[0][..], &data[..]);
    assert_eq!(&out.blobs[1][..], b"tail");
    m.unload_all().await;
}

#[tokio::test]
async fn unload_all_leaves_no_process_behind() {
    let s = Scratch::new();
    s.worker_manifest("a", json!({}));
    s.worker_manifest("b", json!({}));
    let m = s.manager();
    let _ = m.load_all(HashMap::new()).await;
    let child = m
        .execute("a", op("spawn_child"))
        .await
        .unwrap()
        .value
        .as_u64()
        .unwrap() as u32;
    let pa = m.stats("a").await.unwrap().pid.unwrap();
    let pb = m.stats("b").await.unwrap().pid.unwrap();
    assert!(alive(child));
    m.unload_all().await;
    assert_eq!(
        wait_gone(&[pa, pb, child], Duration::from_secs(5)),
        Vec::<u32>::new()
    );
}

#[tokio::test]
async fn user_errors_are_typed() {
    let s = Scratch::new();
    s.worker_manifest("e", json!({}));
    let m = s.manager();
    m.load("e", None).await.unwrap();
    let err = m.execute("e", op("fail")).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::UserInput);
    assert_eq!(err.message, "you asked for a failure");
    assert_eq!(err.details.plugin.as_deref(), Some("e"));
    let stats = m.stats("e").await.unwrap();
    assert_eq!((stats.calls, stats.errors), (1, 1));
    m.unload_all().await;
}
