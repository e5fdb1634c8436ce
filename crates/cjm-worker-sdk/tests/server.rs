//! The worker server over a real Unix socket, with the test plugin of `common`.

mod common;

use bytes::Bytes;
use cjm_core::wire::{self, features, HealthResponse, StatsResponse};
use cjm_core::{ErrorCategory, PluginError};
use cjm_worker_sdk::runtime::ShutdownReason;
use common::{lines, until, with_calls_socket, TestServer};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_plugin_and_its_features() {
    let s = TestServer::start();
    let a = s.client.get("/health").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-cjm-protocol"], "1");
    assert_eq!(a.headers["content-type"], "application/json");
    let h: HealthResponse = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(h.status, "running");
    assert_eq!(h.pid, std::process::id());
    assert_eq!((h.name.as_str(), h.version.as_str()), ("sdk-test", "1.2.3"));
    assert_eq!(h.protocol, Some(1));
    assert_eq!(h.max_concurrency, Some(2));
    let expected: Vec<&str> = features::ALL
        .iter()
        .copied()
        .filter(|f| *f != features::AUTH)
        .collect();
    assert_eq!(h.features, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods() {
    let s = TestServer::start();
    let a = s.client.get("/nope").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["detail"], "Not Found");
    assert_eq!(a.category(), "user_input");
    assert_eq!(a.headers["x-cjm-protocol"], "1");
    let a = s.client.post("/health", &json!({})).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.json()["detail"], "Method Not Allowed");
    assert_eq!(a.headers["allow"], "GET");
    let a = s.client.get("/execute").await;
    assert_eq!(a.status, 405);
    assert_eq!(a.headers["allow"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_comes_from_the_config_type_and_config_starts_at_defaults() {
    let s = TestServer::start();
    let schema = s.client.get("/config_schema").await.json();
    let level = &schema["properties"]["level"];
    assert_eq!(level["minimum"], 1);
    assert_eq!(level["maximum"], 10);
    assert_eq!(level["default"], 3);
    assert_eq!(level["description"], "How hard to try.");
    assert_eq!(schema["properties"]["label"]["pattern"], "^[a-z]+$");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["description"], "Test configuration.");
    let config = s.client.get("/config").await.json();
    assert_eq!(config["level"], 3);
    assert_eq!(config["mode"], "fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_validates_and_keeps_the_previous_config_on_refusal() {
    let s = TestServer::start();
    let c = &s.client;
    let a = c
        .post("/initialize", &json!({"level": 5, "mode": "slow"}))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(c.get("/config").await.json()["level"], 5);
    assert_eq!(
        c.call("/execute", "config", json!({})).await.json()["mode"],
        "slow"
    );

    // Schema violations: 422 naming each field; the plugin never sees them.
    let a = c
        .post(
            "/initialize",
            &json!({"level": 0, "colour": "red", "label": "UP"}),
        )
        .await;
    assert_eq!(a.status, 422);
    let e: PluginError = serde_json::from_value(a.json()["cjm_error"].clone()).unwrap();
    assert_eq!(e.category, ErrorCategory::Config);
    let mut fields: Vec<_> = e.details.fields.iter().map(|f| f.field.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["colour", "label", "level"]);
    // Refused by the plugin itself.
    let a = c.post("/initialize", &json!({"label": "reject"})).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.json()["detail"], "label `reject` is refused");
    // Not an object.
    assert_eq!(c.post("/initialize", &json!([1])).await.status, 422);
    // Still the accepted one.
    assert_eq!(c.get("/config").await.json()["level"], 5);
    assert_eq!(
        c.call("/execute", "config", json!({})).await.json()["level"],
        5
    );

    // `{}` and an empty body are ordinary configurations: the defaults.
    assert_eq!(c.post("/initialize", &json!({})).await.status, 200);
    assert_eq!(c.get("/config").await.json()["level"], 3);
    let empty = c
        .request("POST", "/initialize")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.send(empty).await.status, 200);

    // Malformed JSON and a wrong content type.
    let bad = c
        .request("POST", "/initialize")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"level\":")))
        .unwrap();
    let a = c.send(bad).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let text = c
        .request("POST", "/initialize")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"level=3")))
        .unwrap();
    let a = c.send(text).await;
    assert_eq!(a.status, 415);
    assert_eq!(a.category(), "user_input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_answers_results_and_typed_errors() {
    let s = TestServer::start();
    let c = &s.client;
    let a = c.call("/execute", "echo", json!({"x": [1, 2]})).await;
    assert_eq!((a.status.as_u16(), a.json()), (200, json!({"x": [1, 2]})));
    assert_eq!(a.headers["x-cjm-protocol"], "1");

    for category in ErrorCategory::ALL {
        let a = c
            .call(
                "/execute",
                "fail",
                json!({"category": category, "message": "it broke"}),
            )
            .await;
        assert_eq!(a.status.as_u16(), category.http_status(), "{category}");
        assert_eq!(a.json()["detail"], "it broke");
        let e: PluginError = serde_json::from_value(a.json()["cjm_error"].clone()).unwrap();
        assert_eq!(e, PluginError::new(category, "it broke"));
    }

    // Bad input: an unknown operation, no operation, malformed JSON, wrong content type.
    let a = c.call("/execute", "nope", json!({})).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("unknown variant"));
    let empty = c
        .request("POST", "/execute")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = c.send(empty).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("operation name"));
    let bad = c
        .request("POST", "/execute")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"args\": [")))
        .unwrap();
    let a = c.send(bad).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.category(), "user_input");
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("malformed JSON body: "));

    // Content types are compared without case; any `+json` type is JSON, `json` alone is not.
    let ok_body = br#"{"args":["echo"],"kwargs":{"ok":true}}"#;
    for (ct, status) in [
        ("application/xml", 415),
        ("Application/JSON", 200),
        ("application/Vnd.Example+JSON; charset=utf-8", 200),
        ("JSON", 415),
        ("+json", 200),
        ("Text/Plain", 415),
    ] {
        let r = c
            .request("POST", "/execute")
            .header("content-type", ct)
            .body(Full::new(Bytes::from_static(ok_body)))
            .unwrap();
        let a = c.send(r).await;
        assert_eq!(a.status, status, "content type `{ct}`");
        if status == 415 {
            let named = format!("unsupported content type `{}`", ct.to_ascii_lowercase());
            let detail = a.json()["detail"].as_str().unwrap().to_owned();
            assert!(detail.starts_with(&named), "{detail}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_answers_500_and_the_worker_lives_on() {
    let s = TestServer::start();
    let a = s
        .client
        .call("/execute", "panic", json!({"message": "boom"}))
        .await;
    assert_eq!(a.status, 500);
    assert_eq!(a.category(), "fatal");
    assert_eq!(a.json()["detail"], "plugin panicked: boom");
    assert_eq!(s.client.get("/health").await.status, 200);
    let a = s.client.call("/execute", "echo", json!({"ok": true})).await;
    assert_eq!(a.json(), json!({"ok": true}));
    let a = s
        .client
        .call("/execute_stream", "stream_panic", json!({}))
        .await;
    assert_eq!(a.status, 200);
    let l = lines(&a.body);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0], json!(0));
    assert_eq!(l[1]["$cjm"]["error"]["category"], "fatal");
    assert!(l[1]["error"]
        .as_str()
        .unwrap()
        .contains("plugin panicked: stream went wrong"));
    assert_eq!(s.client.get("/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_413() {
    let s = TestServer::start_with(|o| o.max_json_body(1024).max_frame_body(2048));
    let big = json!({"args": ["echo"], "kwargs": {"pad": "x".repeat(2000)}});
    let a = s.client.post("/execute", &big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.category(), "user_input");
    assert!(a.json()["detail"].as_str().unwrap().contains("1024"));
    // A frame may be larger than the JSON limit, up to its own.
    let req = json!({"args": ["blobs"], "kwargs": {}});
    let frame = wire::encode_frame(&req, &[Bytes::from(vec![7u8; 1500])]).concat();
    let ok = s
        .client
        .request("POST", "/execute")
        .header("content-type", wire::content_types::FRAME)
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    assert_eq!(s.client.send(ok).await.status, 200);
    let frame = wire::encode_frame(&req, &[Bytes::from(vec![7u8; 3000])]).concat();
    let too_big = s
        .client
        .request("POST", "/execute")
        .header("content-type", wire::content_types::FRAME)
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    assert_eq!(s.client.send(too_big).await.status, 413);
    assert_eq!(s.client.get("/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_carry_blobs_both_ways() {
    let s = TestServer::start();
    let req = json!({"args": ["blobs"], "kwargs": {}});
    let body = wire::encode_frame(
        &req,
        &[Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")],
    );
    let r = s
        .client
        .request("POST", "/execute")
        .header("content-type", wire::content_types::FRAME)
        .body(Full::new(Bytes::from(body.concat())))
        .unwrap();
    let a = s.client.send(r).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], wire::content_types::FRAME);
    let (value, blobs) = wire::decode_frame(a.body).unwrap();
    assert_eq!(value, json!({"lens": [3, 5], "first": {"$cjm_blob": 0}}));
    assert_eq!(
        blobs,
        [
            Bytes::from_static(b"defgh"),
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"tail")
        ]
    );
    // A JSON request has no blobs; the answer is a frame all the same (it carries one).
    let a = s.client.call("/execute", "blobs", json!({})).await;
    let (value, blobs) = wire::decode_frame(a.body).unwrap();
    assert_eq!(value["lens"], json!([]));
    assert_eq!(blobs.len(), 1);
    // A broken frame.
    let r = s
        .client
        .request("POST", "/execute")
        .header("content-type", wire::content_types::FRAME)
        .body(Full::new(Bytes::from_static(b"CJMF\x05\x00\x00\x00{}")))
        .unwrap();
    let a = s.client.send(r).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("malformed frame"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_ndjson_with_end_and_error_lines() {
    let s = TestServer::start();
    let c = &s.client;
    let a = c.call("/execute_stream", "stream", json!({"n": 3})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/x-ndjson");
    assert_eq!(
        std::str::from_utf8(&a.body).unwrap(),
        "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n{\"$cjm\":{\"end\":{\"chunks\":3}}}\n"
    );
    let a = c.call("/execute_stream", "stream", json!({"n": 0})).await;
    assert_eq!(lines(&a.body), [json!({"$cjm": {"end": {"chunks": 0}}})]);

    let a = c.call("/execute_stream", "stream_fail", json!({})).await;
    let l = lines(&a.body);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[0], json!(1));
    assert_eq!(l[1]["error"], "out of VRAM");
    let e: PluginError = serde_json::from_value(l[1]["$cjm"]["error"].clone()).unwrap();
    assert_eq!(e.category, ErrorCategory::Resource);

    let a = c
        .call("/execute_stream", "stream_reserved", json!({}))
        .await;
    let l = lines(&a.body);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["$cjm"]["error"]["category"], "fatal");

    // Failing before the first chunk: an ordinary error answer.
    let a = c
        .call("/execute_stream", "stream_start_fail", json!({}))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["detail"], "cannot stream that");
    // The default stream of a plain call: one chunk.
    let a = c.call("/execute_stream", "echo", json!({"v": 1})).await;
    assert_eq!(
        lines(&a.body),
        [json!({"v": 1}), json!({"$cjm": {"end": {"chunks": 1}}})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_endpoint_stops_running_calls_and_progress_is_visible() {
    let s = TestServer::start();
    let c = &s.client;
    // Nothing running: the plugin's hook answers.
    let a = c.post("/cancel", &json!({})).await;
    assert_eq!(a.json(), json!({"status": "not_supported"}));
    until(&s.shared.cancel_hooks, |n| n == 1).await;

    let req = c
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["wait_cancel"]}).to_string(),
        )))
        .unwrap();
    let inflight = c.open(req).await;
    until(&s.shared.started, |n| n == 1).await;
    // `started` bumps before the progress report: wait for the report itself.
    loop {
        let p = c.get("/progress").await.json();
        if p["message"] == "halfway" {
            assert_eq!(p["progress"], 0.5);
            break;
        }
        tokio::task::yield_now().await;
    }
    let stats: StatsResponse = serde_json::from_slice(&c.get("/stats").await.body).unwrap();
    assert_eq!(stats.in_flight, Some(1));

    let a = c.post("/cancel", &json!({})).await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (200, json!({"status": "cancelled"}))
    );
    let resp = inflight.response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 409);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["cjm_error"]["category"], "cancelled");
    assert_eq!(*s.shared.cancelled.borrow(), 1);
    until(&s.shared.cancel_hooks, |n| n == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_cancels_the_call() {
    let s = TestServer::start();
    let c = &s.client;
    let req = c
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["wait_cancel"]}).to_string(),
        )))
        .unwrap();
    let inflight = c.open(req).await;
    until(&s.shared.started, |n| n == 1).await;
    inflight.response.abort();
    inflight.conn.abort();
    until(&s.shared.cancelled, |n| n == 1).await;

    // The same for a stream, after its first chunk.
    let req = c
        .request("POST", "/execute_stream")
        .body(Full::new(Bytes::from(
            json!({"args": ["stream_forever"]}).to_string(),
        )))
        .unwrap();
    let inflight = c.open(req).await;
    let resp = inflight.response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"\"first\"\n"));
    drop(body);
    inflight.conn.abort();
    until(&s.shared.cancelled, |n| n == 2).await;
    assert_eq!(c.get("/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_header_cancels_and_answers_504() {
    let s = TestServer::start();
    let c = &s.client;
    let req = c
        .request("POST", "/execute")
        .header("x-cjm-timeout-ms", "20")
        .body(Full::new(Bytes::from(
            json!({"args": ["wait_cancel"]}).to_string(),
        )))
        .unwrap();
    let a = c.send(req).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.category(), "timeout");
    until(&s.shared.cancelled, |n| n == 1).await;

    let req = c
        .request("POST", "/execute_stream")
        .header("x-cjm-timeout-ms", "20")
        .body(Full::new(Bytes::from(
            json!({"args": ["stream_forever"]}).to_string(),
        )))
        .unwrap();
    let a = c.send(req).await;
    assert_eq!(a.status, 200);
    let l = lines(&a.body);
    assert_eq!(l[0], json!("first"));
    assert_eq!(l.last().unwrap()["$cjm"]["error"]["category"], "timeout");

    let req = c
        .request("POST", "/execute")
        .header("x-cjm-timeout-ms", "soon")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.send(req).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_answer_while_plugin_code_blocks_its_thread() {
    let s = TestServer::start();
    let c = &s.client;
    let req = c
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["block"]}).to_string(),
        )))
        .unwrap();
    let inflight = c.open(req).await;
    until(&s.shared.started, |n| n == 1).await;
    assert_eq!(c.get("/health").await.status, 200);
    assert_eq!(c.get("/progress").await.status, 200);
    assert_eq!(c.get("/config").await.status, 200);
    let stats: StatsResponse = serde_json::from_slice(&c.get("/stats").await.body).unwrap();
    assert_eq!(stats.in_flight, Some(1));
    assert_eq!(c.post("/cancel", &json!({})).await.status, 200);
    s.shared.open_gate();
    let resp = inflight.response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_concurrently_up_to_the_limit_and_queue_beyond() {
    let s = TestServer::start();
    let c = &s.client;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let req = c
            .request("POST", "/execute")
            .body(Full::new(Bytes::from(
                json!({"args": ["hold"]}).to_string(),
            )))
            .unwrap();
        calls.push(c.open(req).await);
    }
    until(&s.shared.active, |n| n == 2).await;
    let stats: StatsResponse = serde_json::from_slice(&c.get("/stats").await.body).unwrap();
    assert_eq!(stats.in_flight, Some(2));
    s.shared.open_gate();
    for call in calls {
        let resp = call.response.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(*s.shared.max_active.borrow(), 2);
    let stats: StatsResponse = serde_json::from_slice(&c.get("/stats").await.body).unwrap();
    assert_eq!(stats.calls, Some(3));
    assert_eq!(stats.errors, Some(0));
    assert_eq!(stats.in_flight, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_process() {
    let s = TestServer::start();
    s.client.call("/execute", "echo", json!({})).await;
    s.client
        .call(
            "/execute",
            "fail",
            json!({"category": "fatal", "message": "x"}),
        )
        .await;
    let a = s.client.get("/stats").await;
    assert_eq!(a.status, 200);
    let v = a.json();
    for key in [
        "pid",
        "cpu_percent",
        "memory_rss_mb",
        "threads",
        "uptime_s",
        "calls",
        "errors",
        "in_flight",
        "descendants",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    let st: StatsResponse = serde_json::from_value(v).unwrap();
    assert_eq!(st.pid, std::process::id());
    assert!(st.memory_rss_mb > 0.0);
    assert!(st.cpu_percent >= 0.0);
    assert!(st.threads.unwrap() >= 3);
    assert_eq!(
        (st.calls, st.errors, st.in_flight),
        (Some(2), Some(1), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_when_a_token_is_set() {
    let mut s = TestServer::start_with(|o| o.auth_token("s3cret"));
    s.client.token = Some("s3cret".into());
    let a = s.client.get("/health").await;
    let h: HealthResponse = serde_json::from_slice(&a.body).unwrap();
    assert!(h.has_feature(features::AUTH));
    assert_eq!(a.status, 200);
    let a = s.client.call("/execute", "echo", json!({"a": 1})).await;
    assert_eq!(a.json(), json!({"a": 1}));

    s.client.token = Some("wrong".into());
    let a = s.client.get("/health").await;
    assert_eq!(a.status, 401);
    assert_eq!(a.headers["x-cjm-protocol"], "1");
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    assert!(a.json()["cjm_error"].is_object());
    s.client.token = None;
    assert_eq!(s.client.get("/health").await.status, 401);
    // Unknown paths do not leak either.
    assert_eq!(s.client.get("/nope").await.status, 401);
    assert_eq!(
        s.client.call("/execute", "echo", json!({})).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_endpoint_and_shutdown_run_cleanup_once() {
    let mut s = TestServer::start();
    let a = s.client.post("/cleanup", &json!({})).await;
    assert_eq!(
        (a.status.as_u16(), a.json()),
        (200, json!({"status": "cleaned"}))
    );
    assert_eq!(*s.shared.cleanups.borrow(), 1);
    let reason = tokio::task::block_in_place(|| s.shutdown());
    assert_eq!(reason, ShutdownReason::Requested);
    assert_eq!(*s.shared.cleanups.borrow(), 1);

    let mut s = TestServer::start();
    tokio::task::block_in_place(|| s.shutdown());
    assert_eq!(*s.shared.cleanups.borrow(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_calls_finish_within_the_grace_period() {
    let mut s = TestServer::start_with(|o| o.shutdown_grace(std::time::Duration::from_secs(60)));
    let c = s.client.clone();
    let req = c
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["hold"]}).to_string(),
        )))
        .unwrap();
    let inflight = c.open(req).await;
    until(&s.shared.active, |n| n == 1).await;
    let handle = s.handle.take().unwrap();
    let stopping = tokio::task::spawn_blocking(move || handle.shutdown().unwrap());
    // Once the socket file is gone the server no longer accepts.
    while c.path.exists() {
        tokio::task::yield_now().await;
    }
    s.shared.open_gate();
    let resp = inflight.response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stopping.await.unwrap(), ShutdownReason::Requested);
    assert_eq!(*s.shared.cleanups.borrow(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_calls_after_the_grace_period() {
    let mut s = TestServer::start_with(|o| o.shutdown_grace(std::time::Duration::from_millis(50)));
    let c = s.client.clone();
    let req = c
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["wait_cancel"]}).to_string(),
        )))
        .unwrap();
    let inflight = c.open(req).await;
    until(&s.shared.started, |n| n == 1).await;
    let reason = tokio::task::block_in_place(|| s.shutdown());
    assert_eq!(reason, ShutdownReason::Requested);
    assert_eq!(*s.shared.cancelled.borrow(), 1);
    assert_eq!(*s.shared.cleanups.borrow(), 1);
    let resp = inflight.response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_blob_channel_takes_and_answers_memfds() {
    use cjm_sys::blob_channel::BlobChannel;
    use cjm_sys::shared_blob::{memfd_of, BlobBuf};
    use std::os::fd::IntoRawFd;

    let (host, theirs) = BlobChannel::pair().unwrap();
    let worker_end = BlobChannel::adopt(theirs.into_raw_fd()).unwrap();
    let s = TestServer::start_with(|o| o.blob_channel(worker_end));
    let h: HealthResponse = serde_json::from_slice(&s.client.get("/health").await.body).unwrap();
    assert!(h.features.iter().any(|f| f == features::BLOB_MEMFD));

    let post = |body: Vec<Bytes>| {
        s.client
            .request("POST", "/execute")
            .header("content-type", wire::content_types::FRAME)
            .body(Full::new(Bytes::from(body.concat())))
            .unwrap()
    };
    let mut buf = BlobBuf::new(1 << 20).unwrap();
    buf[0] = 42;
    let built = buf.freeze().unwrap();
    let inline = Bytes::from_static(b"abc");
    let blobs = [built.slice(10..), inline.clone()];
    let sent = host.send_blobs(&blobs).unwrap();
    assert!(sent.is_some());
    let req = json!({"args": ["blobs"], "kwargs": {}});
    let a = s
        .client
        .send(post(wire::encode_frame_sent(&req, &blobs, sent)))
        .await;
    assert_eq!(a.status, 200);
    let (value, back) =
        wire::decode_frame_with(a.body, |t| host.take_mapped(t).map_err(|e| e.to_string()))
            .unwrap();
    assert_eq!(value["lens"], json!([(1 << 20) - 10, 3]));
    // Reversed, then "tail": the memfd blob came back as a memfd, the small ones inline.
    assert_eq!(
        back,
        [inline, built.slice(10..), Bytes::from_static(b"tail")]
    );
    let (fd, offset) = memfd_of(&back[1]).expect("answered as a memfd");
    assert_eq!(offset, 10);
    let ino = |fd: std::os::fd::BorrowedFd<'_>| {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(fd), ino(memfd_of(&built).unwrap().0), "the same memfd");
    assert!(memfd_of(&back[0]).is_none());

    // A frame that names a message never sent is refused, and the worker goes on.
    let stray = [built.clone()];
    let forged = wire::encode_frame_placed(
        &req,
        &stray,
        &[Some(wire::MemfdPlace { fd: 0, offset: 0 })],
        Some(999_999),
    );
    let a = s.client.send(post(forged.clone())).await;
    assert_eq!(a.status, 400);
    assert!(
        a.json()["detail"].as_str().unwrap().contains("never sent"),
        "{}",
        a.json()
    );
    assert_eq!(
        s.client.call("/execute", "echo", json!({})).await.status,
        200
    );

    // A worker without a channel refuses such a frame just as clearly.
    let plain = TestServer::start();
    let r = plain
        .client
        .request("POST", "/execute")
        .header("content-type", wire::content_types::FRAME)
        .body(Full::new(Bytes::from(forged.concat())))
        .unwrap();
    let a = plain.client.send(r).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("no blob channel"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_socket_serves_calls_while_control_stays_on_the_main_socket() {
    let (s, calls, _dir) = with_calls_socket(|o| o);
    let h: HealthResponse = serde_json::from_slice(&s.client.get("/health").await.body).unwrap();
    assert!(h.features.iter().any(|f| f == features::CALLS_SOCKET));

    // Calls, streams and typed errors, as on the main socket.
    let a = calls.call("/execute", "echo", json!({"v": 7})).await;
    assert_eq!((a.status.as_u16(), a.json()), (200, json!({"v": 7})));
    let a = calls
        .call("/execute_stream", "stream", json!({"n": 2}))
        .await;
    assert_eq!(
        lines(&a.body),
        [
            json!({"i": 0}),
            json!({"i": 1}),
            json!({"$cjm": {"end": {"chunks": 2}}})
        ]
    );
    let a = calls
        .call(
            "/execute",
            "fail",
            json!({"category": "resource", "message": "no"}),
        )
        .await;
    assert_eq!(a.category(), "resource");

    // A call on the calls socket blocks a plugin thread: the main socket still answers
    // control requests, and its cancel reaches the call.
    let req = calls
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["block"]}).to_string(),
        )))
        .unwrap();
    let before = *s.shared.started.borrow();
    let inflight = calls.open(req).await;
    until(&s.shared.started, |n| n == before + 1).await;
    assert_eq!(s.client.get("/health").await.status, 200);
    assert_eq!(s.client.get("/progress").await.status, 200);
    let stats: StatsResponse = serde_json::from_slice(&s.client.get("/stats").await.body).unwrap();
    assert_eq!(stats.in_flight, Some(1));
    assert_eq!(s.client.post("/cancel", &json!({})).await.status, 200);
    s.shared.open_gate();
    let resp = inflight.response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let stats: StatsResponse = serde_json::from_slice(&s.client.get("/stats").await.body).unwrap();
    assert_eq!(stats.calls, Some(4));
    assert_eq!(stats.in_flight, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waits_on_the_calls_socket_runs_on_and_is_cancelled_when_its_client_goes() {
    // A call that finishes at once is answered in place; one that waits goes on as a task of
    // its own, which the client's going away cancels, as on the main socket.
    let (s, calls, _dir) = with_calls_socket(|o| o);
    let a = calls.call("/execute", "echo", json!({"v": 1})).await;
    assert_eq!((a.status.as_u16(), a.json()), (200, json!({"v": 1})));
    let req = calls
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["wait_cancel"]}).to_string(),
        )))
        .unwrap();
    // Every call bumps `started`: the echo above made it 1.
    let inflight = calls.open(req).await;
    until(&s.shared.started, |n| n == 2).await;
    let stats: StatsResponse = serde_json::from_slice(&s.client.get("/stats").await.body).unwrap();
    assert_eq!(stats.in_flight, Some(1));
    inflight.response.abort();
    inflight.conn.abort();
    until(&s.shared.cancelled, |n| n == 1).await;
    // The call's task ends, and its accounting with it: it is counted once it has left the
    // running calls.
    loop {
        let stats: StatsResponse =
            serde_json::from_slice(&s.client.get("/stats").await.body).unwrap();
        if stats.calls == Some(2) {
            assert_eq!(stats.in_flight, Some(0));
            break;
        }
        tokio::task::yield_now().await;
    }
    let a = calls.call("/execute", "echo", json!({"v": 2})).await;
    assert_eq!(a.json(), json!({"v": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_calls_socket_and_closes_it() {
    let (mut s, calls, _dir) =
        with_calls_socket(|o| o.shutdown_grace(std::time::Duration::from_secs(60)));
    let req = calls
        .request("POST", "/execute")
        .body(Full::new(Bytes::from(
            json!({"args": ["hold"]}).to_string(),
        )))
        .unwrap();
    let inflight = calls.open(req).await;
    until(&s.shared.active, |n| n == 1).await;
    let handle = s.handle.take().unwrap();
    let stopping = tokio::task::spawn_blocking(move || handle.shutdown().unwrap());
    // Once the calls socket refuses connections, nobody accepts there any more...
    loop {
        match tokio::net::UnixStream::connect(&calls.path).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => tokio::task::yield_now().await,
        }
    }
    // ...but the call in flight there holds the shutdown until it ends.
    assert!(!stopping.is_finished());
    assert_eq!(*s.shared.cleanups.borrow(), 0);
    s.shared.open_gate();
    let resp = inflight.response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stopping.await.unwrap(), ShutdownReason::Requested);
    assert_eq!(*s.shared.cleanups.borrow(), 1);
}
