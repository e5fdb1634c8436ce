//! A host that submits jobs and then waits to be killed: `jobs-harness MANIFESTS DATA N`
//! submits N `sleep` jobs (one minute each) to the plugin `slow` with 4 lanes, the first two
//! with idempotency keys, prints `RUNNING` once four have started, and sleeps. The recovery
//! test SIGKILLs it there and reopens the journal.

use std::io::Write;
use std::time::Duration;

use cjm_host::PluginManager;
use cjm_jobs::{JobCall, JobEventKind, JobOptions, Jobs};
use serde_json::json;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifests, data, n] = args.as_slice() else {
        eprintln!("usage: jobs-harness MANIFESTS DATA N");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N");
    let manager = PluginManager::builder()
        .search_paths([manifests])
        .data_dir(data)
        .build()
        .expect("manager");
    manager.discover();
    let jobs = Jobs::builder()
        .max_in_flight(4)
        .per_target(4)
        .measure_first(false)
        .open(manager)
        .expect("jobs");
    let mut events = jobs.watch(None);
    for i in 0..n {
        let mut opts = JobOptions::new();
        if i < 2 {
            opts = opts.idempotency_key(format!("key-{i}"));
        }
        let call = JobCall::new(vec![json!("sleep")]).kwarg("ms", json!(60_000));
        jobs.submit("slow", call, opts).await.expect("submit");
    }
    let mut started = 0;
    while started < 4 {
        match events.next().await {
            Some(e) if matches!(e.kind, JobEventKind::Started { .. }) => started += 1,
            Some(_) => {}
            None => std::process::exit(1),
        }
    }
    println!("RUNNING");
    let _ = std::io::stdout().flush();
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
