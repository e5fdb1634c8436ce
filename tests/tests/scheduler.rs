//! Resource scheduling with a fake monitor (deterministic readings) and real test workers:
//! admission, refusal, queueing, eviction, per-GPU placement, the reservation ledger, and the
//! sync, async and streaming paths.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cjm_host::testing::FakeMonitor;
use cjm_host::{
    BlockingPluginManager, Call, CallContext, CancellationToken, ErrorCategory, GpuReading,
    PluginError, PluginManager, QueueScheduler, SafetyScheduler, Scheduler,
};
use common::Scratch;
use futures::StreamExt;
use serde_json::{json, Value};

fn builder(
    s: &Scratch,
    sched: Arc<dyn Scheduler>,
    mon: &Arc<FakeMonitor>,
) -> cjm_host::ManagerBuilder {
    PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .scheduler(sched)
        .monitor(mon.clone())
}

fn manager(s: &Scratch, sched: Arc<dyn Scheduler>, mon: &Arc<FakeMonitor>) -> PluginManager {
    builder(s, sched, mon).build().expect("manager")
}

/// A test-worker plugin declaring `vram` MB of VRAM (a GPU plugin when `Some`) and `ram` MB
/// of RAM.
fn plugin(s: &Scratch, name: &str, vram: Option<u64>, ram: Option<u64>) {
    let mut r = serde_json::Map::new();
    if let Some(v) = vram {
        r.insert("requires_gpu".into(), json!(true));
        r.insert("min_gpu_vram_mb".into(), json!(v));
    }
    if let Some(v) = ram {
        r.insert("min_system_ram_mb".into(), json!(v));
    }
    s.worker_manifest(name, json!({ "resources": Value::Object(r) }));
}

fn one_gpu(free: u64) -> Arc<FakeMonitor> {
    Arc::new(FakeMonitor::with(
        64_000,
        32_000,
        vec![GpuReading::new(0, 16_000, free)],
    ))
}

fn echo() -> Call {
    Call::new(vec![json!("echo")])
}

/// The worker's `CUDA_VISIBLE_DEVICES`, from its environment.
fn visible_devices(m: &PluginManager, name: &str) -> Option<String> {
    let pid = m.pid(name)?;
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("CUDA_VISIBLE_DEVICES="))
        .map(str::to_owned)
}

fn shortfall(e: &PluginError, resource: &str) -> (f64, f64) {
    let s = e
        .details
        .resources
        .iter()
        .find(|s| s.resource == resource)
        .unwrap_or_else(|| panic!("no {resource} shortfall in {e:?}"));
    (s.needed, s.available)
}

#[tokio::test]
async fn safety_allows_what_fits_and_places_the_worker_on_the_gpu() {
    let s = Scratch::new();
    plugin(&s, "fits", Some(4000), Some(1000));
    let mon = one_gpu(8000);
    let m = manager(&s, Arc::new(SafetyScheduler::new()), &mon);
    m.load("fits", None).await.expect("load");
    let out = m.execute("fits", echo()).await.expect("call");
    assert!(out.value.is_object());
    assert_eq!(visible_devices(&m, "fits").as_deref(), Some("0"));
    let r = m.reservations();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].gpu, r[0].vram_mb, r[0].ram_mb), (Some(0), 4000, 1000));
    let usage = m.resource_usage("fits").await.expect("usage");
    assert_eq!(usage.gpu, Some(0));
    assert_eq!(m.system_snapshot().await.gpus[0].free_mb, 8000);
    m.unload("fits").await.expect("unload");
    assert!(
        m.reservations().is_empty(),
        "unload releases the reservation"
    );
    m.unload_all().await;
}

#[tokio::test]
async fn safety_refuses_with_what_was_needed_and_available() {
    let s = Scratch::new();
    plugin(&s, "huge", Some(10_000), None);
    plugin(&s, "ok", Some(4000), None);
    plugin(&s, "ram", None, Some(40_000));
    let mon = one_gpu(8000);
    let m = manager(&s, Arc::new(SafetyScheduler::new()), &mon);

    // At load: the worker never starts.
    let e = m.load("huge", None).await.expect_err("does not fit");
    assert_eq!(e.category, ErrorCategory::Resource);
    assert_eq!(shortfall(&e, "gpu_vram_mb"), (10_000.0, 8000.0));
    assert!(m.loaded().is_empty());
    assert!(
        m.reservations().is_empty(),
        "a refused load reserves nothing"
    );
    let e = m.load("ram", None).await.expect_err("RAM does not fit");
    assert_eq!(shortfall(&e, "system_ram_mb"), (40_000.0, 32_000.0));

    // At call time: something outside cjm took the GPU's memory.
    m.load("ok", None).await.expect("load");
    mon.update(|s| s.gpus[0].free_mb = 1000);
    let e = m.execute("ok", echo()).await.expect_err("refused");
    assert_eq!(e.category, ErrorCategory::Resource);
    assert_eq!(shortfall(&e, "gpu_vram_mb"), (4000.0, 1000.0));
    assert!(
        e.message.contains("`ok` needs 4000 MB of VRAM"),
        "{}",
        e.message
    );
    // Once the plugin's own worker holds the memory, it counts towards its minimum.
    let pid = m.pid("ok").expect("pid");
    mon.update(|s| {
        s.gpus[0].processes = vec![cjm_host::GpuProcess { pid, used_mb: 3500 }];
    });
    m.execute("ok", echo())
        .await
        .expect("its own 3500 MB + 1000 free fit");
    m.unload_all().await;
}

#[test]
fn the_blocking_manager_is_admitted_the_same_way() {
    let s = Scratch::new();
    plugin(&s, "p", Some(4000), None);
    let mon = one_gpu(8000);
    let m = BlockingPluginManager::new(builder(&s, Arc::new(SafetyScheduler::new()), &mon))
        .expect("manager");
    m.load("p", None).expect("load");
    mon.update(|s| s.gpus[0].free_mb = 10);
    let e = m.execute("p", echo()).expect_err("refused");
    assert_eq!(e.category, ErrorCategory::Resource);
    mon.update(|s| s.gpus[0].free_mb = 8000);
    m.execute("p", echo()).expect("admitted");
    m.unload_all().expect("unload");
}

#[tokio::test]
async fn the_streaming_path_is_admitted_too() {
    let s = Scratch::new();
    plugin(&s, "st", Some(4000), None);
    let mon = one_gpu(8000);
    let m = manager(&s, Arc::new(SafetyScheduler::new()), &mon);
    m.load("st", None).await.expect("load");
    mon.update(|s| s.gpus[0].free_mb = 10);
    let e = match m.execute_stream("st", echo().kwarg("n", json!(2))).await {
        Err(e) => e,
        Ok(_) => panic!("the stream was admitted"),
    };
    assert_eq!(shortfall(&e, "gpu_vram_mb"), (4000.0, 10.0));
    mon.update(|s| s.gpus[0].free_mb = 8000);
    let items: Vec<_> = m
        .execute_stream("st", echo().kwarg("n", json!(2)))
        .await
        .expect("admitted")
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    m.unload_all().await;
}

#[tokio::test]
async fn queue_waits_until_it_fits() {
    let s = Scratch::new();
    plugin(&s, "q", Some(4000), None);
    let mon = one_gpu(8000);
    // Long poll: what wakes the waiter is the monitor's change, not the clock.
    let queue = Arc::new(QueueScheduler::new(
        Duration::from_secs(600),
        Duration::from_secs(600),
    ));
    let m = manager(&s, queue.clone(), &mon);
    m.load("q", None).await.expect("load");
    mon.update(|s| s.gpus[0].free_mb = 0);
    let mut queued = queue.watch_queued();

    let m2 = m.clone();
    let call = tokio::spawn(async move { m2.execute("q", echo()).await });
    queued.wait_for(|&n| n == 1).await.expect("queued");
    // Streams queue the same way.
    let m3 = m.clone();
    let stream = tokio::spawn(async move {
        match m3.execute_stream("q", echo().kwarg("n", json!(3))).await {
            Ok(s) => Ok(s.collect::<Vec<_>>().await.len()),
            Err(e) => Err(e),
        }
    });
    queued.wait_for(|&n| n == 2).await.expect("queued");
    assert!(!call.is_finished());

    mon.update(|s| s.gpus[0].free_mb = 8000);
    call.await.expect("task").expect("admitted after waiting");
    assert_eq!(stream.await.expect("task").expect("admitted"), 3);
    assert_eq!(queue.queued(), 0);
    m.unload_all().await;
}

#[tokio::test]
async fn queue_gives_up_after_its_timeout() {
    let s = Scratch::new();
    plugin(&s, "q", Some(4000), None);
    let mon = one_gpu(8000);
    let queue = Arc::new(QueueScheduler::new(
        Duration::from_millis(50),
        Duration::from_millis(10),
    ));
    let m = manager(&s, queue.clone(), &mon);
    m.load("q", None).await.expect("load");
    mon.update(|s| s.gpus[0].free_mb = 100);
    let e = m.execute("q", echo()).await.expect_err("timed out");
    assert_eq!(e.category, ErrorCategory::Resource);
    assert!(e.retriable);
    assert!(e.message.contains("waited"), "{}", e.message);
    assert_eq!(shortfall(&e, "gpu_vram_mb"), (4000.0, 100.0));
    assert_eq!(queue.queued(), 0);
    m.unload_all().await;
}

#[tokio::test]
async fn cancelling_a_queued_call_ends_its_wait() {
    let s = Scratch::new();
    plugin(&s, "q", Some(4000), None);
    let mon = one_gpu(8000);
    let queue = Arc::new(QueueScheduler::new(
        Duration::from_secs(600),
        Duration::from_secs(600),
    ));
    let m = manager(&s, queue.clone(), &mon);
    m.load("q", None).await.expect("load");
    mon.update(|s| s.gpus[0].free_mb = 0);
    let token = CancellationToken::new();
    let call = echo().with_ctx(CallContext::new().with_cancel(token.clone()));
    let m2 = m.clone();
    let task = tokio::spawn(async move { m2.execute("q", call).await });
    queue
        .watch_queued()
        .wait_for(|&n| n == 1)
        .await
        .expect("queued");
    token.cancel();
    let e = task.await.expect("task").expect_err("cancelled");
    assert_eq!(e.category, ErrorCategory::Cancelled);
    assert_eq!(queue.queued(), 0);
    m.unload_all().await;
}

#[tokio::test]
async fn eviction_unloads_the_least_recently_used_idle_plugin() {
    let s = Scratch::new();
    plugin(&s, "old", Some(4000), None);
    plugin(&s, "recent", Some(4000), None);
    plugin(&s, "new", Some(4000), None);
    let mon = one_gpu(10_000);
    let m = manager(&s, Arc::new(SafetyScheduler::new()), &mon);
    m.load("old", None).await.expect("load");
    m.load("recent", None).await.expect("load");
    // `old` was never called; `recent` was.
    m.execute("recent", echo()).await.expect("call");
    let old_pid = m.pid("old").expect("pid");

    // 10 000 - 2 × 4000 reserved = 2000 free: one must go.
    m.load("new", None).await.expect("load after eviction");
    assert_eq!(m.loaded(), ["new", "recent"]);
    assert!(
        common::wait_gone(&[old_pid], Duration::from_secs(10)).is_empty(),
        "the evicted worker is gone"
    );
    let names: Vec<String> = m.reservations().into_iter().map(|r| r.plugin).collect();
    assert_eq!(names, ["new", "recent"]);
    m.unload_all().await;
}

#[tokio::test]
async fn eviction_skips_busy_plugins_and_says_when_nothing_can_free_enough() {
    let s = Scratch::new();
    plugin(&s, "a", Some(4000), None);
    plugin(&s, "b", Some(4000), None);
    plugin(&s, "c", Some(4000), None);
    plugin(&s, "d", Some(9000), None);
    let mon = one_gpu(10_000);
    let m = manager(&s, Arc::new(SafetyScheduler::new()), &mon);
    m.load("a", None).await.expect("load");
    m.load("b", None).await.expect("load");
    m.execute("b", echo()).await.expect("call");
    // `a` is busy from now on: its stream's call is in flight until the stream is dropped.
    // Its last call is also the most recent (or tied with b's, and `a` sorts first).
    let busy = m
        .execute_stream(
            "a",
            echo()
                .kwarg("n", json!(1_000_000))
                .kwarg("delay_ms", json!(1000)),
        )
        .await
        .expect("stream");
    assert_eq!(m.state("a"), Some(cjm_host::PluginState::Busy));

    // Neither b alone (2000 + 4000) nor anything else can make 9000: nothing is evicted.
    let e = m.load("d", None).await.expect_err("cannot fit");
    assert_eq!(e.category, ErrorCategory::Resource);
    assert!(e.message.contains("could not free enough"), "{}", e.message);
    assert_eq!(m.loaded(), ["a", "b"]);

    // c fits once the idle b goes; the busy a stays.
    m.load("c", None).await.expect("load after evicting b");
    assert_eq!(m.loaded(), ["a", "c"]);
    drop(busy);
    m.unload_all().await;
}

#[tokio::test]
async fn placement_is_per_gpu_not_the_sum() {
    let s = Scratch::new();
    plugin(&s, "mid", Some(6000), None);
    plugin(&s, "big", Some(15_000), None);
    plugin(&s, "spread", Some(9000), None);
    let mon = Arc::new(FakeMonitor::with(
        64_000,
        32_000,
        vec![
            GpuReading::new(0, 8000, 5000),
            GpuReading::new(1, 24_000, 20_000),
            GpuReading::new(2, 8000, 7000),
        ],
    ));
    let m = manager(&s, Arc::new(SafetyScheduler::new().evict(false)), &mon);
    // Best fit: the smallest GPU that holds it.
    m.load("mid", None).await.expect("load");
    assert_eq!(visible_devices(&m, "mid").as_deref(), Some("2"));
    m.load("big", None).await.expect("load");
    assert_eq!(visible_devices(&m, "big").as_deref(), Some("1"));
    // Free per GPU is now 5000, 5000 and 1000: 11 000 in all, but 9000 fits on none.
    let e = m
        .load("spread", None)
        .await
        .expect_err("no single GPU has 9000");
    assert_eq!(shortfall(&e, "gpu_vram_mb"), (9000.0, 5000.0));
    // Calls are checked against their own GPU: GPU 0 filling up does not matter to `big`.
    mon.update(|s| s.gpus[0].free_mb = 0);
    m.execute("big", echo()).await.expect("GPU 1 is fine");
    mon.update(|s| s.gpus[1].free_mb = 100);
    let e = m.execute("big", echo()).await.expect_err("GPU 1 is full");
    assert_eq!(shortfall(&e, "gpu_vram_mb"), (15_000.0, 100.0));
    m.unload_all().await;
}

#[tokio::test]
async fn the_ledger_prevents_double_booking() {
    let s = Scratch::new();
    plugin(&s, "x", Some(6000), None);
    plugin(&s, "y", Some(6000), None);
    let mon = one_gpu(8000);
    let m = manager(&s, Arc::new(SafetyScheduler::new().evict(false)), &mon);
    // Both loads at once: the readings show 8000 free to each, but only one gets it.
    let (rx, ry) = tokio::join!(m.load("x", None), m.load("y", None));
    let (ok, refused) = match (rx, ry) {
        (Ok(()), Err(e)) => ("x", e),
        (Err(e), Ok(())) => ("y", e),
        other => panic!("exactly one load must win: {other:?}"),
    };
    assert_eq!(m.loaded(), [ok]);
    assert_eq!(shortfall(&refused, "gpu_vram_mb"), (6000.0, 2000.0));
    // The winner's worker now really uses its memory: the readings show it, and the ledger
    // no longer counts it twice.
    let pid = m.pid(ok).expect("pid");
    mon.update(|s| {
        s.gpus[0].free_mb = 2000;
        s.gpus[0].processes = vec![cjm_host::GpuProcess { pid, used_mb: 6000 }];
    });
    m.execute(ok, echo()).await.expect("still admitted");
    let usage = m.resource_usage(ok).await.expect("usage");
    assert_eq!(usage.gpu_memory_mb, [(0, 6000)]);
    let other = if ok == "x" { "y" } else { "x" };
    let e = m.load(other, None).await.expect_err("still no room");
    assert_eq!(shortfall(&e, "gpu_vram_mb"), (6000.0, 2000.0));
    m.unload_all().await;
}
