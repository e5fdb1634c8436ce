//! The real system monitor on this machine: RAM from /proc, and GPUs through NVML where the
//! NVIDIA driver is installed (elsewhere: no GPUs, not an error).

mod common;

use std::sync::Arc;

use cjm_host::{ErrorCategory, PluginManager, SafetyScheduler};
use common::Scratch;
use serde_json::json;

/// The test worker; `CJM_TEST_WORKER` overrides it when the binary was copied elsewhere.
fn worker() -> String {
    std::env::var("CJM_TEST_WORKER").unwrap_or_else(|_| common::worker_bin().to_owned())
}

fn manifest(s: &Scratch, name: &str, resources: serde_json::Value) {
    s.worker_manifest(name, json!({ "command": worker(), "resources": resources }));
}

#[tokio::test]
async fn the_real_monitor_reads_ram_and_admits_by_it() {
    let s = Scratch::new();
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .scheduler(Arc::new(SafetyScheduler::new().evict(false)))
        .build()
        .expect("manager");
    let snap = m.system_snapshot().await;
    eprintln!(
        "snapshot: {}",
        serde_json::to_string_pretty(&snap).unwrap_or_default()
    );
    assert!(snap.ram_total_mb > 0);
    assert!(snap.ram_available_mb > 0 && snap.ram_available_mb <= snap.ram_total_mb);
    assert!((0.0..=100.0).contains(&snap.cpu_percent));
    for g in &snap.gpus {
        assert!(g.total_mb > 0 && g.free_mb <= g.total_mb, "{g:?}");
    }

    manifest(&s, "small", json!({ "min_system_ram_mb": 1 }));
    manifest(
        &s,
        "too-big",
        json!({ "min_system_ram_mb": snap.ram_total_mb * 4 }),
    );
    m.discover();
    m.load("small", None).await.expect("1 MB of RAM fits");
    let e = m.load("too-big", None).await.expect_err("4 × RAM does not");
    assert_eq!(e.category, ErrorCategory::Resource);
    let short = &e.details.resources[0];
    assert_eq!(short.resource, "system_ram_mb");
    assert_eq!(short.needed, (snap.ram_total_mb * 4) as f64);
    assert!(short.available > 0.0 && short.available <= snap.ram_total_mb as f64);

    // On a machine with NVIDIA GPUs: placement on a real GPU, and the worker sees only it.
    if let Some(gpu) = snap.gpus.first() {
        manifest(
            &s,
            "gpu",
            json!({ "requires_gpu": true, "min_gpu_vram_mb": 1 }),
        );
        m.discover();
        m.load("gpu", None).await.expect("1 MB of VRAM fits");
        let usage = m.resource_usage("gpu").await.expect("usage");
        eprintln!("placed: {usage:?} (first GPU: {} {})", gpu.index, gpu.name);
        assert!(usage.gpu.is_some());
        let pid = m.pid("gpu").expect("pid");
        let env = std::fs::read_to_string(format!("/proc/{pid}/environ")).unwrap_or_default();
        let visible = env
            .split('\0')
            .find_map(|kv| kv.strip_prefix("CUDA_VISIBLE_DEVICES="))
            .map(str::to_owned);
        eprintln!("worker CUDA_VISIBLE_DEVICES={visible:?}");
        assert_eq!(visible, usage.gpu.map(|g| g.to_string()));
    }
    m.unload_all().await;
}
