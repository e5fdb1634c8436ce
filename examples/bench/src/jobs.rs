//! Figures of the jobs layer (`cjm-jobs`): submit → running on an idle lane, the submission
//! acknowledged once journaled, and jobs per second sustained through the journal: no-op jobs
//! (plugins in the host's process that do nothing) and echo jobs (real worker processes).

use std::time::Instant;

use std::sync::Arc;

use cjm_host::{Call, Output, Plugin, PluginError, PluginManager};
use cjm_jobs::{JobCall, JobEventKind, JobOptions, Jobs};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::percentile;

/// Goals of issue 15: 200 µs submit → running, 50 µs per journal append, 10 000 jobs/s.
const START_GOAL_US: f64 = 200.0;
const ACK_GOAL_US: f64 = 50.0;
const RATE_GOAL: f64 = 10_000.0;

/// Jobs in the throughput run.
const NOOP_JOBS: usize = 10_000;

fn fail(e: impl std::fmt::Display) -> PluginError {
    PluginError::fatal(e.to_string())
}

/// A plugin in the host's process whose calls wait for a permit each.
struct Gate(tokio::sync::Semaphore);

#[async_trait::async_trait]
impl Plugin for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    async fn initialize(&self, _config: Value) -> Result<(), PluginError> {
        Ok(())
    }
    async fn execute(&self, _call: Call) -> Result<Output, PluginError> {
        let permit = self.0.acquire().await.map_err(fail)?;
        permit.forget();
        Ok(Value::Null.into())
    }
    async fn config_schema(&self) -> Result<Value, PluginError> {
        Ok(json!({}))
    }
}

/// A plugin in the host's process that answers `null` at once.
struct Noop(String);

#[async_trait::async_trait]
impl Plugin for Noop {
    fn name(&self) -> &str {
        &self.0
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    async fn initialize(&self, _config: Value) -> Result<(), PluginError> {
        Ok(())
    }
    async fn execute(&self, _call: Call) -> Result<Output, PluginError> {
        Ok(Value::Null.into())
    }
    async fn config_schema(&self) -> Result<Value, PluginError> {
        Ok(json!({}))
    }
}

fn noop() -> JobCall {
    JobCall::new(vec![json!("echo")])
}

/// Measures on `workers` (loaded echo plugins), with the journal in `dir`.
pub(crate) async fn measure(
    m: &PluginManager,
    workers: &[String],
    dir: &std::path::Path,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    let jobs = Jobs::builder()
        .max_in_flight(workers.len())
        .per_target(1)
        .retention(100_000, std::time::Duration::from_secs(3600))
        .journal(dir.join("journal.db"))
        .open(m.clone())
        .map_err(fail)?;
    let target = workers.first().ok_or_else(|| fail("no worker"))?;

    // Submissions queued behind a busy plugin: each is acknowledged once journaled.
    let gate = Arc::new(Gate(tokio::sync::Semaphore::new(0)));
    m.register_in_process(gate.clone(), "bench", None).await?;
    let first = jobs
        .submit("gate", noop(), JobOptions::new())
        .await
        .map_err(fail)?;
    let mut ack = Vec::new();
    let mut queued = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        let id = jobs
            .submit("gate", noop(), JobOptions::new())
            .await
            .map_err(fail)?;
        if i >= 50 {
            ack.push(t.elapsed().as_secs_f64() * 1e6);
        }
        queued.push(id);
    }
    gate.0.add_permits(queued.len() + 1);
    for id in std::iter::once(first).chain(queued) {
        jobs.wait(&id).await.map_err(fail)?;
    }
    m.unload("gate").await?;

    // One job at a time on an idle lane: the time until its `started` event.
    let mut events = jobs.watch(None);
    let mut start = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        let id = jobs
            .submit(target, noop(), JobOptions::new())
            .await
            .map_err(fail)?;
        loop {
            let e = events.next().await.ok_or_else(|| fail("the bus closed"))?;
            if e.job == id && matches!(e.kind, JobEventKind::Started { .. }) {
                break;
            }
        }
        let started = t.elapsed();
        jobs.wait(&id).await.map_err(fail)?;
        if i >= 50 {
            start.push(started.as_secs_f64() * 1e6);
        }
    }
    drop(events);
    ack.sort_by(f64::total_cmp);
    start.sort_by(f64::total_cmp);
    f.insert(
        "jobs_submit_ack_p50_us".into(),
        json!(percentile(&ack, 0.5)),
    );
    f.insert("jobs_submit_ack_p50_us_limit".into(), json!(ACK_GOAL_US));
    f.insert(
        "jobs_submit_to_running_p50_us".into(),
        json!(percentile(&start, 0.5)),
    );
    f.insert(
        "jobs_submit_to_running_p50_us_limit".into(),
        json!(START_GOAL_US),
    );

    // Throughput: 10 000 no-op calls as jobs over the workers, submitted 64 at a time.
    let rate = throughput(&jobs, workers).await?;
    f.insert("jobs_echo_per_s".into(), json!(rate));

    // The same through plugins that do nothing in the host's process: what the jobs layer
    // and its journal sustain, without the workers' round trips (measured on their own above).
    let mut noops = Vec::new();
    for i in 0..workers.len() {
        let name = format!("noop{i}");
        m.register_in_process(Arc::new(Noop(name.clone())), "bench", None)
            .await?;
        noops.push(name);
    }
    let rate = throughput(&jobs, &noops).await?;
    f.insert("jobs_noop_per_s".into(), json!(rate));
    f.insert("jobs_noop_per_s_limit".into(), json!(RATE_GOAL));
    jobs.shutdown().await;
    for n in &noops {
        m.unload(n).await?;
    }
    many(m, workers, dir, f).await
}

/// Jobs per second: [`NOOP_JOBS`] no-op calls spread over `targets`, 64 submissions at a
/// time, each waited for.
async fn throughput(jobs: &Jobs, targets: &[String]) -> Result<f64, PluginError> {
    let t = Instant::now();
    let ids: Vec<Result<_, _>> = futures::stream::iter(0..NOOP_JOBS)
        .map(|i| {
            let jobs = jobs.clone();
            let target = targets[i % targets.len()].clone();
            async move { jobs.submit(&target, noop(), JobOptions::new()).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for id in ids {
        let id = id.map_err(fail)?;
        let done = jobs.wait(&id).await.map_err(fail)?;
        if done.state != cjm_jobs::JobState::Succeeded {
            return Err(fail(format!("a no-op job ended {}", done.state)));
        }
    }
    Ok(NOOP_JOBS as f64 / t.elapsed().as_secs_f64())
}

/// Jobs in the memory run (`CJM_BENCH_MANY_JOBS` overrides).
const MANY_JOBS: usize = 1_000_000;

/// The host's RSS growth from the first tenth of `MANY_JOBS` no-op jobs to the end, with
/// retention keeping 10 000 finished jobs: memory must stay flat.
async fn many(
    m: &PluginManager,
    workers: &[String],
    dir: &std::path::Path,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    let total: usize = std::env::var("CJM_BENCH_MANY_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MANY_JOBS);
    let jobs = Jobs::builder()
        .max_in_flight(workers.len())
        .per_target(1)
        .measure_first(false)
        .retention(10_000, std::time::Duration::from_secs(3600))
        .journal(dir.join("many.db"))
        .open(m.clone())
        .map_err(fail)?;
    // The buffers kept from the large payloads measured before would be unmapped 30 s after
    // their last use, in the middle of this run: the host's growth would read as a shrink.
    cjm_host::release_kept_buffers();
    let mut rss_tenth = None;
    let t = Instant::now();
    let mut done = futures::stream::iter(0..total)
        .map(|i| {
            let jobs = jobs.clone();
            let target = workers[i % workers.len()].clone();
            async move {
                let id = jobs.submit(&target, noop(), JobOptions::new()).await?;
                match jobs.wait(&id).await {
                    // Retention may forget a finished job before its wait looks: it ended.
                    Ok(_) | Err(cjm_jobs::JobError::NotFound(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(256);
    let mut n = 0usize;
    while let Some(r) = done.next().await {
        r.map_err(fail)?;
        n += 1;
        if n == total / 10 {
            rss_tenth = self_rss_mb();
        }
    }
    drop(done);
    let rate = total as f64 / t.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (rss_tenth, self_rss_mb()) {
        f.insert("jobs_many_rss_growth_mb".into(), json!(b - a));
        f.insert(
            "jobs_many_rss_growth_mb_limit".into(),
            json!(RSS_GROWTH_GOAL_MB),
        );
    }
    f.insert("jobs_many_count".into(), json!(total));
    f.insert("jobs_many_per_s".into(), json!(rate));
    jobs.shutdown().await;
    Ok(())
}

/// "Flat": at most this much growth over the last nine tenths of the run.
const RSS_GROWTH_GOAL_MB: f64 = 5.0;

fn self_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
