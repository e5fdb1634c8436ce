//! The host driving the original's unchanged Python worker (cjm-plugin-system 0.0.28).
//!
//! Needs the venv that `cargo xtask test` creates under `target/py-venv` (or `CJM_TEST_PYTHON`
//! pointing at a Python with cjm-plugin-system 0.0.28). Without it these tests fail with a
//! message saying so: they never skip silently.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cjm_host::{
    Call, CallContext, CancellationToken, ErrorCategory, PluginState, SupervisorOptions,
};
use common::{alive, wait_gone, Scratch};
use futures::StreamExt;
use serde_json::{json, Value};

fn python() -> PathBuf {
    let p = std::env::var_os("CJM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python")
        });
    assert!(
        p.is_file(),
        "no Python with cjm-plugin-system 0.0.28 at {}: run `cargo xtask test` (it creates the \
         venv) or set CJM_TEST_PYTHON",
        p.display()
    );
    p
}

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Writes an original-format manifest, exactly as `cjm-ctl install-all` would.
fn py_manifest(s: &Scratch, name: &str, class: &str, extra: Value) {
    let mut m = json!({
        "name": name, "version": "0.0.28-test", "category": "python",
        "module": "cjm_test_plugins.plugins", "class": class,
        "python_path": python(),
        "env_vars": {"PYTHONPATH": plugins_dir()},
        "conda_env": "cjm-test",
    });
    if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    s.write(&format!("{name}.json"), &m.to_string());
}

fn call(args: Value, kwargs: Value) -> Call {
    Call::new(args.as_array().cloned().unwrap_or_default())
        .with_kwargs(kwargs.as_object().cloned().unwrap_or_default())
}

#[tokio::test]
async fn echo_async_stats_logs_and_reload() {
    let s = Scratch::new();
    py_manifest(&s, "py-echo", "EchoPlugin", json!({}));
    let m = s.manager();
    let manifest = m.discovered_manifest("py-echo").unwrap();
    assert_eq!(manifest.effective_execution_mode().as_str(), "conda_env");
    m.load("py-echo", None).await.unwrap();
    let out = m
        .execute("py-echo", call(json!([1, "two"]), json!({"k": [3]})))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"args": [1, "two"], "kwargs": {"k": [3]}}));

    // Concurrent calls are queued by the host (the worker serves one /execute at a time).
    let jobs = (0..8).map(|i| m.execute("py-echo", call(json!([i]), json!({}))));
    let outs = futures::future::join_all(jobs).await;
    for (i, o) in outs.into_iter().enumerate() {
        assert_eq!(o.unwrap().value["args"], json!([i]));
    }

    let stats = m.stats("py-echo").await.unwrap();
    let w = stats.worker.unwrap();
    assert!(w.memory_rss_mb > 5.0, "{w:?}");
    assert!(
        w.descendants.is_some(),
        "the host fills in what the worker does not report"
    );
    assert_eq!(stats.calls, 9);

    let pid = stats.pid.unwrap();
    m.reload("py-echo", None).await.unwrap();
    assert_ne!(m.stats("py-echo").await.unwrap().pid.unwrap(), pid);
    assert!(!alive(pid));
    m.unload_all().await;
    let logs = m.logs("py-echo", 100).unwrap();
    assert!(
        logs.iter().any(|l| l.starts_with("--- Starting py-echo")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn streams_and_their_in_band_error_line() {
    let s = Scratch::new();
    py_manifest(&s, "py-stream", "StreamPlugin", json!({}));
    let m = s.manager();
    m.load("py-stream", None).await.unwrap();
    let items: Vec<_> = m
        .execute_stream("py-stream", call(json!([]), json!({"text": "a b c"})))
        .await
        .unwrap()
        .collect()
        .await;
    let words: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(words.len(), 3);
    assert_eq!(words[2], json!({"index": 2, "word": "c"}));

    let items: Vec<_> = m
        .execute_stream(
            "py-stream",
            call(json!([]), json!({"text": "a b c d", "fail_at": 2})),
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 3, "two chunks, then the error, then nothing");
    assert!(items[0].is_ok() && items[1].is_ok());
    let err = items[2].as_ref().unwrap_err();
    assert!(
        err.message.contains("CUDA out of memory at word 2"),
        "{err}"
    );
    m.unload_all().await;
}

#[tokio::test]
async fn long_calls_are_not_mistaken_for_death_and_progress_and_cancel_work() {
    let s = Scratch::new();
    py_manifest(&s, "py-slow", "SlowPlugin", json!({}));
    let m = s.manager();
    m.load("py-slow", None).await.unwrap();

    // While /execute runs plugin code the worker answers nothing, /health included; the host
    // keeps waiting instead of declaring it dead.
    let slow = m.execute("py-slow", call(json!([]), json!({"seconds": 1.0})));
    let out = slow.await.unwrap();
    assert_eq!(out.value, json!({"slept": 1.0}));
    assert_eq!(m.state("py-slow"), Some(PluginState::Ready));

    // Streams run in the worker's thread pool: progress and cancel are served meanwhile.
    let mut stream = m
        .execute_stream("py-slow", call(json!([]), json!({"seconds": 30.0})))
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        json!({"started": true})
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = m.progress("py-slow").await.unwrap();
        if p.message.starts_with("step") {
            break;
        }
        assert!(Instant::now() < deadline, "no progress reported");
        tokio::task::yield_now().await;
    }
    let outcome = m.cancel("py-slow").await.unwrap();
    assert_eq!(outcome, cjm_host::CancelOutcome::Cancelled);
    let last = stream.next().await.unwrap().unwrap();
    assert!(last.get("cancelled_at").is_some(), "{last}");
    assert!(stream.next().await.is_none());

    // A caller-side cancel of /execute: the host gives up at once and asks the worker to stop.
    let token = CancellationToken::new();
    let c = call(json!([]), json!({"seconds": 30.0}))
        .with_ctx(CallContext::new().with_cancel(token.clone()));
    let m2 = m.clone();
    let task = tokio::spawn(async move { m2.execute("py-slow", c).await });
    token.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.category, ErrorCategory::Cancelled);
    m.unload_all().await;
}

#[tokio::test]
async fn initialize_is_not_cut_off_while_a_model_loads() {
    let s = Scratch::new();
    py_manifest(&s, "py-slow", "SlowPlugin", json!({}));
    let m = s.manager();
    // The original host gave /initialize 5 s; loading a model takes longer.
    let started = Instant::now();
    m.load("py-slow", Some(json!({"init_seconds": 5.5})))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(5500));
    assert_eq!(m.state("py-slow"), Some(PluginState::Ready));
    m.unload_all().await;
}

#[tokio::test]
async fn plugin_exceptions_crashes_and_restarts() {
    let s = Scratch::new();
    py_manifest(&s, "py-raising", "RaisingPlugin", json!({}));
    py_manifest(&s, "py-crashing", "CrashingPlugin", json!({}));
    let m = s.manager_with(SupervisorOptions {
        backoff_base: Duration::from_millis(10),
        ..SupervisorOptions::default()
    });
    for (name, r) in m.load_all(HashMap::new()).await {
        r.unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    let err = m
        .execute("py-raising", call(json!(["x"]), json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Fatal);
    assert_eq!(err.message, "bad input: ('x',)");

    let pid = m.stats("py-crashing").await.unwrap().pid.unwrap();
    let mut states = m.watch_state("py-crashing").unwrap();
    states.borrow_and_update();
    let err = m
        .execute("py-crashing", call(json!([]), json!({"what": "crash"})))
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Transient);
    assert!(err.retriable);
    states.changed().await.unwrap();
    m.wait_for_state("py-crashing", Duration::from_secs(60), |s| {
        s == PluginState::Ready
    })
    .await
    .unwrap();
    let out = m
        .execute("py-crashing", call(json!([]), json!({})))
        .await
        .unwrap();
    assert_ne!(out.value["pid"].as_u64().unwrap() as u32, pid);
    assert_eq!(m.stats("py-crashing").await.unwrap().restarts, 1);
    m.unload_all().await;
}

#[tokio::test]
async fn unload_takes_the_plugins_own_children() {
    let s = Scratch::new();
    py_manifest(&s, "py-child", "ChildPlugin", json!({}));
    let m = s.manager();
    m.load("py-child", None).await.unwrap();
    let out = m
        .execute("py-child", call(json!([]), json!({})))
        .await
        .unwrap();
    let child = out.value["child"].as_u64().unwrap() as u32;
    let worker = out.value["worker"].as_u64().unwrap() as u32;
    assert!(alive(child));
    m.unload_all().await;
    assert_eq!(
        wait_gone(&[worker, child], Duration::from_secs(5)),
        Vec::<u32>::new()
    );
}

#[tokio::test]
async fn config_schema_valid_and_invalid_updates() {
    let s = Scratch::new();
    py_manifest(&s, "py-config", "ConfigPlugin", json!({}));
    let m = s.manager();
    m.load("py-config", None).await.unwrap();
    // The manifest has no schema: the worker's governs.
    let schema = m.config_schema("py-config").unwrap();
    assert_eq!(schema["properties"]["beam"]["maximum"], 10);
    assert_eq!(
        m.config("py-config").unwrap(),
        json!({"model": "small", "beam": 2})
    );

    m.update_config("py-config", json!({"model": "large", "beam": 4}))
        .await
        .unwrap();
    let out = m
        .execute("py-config", call(json!([]), json!({})))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"model": "large", "beam": 4}));

    let bad = m
        .update_config("py-config", json!({"beam": 11}))
        .await
        .unwrap_err();
    assert_eq!(bad.category, ErrorCategory::Config);
    assert_eq!(bad.details.fields[0].field, "beam");
    let refused = m
        .update_config("py-config", json!({"model": "forbidden"}))
        .await;
    // "forbidden" is outside the enum: refused by the host before the worker sees it.
    assert_eq!(refused.unwrap_err().category, ErrorCategory::Config);
    assert_eq!(
        m.config("py-config").unwrap(),
        json!({"model": "large", "beam": 4})
    );
    m.unload_all().await;
}

#[tokio::test]
async fn a_port_taken_in_between_is_retried() {
    let s = Scratch::new();
    // A python that fails to bind the first time, as if another process took the port.
    let flag = s.dir.path().join("first-try-done");
    let shim = s.dir.path().join("python-shim");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nif [ ! -e '{flag}' ]; then touch '{flag}'; echo \"ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 1): address already in use\" >&2; exit 1; fi\nexec '{py}' \"$@\"\n",
            flag = flag.display(),
            py = python().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    py_manifest(&s, "py-echo", "EchoPlugin", json!({"python_path": shim}));
    let m = s.manager();
    m.load("py-echo", None).await.unwrap();
    assert!(flag.exists(), "the first start failed to bind");
    let out = m
        .execute("py-echo", call(json!(["ok"]), json!({})))
        .await
        .unwrap();
    assert_eq!(out.value["args"], json!(["ok"]));
    m.unload_all().await;
}
