//! The manager's API beyond workers: in-process plugins behind the same API, and the blocking
//! manager for synchronous code.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use cjm_host::{
    BlockingPluginManager, Call, ErrorCategory, Output, Plugin, PluginError, PluginManager,
};
use common::Scratch;
use futures::StreamExt;
use serde_json::{json, Value};

/// A plugin that lives in the host process.
struct Counter {
    calls: AtomicU32,
    step: AtomicU32,
}

#[async_trait::async_trait]
impl Plugin for Counter {
    fn name(&self) -> &str {
        "counter"
    }
    fn version(&self) -> &str {
        "2.0.0"
    }
    async fn initialize(&self, config: Value) -> Result<(), PluginError> {
        let step = config["step"].as_u64().unwrap_or(1) as u32;
        self.step.store(step, Ordering::Relaxed);
        Ok(())
    }
    async fn execute(&self, _call: Call) -> Result<Output, PluginError> {
        let step = self.step.load(Ordering::Relaxed);
        Ok(json!(self.calls.fetch_add(step, Ordering::Relaxed) + step).into())
    }
    async fn config_schema(&self) -> Result<Value, PluginError> {
        Ok(json!({"type": "object", "properties": {
            "step": {"type": "integer", "minimum": 1, "default": 1}}}))
    }
}

fn counter() -> Arc<Counter> {
    Arc::new(Counter {
        calls: AtomicU32::new(0),
        step: AtomicU32::new(1),
    })
}

#[tokio::test]
async fn in_process_plugins_use_the_same_api() {
    let s = Scratch::new();
    let m = s.manager();
    m.register_in_process(counter(), "math", None)
        .await
        .unwrap();
    assert_eq!(m.loaded(), ["counter"]);
    assert_eq!(m.loaded_categories(), ["math"]);
    assert_eq!(
        m.execute("counter", Call::new(vec![])).await.unwrap().value,
        json!(1)
    );
    m.update_config("counter", json!({"step": 10}))
        .await
        .unwrap();
    assert_eq!(
        m.execute("counter", Call::new(vec![])).await.unwrap().value,
        json!(11)
    );
    let err = m
        .update_config("counter", json!({"step": 0}))
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Config);
    assert_eq!(err.details.fields[0].field, "step");
    let chunks: Vec<_> = m
        .execute_stream("counter", Call::new(vec![]))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(chunks.len(), 1);
    // Seen through the manager like any other plugin.
    let p = m.loaded_manifest("counter").unwrap();
    assert_eq!((p.name.as_str(), p.version.as_str()), ("counter", "2.0.0"));
    let stats = m.stats("counter").await.unwrap();
    assert_eq!(stats.calls, 3);
    assert_eq!(stats.pid, None);
    m.disable("counter").unwrap();
    assert_eq!(
        m.execute("counter", Call::new(vec![]))
            .await
            .unwrap_err()
            .category,
        ErrorCategory::Disabled
    );
    m.unload_all().await;
    assert!(m.loaded().is_empty());
}

#[test]
fn the_blocking_manager_works_from_plain_main() {
    let s = Scratch::new();
    s.worker_manifest("echo", json!({}));
    let m = BlockingPluginManager::new(
        PluginManager::builder()
            .search_paths([s.manifests()])
            .data_dir(s.data()),
    )
    .unwrap();
    assert_eq!(m.discover(), 1);
    m.load("echo", None).unwrap();
    let out = m
        .execute("echo", Call::new(vec![json!("echo"), json!(1)]))
        .unwrap();
    assert_eq!(out.value, json!({"args": [1], "kwargs": {}}));
    let chunks: Vec<_> = m
        .execute_stream("echo", Call::new(vec![]).kwarg("n", json!(4)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(chunks.len(), 4);
    m.register_in_process(counter(), "math", None).unwrap();
    assert_eq!(
        m.execute("counter", Call::new(vec![])).unwrap().value,
        json!(1)
    );
    let pid = m.stats("echo").unwrap().pid.unwrap();
    m.unload_all().unwrap();
    assert!(!common::alive(pid));
}

#[tokio::test]
async fn the_blocking_manager_refuses_to_run_inside_a_runtime() {
    let err = BlockingPluginManager::new(PluginManager::builder()).unwrap_err();
    assert_eq!(err.category, ErrorCategory::Fatal);
    assert!(err.message.contains("inside an async runtime"), "{err}");
}

#[test]
fn the_blocking_manager_refuses_calls_from_inside_a_runtime() {
    let s = Scratch::new();
    let m = BlockingPluginManager::new(
        PluginManager::builder()
            .search_paths([s.manifests()])
            .data_dir(s.data()),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(async { m.load("x", None) }).unwrap_err();
    assert!(err.message.contains("inside an async runtime"), "{err}");
}

#[tokio::test]
async fn raw_results_are_the_json_the_worker_wrote_and_count_like_calls() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.manager();
    m.load("w", None).await.unwrap();
    let call = || {
        Call::new(vec![json!("echo"), json!("é\u{1}")]).kwarg("n", json!([1.5, null, {"k": true}]))
    };
    let parsed = m.execute("w", call()).await.unwrap();
    let raw = m.execute_raw("w", call()).await.unwrap();
    // The text as the SDK wrote it (serde_json's bytes), and the same value once parsed.
    assert_eq!(raw.json, serde_json::to_vec(&parsed.value).unwrap());
    assert_eq!(raw.clone().parse().unwrap(), parsed);
    assert_eq!(m.stats("w").await.unwrap().calls, 2);
    // A worker's error stays the typed error.
    let e = m
        .execute_raw("w", Call::new(vec![json!("no-such-op")]))
        .await
        .unwrap_err();
    assert_eq!(e.category, ErrorCategory::UserInput, "{e}");

    // An in-process plugin answers the raw call with its value written out.
    m.register_in_process(counter(), "math", None)
        .await
        .unwrap();
    let raw = m.execute_raw("counter", Call::new(vec![])).await.unwrap();
    assert_eq!(&raw.json[..], b"1");
    m.unload_all().await;
}
