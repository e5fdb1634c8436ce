//! Figures of the jobs layer (`cjm-jobs`): submit → running on an idle lane, the submission
//! acknowledged once journaled, and no-op jobs per second sustained through the journal.

use std::time::Instant;

use cjm_host::{PluginError, PluginManager};
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

    // One job at a time on an idle lane: the submission's acknowledgement (journaled) and
    // the time until its `started` event.
    let mut events = jobs.watch(None);
    let (mut ack, mut start) = (Vec::new(), Vec::new());
    for i in 0..300 {
        let t = Instant::now();
        let id = jobs
            .submit(target, noop(), JobOptions::new())
            .await
            .map_err(fail)?;
        let acked = t.elapsed();
        loop {
            let e = events.next().await.ok_or_else(|| fail("the bus closed"))?;
            if e.job == id && matches!(e.kind, JobEventKind::Started { .. }) {
                break;
            }
        }
        let started = t.elapsed();
        jobs.wait(&id).await.map_err(fail)?;
        if i >= 50 {
            ack.push(acked.as_secs_f64() * 1e6);
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

    // Throughput: 10 000 no-op jobs over the workers, submitted 64 at a time.
    let t = Instant::now();
    let ids: Vec<Result<_, _>> = futures::stream::iter(0..NOOP_JOBS)
        .map(|i| {
            let jobs = jobs.clone();
            let target = workers[i % workers.len()].clone();
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
    let rate = NOOP_JOBS as f64 / t.elapsed().as_secs_f64();
    f.insert("jobs_noop_per_s".into(), json!(rate));
    f.insert("jobs_noop_per_s_limit".into(), json!(RATE_GOAL));
    jobs.shutdown().await;
    Ok(())
}
