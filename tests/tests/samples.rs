//! The sample plugins of `examples/sample-plugins`, each loaded by the host from its manifest
//! template (`examples/sample-plugins/manifests/*.json`, `{bin_dir}` filled in) and exercised.
//!
//! The sample binaries belong to another package, so they are found next to this package's
//! test worker; `cargo xtask test` builds the whole workspace first.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cjm_host::{Call, CallContext, CancelOutcome, ErrorCategory, PluginState, SupervisorOptions};
use common::{wait_gone, Scratch};
use futures::StreamExt;
use serde_json::{json, Value};

fn op(name: &str) -> Call {
    Call::new(vec![json!(name)])
}

/// Where the sample workers are built: beside the test workers.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_host-test-worker"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Writes the generated manifest of sample `name` into the scratch manifests directory.
fn sample(s: &Scratch, name: &str) -> Value {
    let bin = bin_dir().join(name);
    assert!(
        bin.is_file(),
        "the sample worker {} is not built: run `cargo build -p cjm-sample-plugins` (cargo xtask \
         test does)",
        bin.display()
    );
    let template = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/sample-plugins/manifests")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&template).expect("read the manifest template");
    let mut m: Value = serde_json::from_str(&text).expect("the template is JSON");
    let command = m["command"].as_str().expect("a command").replace(
        "{bin_dir}",
        bin_dir().to_str().expect("a UTF-8 build directory"),
    );
    assert_eq!(Path::new(&command), bin);
    m["command"] = json!(command);
    s.write(&format!("{name}.json"), &m.to_string());
    m
}

#[tokio::test]
async fn echo_returns_kwargs_and_blobs_and_sleeps() {
    let s = Scratch::new();
    sample(&s, "echo");
    let m = s.manager();
    m.load("echo", None).await.unwrap();
    let out = m
        .execute("echo", op("echo").kwarg("text", json!("hi")))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"text": "hi"}));
    assert!(out.blobs.is_empty());

    // The bench's call: args ["echo"], no kwargs, one blob.
    let blob: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
    let out = m
        .execute("echo", op("echo").with_blob(blob.clone()))
        .await
        .unwrap();
    assert_eq!(out.value, json!({}));
    assert_eq!(out.blobs.len(), 1);
    assert_eq!(&out.blobs[0][..], &blob[..]);

    let out = m
        .execute("echo", op("sleep").kwarg("seconds", json!(0.05)))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"slept": 0.05}));
    m.unload_all().await;
}

#[tokio::test]
async fn transcriber_streams_words() {
    let s = Scratch::new();
    sample(&s, "transcriber");
    let m = s.manager();
    m.load(
        "transcriber",
        Some(json!({"word_delay_ms": 0, "language": "fr"})),
    )
    .await
    .unwrap();
    let items: Vec<Value> = m
        .execute_stream(
            "transcriber",
            op("transcribe").kwarg("text", json!("un deux trois")),
        )
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[2],
        json!({"index": 2, "word": "trois", "language": "fr"})
    );
    m.unload_all().await;
}

#[tokio::test]
async fn config_rich_schema_and_validation_name_the_fields() {
    let s = Scratch::new();
    sample(&s, "config-rich");
    let m = s.manager();
    m.load("config-rich", Some(json!({"name": "first", "seed": 3})))
        .await
        .unwrap();
    let shown = m.execute("config-rich", op("show")).await.unwrap().value;
    assert_eq!(
        shown,
        json!({"name": "first", "temperature": 0.7, "beam_size": 4, "verbose": false,
               "model": "small", "tags": ["demo"], "seed": 3})
    );

    // Every schema type, with a default, a title and a description.
    let schema = m.config_schema("config-rich").unwrap();
    let props = schema["properties"].as_object().expect("properties");
    let types: Vec<String> = props
        .values()
        .map(|p| p.get("type").map_or("$ref".to_owned(), Value::to_string))
        .collect();
    for t in [
        "\"string\"",
        "\"number\"",
        "\"integer\"",
        "\"boolean\"",
        "\"array\"",
        "$ref",
        "[\"integer\",\"null\"]",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} field in {types:?}");
    }
    for (name, p) in props {
        assert!(p.get("default").is_some(), "{name} has no default");
        assert!(p["title"].is_string(), "{name} has no title: {p}");
        assert!(p["description"].is_string(), "{name} has no description");
    }
    assert_eq!(props["name"]["pattern"], "^[A-Za-z0-9_-]+$");
    assert_eq!(props["name"]["maxLength"], 32);
    assert_eq!(props["temperature"]["maximum"], 2.0);
    assert_eq!(props["tags"]["items"]["type"], "string");

    // Valid: applied hot.
    m.update_config(
        "config-rich",
        json!({"name": "second", "model": "large", "tags": []}),
    )
    .await
    .unwrap();
    let shown = m.execute("config-rich", op("show")).await.unwrap().value;
    assert_eq!(shown["name"], "second");
    assert_eq!(shown["model"], "large");
    assert_eq!(shown["seed"], Value::Null);

    // Invalid: refused naming each field; the previous configuration stays in force.
    let err = m
        .update_config(
            "config-rich",
            json!({"name": "no spaces allowed", "temperature": 9, "beam_size": 0,
                   "model": "huge", "tags": ["ok", 1], "seed": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Config);
    let mut fields: Vec<&str> = err
        .details
        .fields
        .iter()
        .map(|f| f.field.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "beam_size",
            "model",
            "name",
            "seed",
            "tags/1",
            "temperature"
        ],
        "{err:?}"
    );
    let err = m
        .update_config("config-rich", json!({"unknown": true}))
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Config);
    let shown = m.execute("config-rich", op("show")).await.unwrap().value;
    assert_eq!(shown["name"], "second");
    m.unload_all().await;
}

#[tokio::test]
async fn slow_reports_progress_streams_and_honours_cancel() {
    let s = Scratch::new();
    sample(&s, "slow");
    let m = s.manager();
    m.load("slow", None).await.unwrap();
    let work = |seconds: f64, steps: u32| {
        op("work")
            .kwarg("seconds", json!(seconds))
            .kwarg("steps", json!(steps))
    };
    let out = m.execute("slow", work(0.05, 5)).await.unwrap();
    assert_eq!(out.value, json!({"seconds": 0.05, "steps": 5}));

    let items: Vec<Value> = m
        .execute_stream("slow", work(0.03, 3))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items.len(), 4);
    assert_eq!(items[0], json!({"step": 1, "of": 3}));
    assert_eq!(items[3]["done"], true);

    // A failure midway ends the stream with an error, not a chunk.
    let items: Vec<_> = m
        .execute_stream("slow", work(0.03, 3).kwarg("fail_at", json!(2)))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 3);
    let err = items[2].as_ref().unwrap_err();
    assert_eq!(err.category, ErrorCategory::Fatal);
    assert!(err.message.contains("simulated failure at step 2"), "{err}");

    let err = m.execute("slow", work(1.0, 0)).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::UserInput);

    // Progress while it works, then /cancel.
    let m2 = m.clone();
    let task = tokio::spawn(async move { m2.execute("slow", work(60.0, 600)).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = m.progress("slow").await.unwrap();
        if p.message.ends_with("of 600") && p.progress > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress reported: {p:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = m.cancel("slow").await.unwrap();
    assert_eq!(outcome, CancelOutcome::Cancelled);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.category, ErrorCategory::Cancelled);
    assert_eq!(m.state("slow"), Some(PluginState::Ready));
    m.unload_all().await;
}

#[tokio::test]
async fn crashy_exit_restarts_panic_is_survived_hang_times_out() {
    let s = Scratch::new();
    sample(&s, "crashy");
    let m = s.manager_with(SupervisorOptions {
        backoff_base: Duration::from_millis(10),
        ..SupervisorOptions::default()
    });
    m.load("crashy", None).await.unwrap();
    let pid_of = |v: Value| v["pid"].as_u64().expect("a pid") as u32;
    let pid1 = pid_of(m.execute("crashy", op("pid")).await.unwrap().value);

    // exit: the call fails as transient and the worker is restarted.
    let mut states = m.watch_state("crashy").unwrap();
    states.borrow_and_update();
    let err = m
        .execute("crashy", op("exit").kwarg("code", json!(7)))
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Transient, "{err}");
    // The supervisor notices the exit (the state changes), then restarts the worker.
    states.changed().await.unwrap();
    m.wait_for_state("crashy", Duration::from_secs(20), |s| {
        s == PluginState::Ready
    })
    .await
    .unwrap();
    let stats = m.stats("crashy").await.unwrap();
    assert_eq!(stats.restarts, 1);
    assert_eq!(stats.last_exit.as_deref(), Some("exited with status 7"));
    let pid2 = pid_of(m.execute("crashy", op("pid")).await.unwrap().value);
    assert_ne!(pid1, pid2);
    assert!(wait_gone(&[pid1], Duration::from_secs(5)).is_empty());

    // panic: a typed 500, and the same worker keeps serving.
    let err = m
        .execute("crashy", op("panic").kwarg("message", json!("boom 42")))
        .await
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Fatal);
    assert!(err.message.contains("plugin panicked"), "{err}");
    assert!(err.message.contains("boom 42"), "{err}");
    assert_eq!(
        pid_of(m.execute("crashy", op("pid")).await.unwrap().value),
        pid2
    );

    // hang: ignores cancellation; the deadline ends the call for the caller, the worker
    // still serves on its other threads, and unloading still ends it.
    let started = Instant::now();
    let call = op("hang").with_ctx(
        CallContext::new().with_deadline(Some(Instant::now() + Duration::from_millis(300))),
    );
    let err = m.execute("crashy", call).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        pid_of(m.execute("crashy", op("pid")).await.unwrap().value),
        pid2
    );
    m.unload_all().await;
    assert!(wait_gone(&[pid2], Duration::from_secs(10)).is_empty());
}

#[tokio::test]
async fn resources_are_declared_and_the_gpu_placement_is_visible() {
    let s = Scratch::new();
    sample(&s, "resources");
    let m = s.manager();
    let manifest = m.discovered_manifest("resources").unwrap();
    let r = &manifest.resources;
    assert!(r.requires_gpu);
    assert_eq!(r.min_gpu_vram_mb, Some(512));
    assert_eq!(r.recommended_gpu_vram_mb, Some(2048));
    assert_eq!(r.min_system_ram_mb, Some(256));

    m.load("resources", None).await.unwrap();
    let info = m.execute("resources", op("info")).await.unwrap().value;
    assert_eq!(
        info["pid"].as_u64(),
        m.stats("resources").await.unwrap().pid.map(u64::from)
    );
    let gpus = m.system_snapshot().await.gpus;
    if gpus.is_empty() {
        // No GPU (no NVML): the host places nothing; the worker sees the host's own value.
        assert_eq!(
            info["cuda_visible_devices"],
            json!(std::env::var("CUDA_VISIBLE_DEVICES").ok()),
            "{info}"
        );
    } else {
        let placed = info["cuda_visible_devices"]
            .as_str()
            .expect("placed on a GPU");
        assert!(
            gpus.iter().any(|g| g.index.to_string() == placed),
            "{placed} is none of {gpus:?}"
        );
    }
    m.unload_all().await;
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` line of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn an_idle_worker_gives_back_the_memory_of_its_large_calls() {
    let s = Scratch::new();
    sample(&s, "echo");
    let m = s.manager();
    m.load("echo", None).await.unwrap();
    let pid = m.pid("echo").unwrap();
    m.execute("echo", op("echo").kwarg("x", json!(1)))
        .await
        .unwrap();
    let before = rss_kib(pid);
    let text = "x".repeat(8 << 20);
    let out = m
        .execute("echo", op("echo").kwarg("text", json!(text)))
        .await
        .unwrap();
    assert_eq!(out.value["text"].as_str().map(str::len), Some(8 << 20));
    let peak = rss_kib(pid);
    let code = status_kib(pid, "RssFile:");
    assert!(peak > before + 6 * 1024, "{before} kB, then {peak} kB");
    // Idle for a second (twice at most, counting the spell the call started), the worker gives
    // its free memory and its pooled buffers back. Polled, with a generous bound.
    let limit = Instant::now() + Duration::from_secs(20);
    let mut now = peak;
    while now > peak - 6 * 1024 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = rss_kib(pid);
    }
    assert!(
        now <= peak - 6 * 1024,
        "{before} kB before, {peak} kB after the call, {now} kB idle"
    );
    // It also unmaps most of its code (resident from files), which the next call maps again.
    let mut idle_code = status_kib(pid, "RssFile:");
    while idle_code > code / 2 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle_code = status_kib(pid, "RssFile:");
    }
    assert!(
        idle_code <= code / 2,
        "{code} kB of file pages after the calls, {idle_code} kB idle"
    );
    let out = m
        .execute("echo", op("echo").kwarg("after", json!("idle")))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"after": "idle"}));
    let again = status_kib(pid, "RssFile:");
    assert!(
        again > idle_code,
        "{idle_code} kB idle, {again} kB after a call"
    );
    m.unload_all().await;
}
