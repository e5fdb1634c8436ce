//! Issue 13, host side: cancel-safety of loads, calls and streams; deadlines on calls and
//! configuration updates against a stopped worker; the exit status of a worker that dies
//! mid-call.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cjm_host::scheduler::{Admission, Grant, ResourceContext};
use cjm_host::testing::{LoadHook, LoadStage};
use cjm_host::{
    Call, CallOptions, ErrorCategory, PermissiveScheduler, PluginError, PluginManager, PluginState,
    Scheduler, SupervisorOptions,
};
use common::{alive, wait_gone, Scratch};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Notify;

/// A permissive scheduler that counts calls started and not yet finished.
#[derive(Debug, Default)]
struct Counting {
    open: AtomicI64,
}

#[async_trait]
impl Scheduler for Counting {
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError> {
        PermissiveScheduler.admit(request, ctx).await
    }

    fn on_start(&self, _plugin: &str) {
        self.open.fetch_add(1, Ordering::SeqCst);
    }

    fn on_finish(&self, _plugin: &str) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A hook that stops the first load reaching `stage` there (forever) and says so on `reached`.
fn stop_at(stage: LoadStage, reached: Arc<Notify>) -> LoadHook {
    let once = Arc::new(AtomicBool::new(false));
    Arc::new(move |s| {
        let stop = s == stage && !once.swap(true, Ordering::SeqCst);
        let reached = Arc::clone(&reached);
        Box::pin(async move {
            if stop {
                reached.notify_one();
                std::future::pending::<()>().await;
            }
        })
    })
}

/// Worker processes of this test process whose data dir is under `s` (tests run in parallel
/// in one process, each with its own scratch directory).
fn workers_of(s: &Scratch) -> Vec<u32> {
    let exe = common::worker_bin();
    let mark = s.data().display().to_string();
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&env).contains(&mark);
        if ppid == Some(me) && cmd.starts_with(exe.as_bytes()) && ours && alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn manager_with_hook(s: &Scratch, hook: LoadHook) -> PluginManager {
    PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .load_hook(hook)
        .build()
        .expect("manager")
}

/// Loads `name` until the hook stops it, then drops the load future there. Returns the
/// worker processes of `s` that existed just before the drop.
async fn drop_load_at(s: &Scratch, m: &PluginManager, name: &str, reached: &Notify) -> Vec<u32> {
    let mut load = Box::pin(m.load(name, None));
    tokio::select! {
        r = &mut load => panic!("the load should have stopped at the hook: {r:?}"),
        () = reached.notified() => {}
    }
    let workers = workers_of(s);
    drop(load);
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_dropped_after_admission_leaves_no_mark_and_no_reservation() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({"resources": {"min_system_ram_mb": 1}}));
    let reached = Arc::new(Notify::new());
    let m = manager_with_hook(&s, stop_at(LoadStage::Admitted, Arc::clone(&reached)));

    let mut load = Box::pin(m.load("w", None));
    tokio::select! {
        r = &mut load => panic!("the load should have stopped at the hook: {r:?}"),
        () = reached.notified() => {}
    }
    assert_eq!(m.reservations().len(), 1, "admission reserved");
    assert!(matches!(
        m.load("w", None).await,
        Err(e) if e.message.contains("already being loaded")
    ));
    drop(load);

    assert!(m.reservations().is_empty(), "{:?}", m.reservations());
    assert!(workers_of(&s).is_empty());
    // The name is free again: a new load goes through.
    m.load("w", None)
        .await
        .expect("a new load after the dropped one");
    assert_eq!(m.reservations().len(), 1);
    m.unload_all().await;
    assert!(m.reservations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_dropped_after_the_worker_started_stops_the_worker() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({"resources": {"min_system_ram_mb": 1}}));
    let reached = Arc::new(Notify::new());
    let m = manager_with_hook(&s, stop_at(LoadStage::WorkerStarted, Arc::clone(&reached)));

    let started = drop_load_at(&s, &m, "w", &reached).await;
    // The hook ran after the start: the worker exists, nobody holds it but the dropped guard.
    assert!(m.reservations().is_empty(), "{:?}", m.reservations());
    assert_eq!(m.state("w"), None);
    assert_eq!(started.len(), 1, "the worker was started: {started:?}");
    let left = wait_gone(&started, Duration::from_secs(10));
    assert!(left.is_empty(), "worker processes left: {left:?}");

    m.load("w", None)
        .await
        .expect("a new load after the dropped one");
    let pid = m.pid("w").expect("pid");
    m.unload_all().await;
    assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_dropped_while_the_worker_starts_leaves_no_process() {
    let s = Scratch::new();
    let fifo = s.dir.path().join("pid.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg("-m600")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    // A worker that never answers /health: it says its pid, then sleeps.
    s.write(
        "w.json",
        &json!({
            "name": "w", "version": "1.0.0", "category": "test", "command": "/bin/sh",
            "args": ["-c", format!("echo $$ > {}; exec sleep 1000", fifo.display())],
            "startup_timeout_secs": 600,
            "resources": {"min_system_ram_mb": 1},
        })
        .to_string(),
    );
    let m = s.manager();
    let read_pid = tokio::task::spawn_blocking(move || {
        std::fs::read_to_string(&fifo)
            .expect("read the fifo")
            .trim()
            .parse::<u32>()
            .expect("a pid")
    });
    let pid = tokio::select! {
        r = m.load("w", None) => panic!("the load should wait for the worker: {r:?}"),
        pid = read_pid => pid.expect("fifo reader"),
    };
    // The load future is dropped here, in the middle of the worker's start (the worker wrote
    // its pid, so it runs; left alone it would sleep for 1000 s).
    assert!(m.reservations().is_empty(), "{:?}", m.reservations());
    // Dropping the load ends the start at once: the worker is gone long before its 600 s
    // start-up timeout (the bound below only keeps a broken build from hanging the suite).
    assert!(wait_gone(&[pid], Duration::from_secs(30)).is_empty());

    // The name was released: the same plugin, now with a working worker, loads.
    s.worker_manifest("w", json!({}));
    m.discover();
    m.load("w", None).await.expect("load after the dropped one");
    m.unload_all().await;
}

fn counting_manager(s: &Scratch, sched: Arc<Counting>) -> PluginManager {
    PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .scheduler(sched)
        .build()
        .expect("manager")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_is_settled_and_counted_as_cancelled() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({"max_concurrency": 1}));
    let sched = Arc::new(Counting::default());
    let m = counting_manager(&s, Arc::clone(&sched));
    m.load("w", None).await.unwrap();

    let m2 = m.clone();
    let task = tokio::spawn(async move {
        m2.execute(
            "w",
            Call::new(vec![json!("sleep")]).kwarg("ms", json!(60_000)),
        )
        .await
    });
    // Running on the worker: its progress says so.
    while m.progress("w").await.map(|p| p.message).unwrap_or_default() != "sleeping" {
        tokio::task::yield_now().await;
    }
    assert_eq!(m.state("w"), Some(PluginState::Busy));
    // A second call waits for the only slot; dropped there, it leaves nothing behind.
    let m3 = m.clone();
    let waiting = tokio::spawn(async move { m3.execute("w", Call::new(vec![json!("pid")])).await });
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while sched.open.load(Ordering::SeqCst) != 2 {
        assert!(
            std::time::Instant::now() < until,
            "the second call was never admitted"
        );
        tokio::task::yield_now().await;
    }
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(sched.open.load(Ordering::SeqCst), 1);
    assert_eq!(m.stats("w").await.unwrap().in_flight, 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    let st = m.stats("w").await.unwrap();
    assert_eq!(
        (st.calls, st.errors, st.cancelled, st.in_flight),
        (1, 0, 1, 0)
    );
    assert_eq!(sched.open.load(Ordering::SeqCst), 0, "on_finish ran");
    assert_eq!(m.state("w"), Some(PluginState::Ready));
    // Its only slot is free again.
    let out = m
        .execute_with(
            "w",
            Call::new(vec![json!("pid")]),
            CallOptions::new().timeout(Duration::from_secs(10)),
        )
        .await
        .expect("the slot was released");
    assert_eq!(Some(out.value.as_u64().unwrap() as u32), m.pid("w"));
    m.unload_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_is_settled_and_not_a_success() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({"max_concurrency": 1}));
    let sched = Arc::new(Counting::default());
    let m = counting_manager(&s, Arc::clone(&sched));
    m.load("w", None).await.unwrap();

    let mut stream = m
        .execute_stream(
            "w",
            Call::new(vec![])
                .kwarg("n", json!(1000))
                .kwarg("delay_ms", json!(20)),
        )
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), json!({"i": 0}));
    assert_eq!(m.stats("w").await.unwrap().in_flight, 1);
    drop(stream);

    let st = m.stats("w").await.unwrap();
    assert_eq!(
        (st.calls, st.errors, st.cancelled, st.in_flight),
        (1, 0, 1, 0)
    );
    assert_eq!(sched.open.load(Ordering::SeqCst), 0, "on_finish ran");
    // A stream read to its end is a success.
    let all: Vec<_> = m
        .execute_stream("w", Call::new(vec![]).kwarg("n", json!(2)))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(all.len(), 2);
    let st = m.stats("w").await.unwrap();
    assert_eq!((st.calls, st.errors, st.cancelled), (2, 0, 1));
    assert_eq!(sched.open.load(Ordering::SeqCst), 0);
    m.unload_all().await;
}

fn signal(pid: u32, sig: libc::c_int) {
    assert!(
        cjm_sys::proc::is_alive(pid),
        "pid {pid} is gone before signal {sig}"
    );
    cjm_sys::signal::kill(pid, sig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_update_on_a_stopped_worker_times_out() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .config_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.load("w", Some(json!({"greeting": "hi"}))).await.unwrap();
    let pid = m.pid("w").unwrap();
    signal(pid, libc::SIGSTOP);

    let save = m.update_config("w", json!({"greeting": "bye"}));
    let err = tokio::time::timeout(Duration::from_secs(20), save)
        .await
        .expect("the update must not hang")
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Timeout, "{err}");
    assert_eq!(
        m.config("w").unwrap()["greeting"],
        "hi",
        "old config in force"
    );

    signal(pid, libc::SIGCONT);
    m.unload_all().await;
    assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_deadline_on_a_stopped_worker_ends_and_the_plugin_is_not_busy() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .call_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.load("w", None).await.unwrap();
    let pid = m.pid("w").unwrap();
    signal(pid, libc::SIGSTOP);

    let call = m.execute("w", Call::new(vec![json!("pid")]));
    let err = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call must not hang")
        .unwrap_err();
    assert_eq!(err.category, ErrorCategory::Timeout, "{err}");
    assert_eq!(m.state("w"), Some(PluginState::Ready));
    assert_eq!(m.stats("w").await.unwrap().in_flight, 0);

    signal(pid, libc::SIGCONT);
    m.unload_all().await;
    assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_mid_call_reports_its_status_every_time() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({"restart": "always"}));
    let m = s.manager_with(SupervisorOptions {
        max_crashes: 1000,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        ..SupervisorOptions::default()
    });
    m.load("w", None).await.unwrap();
    for round in 0..20 {
        let err = m
            .execute("w", Call::new(vec![json!("exit")]).kwarg("code", json!(7)))
            .await
            .unwrap_err();
        let status = err.details.exit_status.clone().unwrap_or_default();
        assert!(
            status.contains('7'),
            "round {round}: no exit status in {err:?}"
        );
        m.wait_for_state("w", Duration::from_secs(20), |st| st == PluginState::Ready)
            .await
            .unwrap();
    }
    let pid = m.pid("w").unwrap();
    m.unload_all().await;
    assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_save_on_a_stopped_worker_returns_a_timeout() {
    use cjm_registry::{HostCategorySource, PluginRegistry, RegistryError};

    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .config_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.load("w", None).await.unwrap();
    // What the settings page's Save calls: validate, write, apply to the loaded worker.
    let registry = PluginRegistry::new(s.dir.path().join("configs")).unwrap();
    registry
        .register_plugin_manager(
            "test",
            Arc::new(HostCategorySource::new(m.clone(), "test")),
            None,
            true,
        )
        .await
        .unwrap();
    let pid = m.pid("w").unwrap();
    signal(pid, libc::SIGSTOP);

    let mut config = cjm_registry::Config::new();
    config.insert("greeting".into(), json!("bye"));
    let save = registry.save_and_apply_plugin_config("test.w", &config);
    let err = tokio::time::timeout(Duration::from_secs(20), save)
        .await
        .expect("Save must not hang")
        .unwrap_err();
    match err {
        RegistryError::Apply { source, .. } => {
            assert_eq!(source.category, ErrorCategory::Timeout, "{source}")
        }
        other => panic!("expected an apply error, got {other}"),
    }

    signal(pid, libc::SIGCONT);
    m.unload_all().await;
    assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_mid_stream_reports_its_status() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({"max_concurrency": 2}));
    let m = s.manager();
    m.load("w", None).await.unwrap();
    let pid = m.pid("w").unwrap();
    let mut stream = m
        .execute_stream(
            "w",
            Call::new(vec![])
                .kwarg("n", json!(1000))
                .kwarg("delay_ms", json!(20)),
        )
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), json!({"i": 0}));
    // The worker exits while the stream runs.
    let exit = m
        .execute("w", Call::new(vec![json!("exit")]).kwarg("code", json!(7)))
        .await
        .unwrap_err();
    assert!(exit.details.exit_status.unwrap_or_default().contains('7'));
    let err = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended cleanly although its worker died"),
        }
    };
    let status = err.details.exit_status.clone().unwrap_or_default();
    assert!(status.contains('7'), "no exit status in {err:?}");
    drop(stream);
    m.unload_all().await;
    assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
}
