//! The jobs layer (`cjm-jobs`) with real worker processes: lanes and priorities, cancel in
//! every phase, retries, events, the journal's history after a reopen, and recovery after the
//! host was SIGKILLed with jobs queued and running.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cjm_host::ErrorCategory;
use cjm_jobs::{
    CancelPhase, JobCall, JobError, JobEventKind, JobFilter, JobId, JobOptions, JobState, Jobs,
};
use common::Scratch;
use serde_json::json;

fn sleep(ms: u64) -> JobCall {
    JobCall::new(vec![json!("sleep")]).kwarg("ms", json!(ms))
}

fn pid() -> JobCall {
    JobCall::new(vec![json!("pid")])
}

/// Waits for the first event of `id` that `pred` accepts.
async fn event_of(
    events: &mut cjm_jobs::Subscription,
    id: &JobId,
    pred: impl Fn(&JobEventKind) -> bool,
) -> JobEventKind {
    loop {
        let e = events.next().await.expect("the bus is open");
        if &e.job == id && pred(&e.kind) {
            return e.kind;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_admit_by_priority_and_a_busy_plugin_holds_back_nothing() {
    let s = Scratch::new();
    s.worker_manifest("a", json!({}));
    s.worker_manifest("b", json!({}));
    let m = s.manager();
    m.discover();
    let jobs = Jobs::builder()
        .max_in_flight(2)
        .per_target(1)
        .measure_first(false)
        .open(m)
        .unwrap();
    let mut events = jobs.watch(None);
    // `a` is busy with a1; a2..a4 wait behind it, b1 must not.
    let a1 = jobs
        .submit("a", sleep(400), JobOptions::new())
        .await
        .unwrap();
    event_of(&mut events, &a1, |k| {
        matches!(k, JobEventKind::Started { .. })
    })
    .await;
    let a2 = jobs.submit("a", pid(), JobOptions::new()).await.unwrap();
    let a3 = jobs
        .submit("a", pid(), JobOptions::new().priority(5))
        .await
        .unwrap();
    let a4 = jobs.submit("a", pid(), JobOptions::new()).await.unwrap();
    let b1 = jobs.submit("b", pid(), JobOptions::new()).await.unwrap();
    let done = jobs.wait(&b1).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(jobs.get(&a1).unwrap().state, JobState::Running);
    for id in [&a2, &a3, &a4] {
        assert_eq!(jobs.get(id).unwrap().state, JobState::Queued);
    }
    // Then a3 (priority 5), a2, a4 (arrival order), one at a time on `a`.
    let mut started = Vec::new();
    while started.len() < 3 {
        let e = events.next().await.unwrap();
        if matches!(e.kind, JobEventKind::Started { .. }) && e.job != a1 && e.job != b1 {
            started.push(e.job);
        }
    }
    assert_eq!(started, vec![a3.clone(), a2.clone(), a4.clone()]);
    for id in [&a1, &a2, &a3, &a4] {
        let j = jobs.wait(id).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        assert!(j.finished_ms >= j.started_ms && j.started_ms.unwrap() >= j.submitted_ms);
    }
    let pid_a = jobs.get(&a2).unwrap().result.unwrap();
    assert_eq!(
        jobs.get(&a4).unwrap().result.unwrap(),
        pid_a,
        "one worker for `a`"
    );
    let listed = jobs.list(&JobFilter {
        target: Some("a".into()),
        ..JobFilter::default()
    });
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0].id, a4, "newest first");
    // Unknown plugins are refused at submission.
    let e = jobs
        .submit("nope", pid(), JobOptions::new())
        .await
        .unwrap_err();
    assert_eq!(e, JobError::UnknownTarget("nope".into()));
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_every_phase() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.manager();
    m.discover();
    let jobs = Jobs::builder()
        .cancel_grace(Duration::from_millis(300))
        .open(m.clone())
        .unwrap();
    let mut events = jobs.watch(None);

    // Running, cooperative: the worker's `sleep` honours the cancel. Its progress report
    // shows the call is in the worker.
    let running = jobs
        .submit("w", sleep(60_000), JobOptions::new())
        .await
        .unwrap();
    let p = event_of(&mut events, &running, |k| {
        matches!(k, JobEventKind::Progress { .. })
    })
    .await;
    assert_eq!(
        p,
        JobEventKind::Progress {
            progress: Some(0.25),
            message: Some("sleeping".into())
        }
    );
    assert_eq!(jobs.get(&running).unwrap().progress, Some(0.25));
    // Queued behind it (one lane per plugin): leaves the queue at once, never starts.
    let queued = jobs.submit("w", pid(), JobOptions::new()).await.unwrap();
    assert_eq!(jobs.cancel(&queued).unwrap(), JobState::Cancelled);
    assert_eq!(jobs.get(&queued).unwrap().attempts, 0);
    let pid_before = m.pid("w").unwrap();
    assert_eq!(jobs.cancel(&running).unwrap(), JobState::Running);
    let j = jobs.wait(&running).await.unwrap();
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.cancel_phase, Some(CancelPhase::Cooperative));
    assert_eq!(
        m.pid("w"),
        Some(pid_before),
        "a cooperative cancel keeps the worker"
    );

    // Running, forced: `stubborn` ignores the cancel; after the grace the worker is respawned.
    let stubborn = JobCall::new(vec![json!("stubborn")]).kwarg("ms", json!(60_000));
    let forced = jobs.submit("w", stubborn, JobOptions::new()).await.unwrap();
    // In the worker (it reports progress), then cancelled.
    event_of(&mut events, &forced, |k| {
        matches!(k, JobEventKind::Progress { .. })
    })
    .await;
    jobs.cancel(&forced).unwrap();
    let phases: Vec<CancelPhase> = {
        let mut v = Vec::new();
        while v.len() < 2 {
            if let JobEventKind::Cancelling { phase } = event_of(&mut events, &forced, |k| {
                matches!(k, JobEventKind::Cancelling { .. })
            })
            .await
            {
                v.push(phase);
            }
        }
        v
    };
    assert_eq!(phases, vec![CancelPhase::Cooperative, CancelPhase::Forced]);
    let j = jobs.wait(&forced).await.unwrap();
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.cancel_phase, Some(CancelPhase::Forced));
    let pid_after = m.pid("w").expect("respawned");
    assert_ne!(pid_after, pid_before);
    assert!(common::wait_gone(&[pid_before], Duration::from_secs(10)).is_empty());
    // The lane is free again.
    let next = jobs.submit("w", pid(), JobOptions::new()).await.unwrap();
    let j = jobs.wait(&next).await.unwrap();
    assert_eq!(j.result, Some(json!(pid_after)));
    // Finished jobs stay as they ended.
    assert_eq!(jobs.cancel(&next).unwrap(), JobState::Succeeded);
    let e = jobs
        .cancel(&JobId::parse("00000000000000000000").unwrap())
        .unwrap_err();
    assert!(matches!(e, JobError::NotFound(_)), "{e}");
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_failures_are_retried_and_the_rest_fail_typed() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.manager();
    m.discover();
    let jobs = Jobs::builder()
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .open(m)
        .unwrap();
    let mut events = jobs.watch(None);
    let counter = s.dir.path().join("flaky-count");
    let flaky = JobCall::new(vec![json!("flaky")])
        .kwarg("file", json!(common::path_str(&counter)))
        .kwarg("failures", json!(2));
    let id = jobs
        .submit("w", flaky.clone(), JobOptions::new().retries(2))
        .await
        .unwrap();
    let j = jobs.wait(&id).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(j.result, Some(json!({"attempt": 3})));
    assert_eq!(j.attempts, 3);
    let mut retries = 0;
    while let Some(e) = events.try_next() {
        if e.job == id && matches!(e.kind, JobEventKind::Retrying { .. }) {
            retries += 1;
        }
    }
    assert_eq!(retries, 2);
    // Too few retries: the last error, typed.
    std::fs::remove_file(&counter).unwrap();
    let id = jobs
        .submit("w", flaky, JobOptions::new().retries(1))
        .await
        .unwrap();
    let j = jobs.wait(&id).await.unwrap();
    assert_eq!(j.state, JobState::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.category, ErrorCategory::Transient);
    assert!(e.message.contains("flaky failure 2"), "{e}");
    // Not retriable: one attempt, whatever the budget.
    let id = jobs
        .submit(
            "w",
            JobCall::new(vec![json!("fail")]),
            JobOptions::new().retries(5),
        )
        .await
        .unwrap();
    let j = jobs.wait(&id).await.unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Failed, 1));
    assert_eq!(j.error.unwrap().category, ErrorCategory::UserInput);
    // A deadline already passed fails before starting.
    let id = jobs
        .submit("w", pid(), JobOptions::new().deadline_in(Duration::ZERO))
        .await
        .unwrap();
    let j = jobs.wait(&id).await.unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.error.unwrap().category, ErrorCategory::Timeout);
    // A deadline that passes while the job waits behind a busy plugin fails it then.
    let busy = jobs
        .submit("w", sleep(60_000), JobOptions::new())
        .await
        .unwrap();
    let late = jobs
        .submit(
            "w",
            pid(),
            JobOptions::new().deadline_in(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let j = jobs.wait(&late).await.unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Failed, 0), "{j:?}");
    assert_eq!(j.error.unwrap().category, ErrorCategory::Timeout);
    assert_eq!(jobs.get(&busy).unwrap().state, JobState::Running);
    jobs.cancel(&busy).unwrap();
    jobs.wait(&busy).await.unwrap();
    // An idempotency key returns the same job.
    let a = jobs
        .submit("w", pid(), JobOptions::new().idempotency_key("k"))
        .await
        .unwrap();
    let b = jobs
        .submit("w", pid(), JobOptions::new().idempotency_key("k"))
        .await
        .unwrap();
    assert_eq!(a, b);
    jobs.wait(&a).await.unwrap();
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_with_jobs_queued_and_running_loses_none() {
    let s = Scratch::new();
    s.worker_manifest("slow", json!({}));
    let mut host = Command::new(env!("CARGO_BIN_EXE_jobs-harness"))
        .arg(s.manifests())
        .arg(s.data())
        .arg("104")
        .env("CJM_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the harness host");
    let mut line = String::new();
    BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "RUNNING");
    host.kill().unwrap();
    host.wait().unwrap();

    // A new host on the same data directory: every one of the 104 jobs is accounted for.
    let m = s.manager();
    m.discover();
    let jobs = Jobs::builder()
        .max_in_flight(4)
        .per_target(4)
        .measure_first(false)
        .open(m)
        .unwrap();
    let all = jobs.list(&JobFilter {
        limit: Some(1000),
        ..JobFilter::default()
    });
    assert_eq!(all.len(), 104);
    let count = |st: JobState| all.iter().filter(|j| j.state == st).count();
    // The two running jobs without a key are interrupted; the two with one run again. A
    // watcher may see a job start a moment before its start is durable (the call goes out only
    // after): a job killed in that moment comes back queued, never having reached a worker.
    let lost_start = 2 - count(JobState::Interrupted);
    assert!(count(JobState::Interrupted) <= 2, "{all:?}");
    let interrupted: Vec<_> = all
        .iter()
        .filter(|j| j.state == JobState::Interrupted)
        .collect();
    for j in &interrupted {
        assert!(j.options.idempotency_key.is_none());
        assert_eq!(j.attempts, 1);
    }
    assert_eq!(
        count(JobState::Queued) + count(JobState::Running),
        102 + lost_start
    );
    assert_eq!(count(JobState::Succeeded) + count(JobState::Failed), 0);
    let keyed: Vec<_> = all
        .iter()
        .filter(|j| j.options.idempotency_key.is_some())
        .collect();
    assert_eq!(keyed.len(), 2);
    for j in keyed {
        assert!(!j.state.is_terminal(), "{j:?}");
    }
    // The journal still refuses a second host while this one runs.
    let e = Jobs::open(s.manager()).unwrap_err();
    assert!(e.to_string().contains("another host"), "{e}");
    jobs.shutdown().await;
    drop(jobs);
    // And after a clean shutdown the history reads back the same.
    let jobs = Jobs::builder()
        .max_in_flight(4)
        .per_target(4)
        .measure_first(false)
        .open(s.manager())
        .unwrap();
    let again = jobs.list(&JobFilter {
        limit: Some(1000),
        ..JobFilter::default()
    });
    assert_eq!(again.len(), 104);
    assert_eq!(
        again
            .iter()
            .filter(|j| j.state == JobState::Interrupted)
            .count(),
        6 - lost_start,
        "the 4 running at the clean shutdown are interrupted too"
    );
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_forgets_old_jobs_and_a_broken_journal_refuses_submissions() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.manager();
    m.discover();
    let jobs = Jobs::builder()
        .retention(3, Duration::from_secs(3600))
        .open(m.clone())
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = jobs.submit("w", pid(), JobOptions::new()).await.unwrap();
        jobs.wait(&id).await.unwrap();
        ids.push(id);
    }
    // The three newest finished jobs are kept, in memory and in the journal.
    let kept: Vec<JobId> = jobs
        .list(&JobFilter::default())
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(kept, vec![ids[5].clone(), ids[4].clone(), ids[3].clone()]);
    assert!(jobs.get(&ids[0]).is_none());
    jobs.shutdown().await;
    drop(jobs);
    let jobs = Jobs::builder()
        .retention(3, Duration::from_secs(3600))
        .open(m.clone())
        .unwrap();
    assert_eq!(jobs.list(&JobFilter::default()).len(), 3);

    // The journal's table disappears under it (as a corrupted or foreign-edited file would
    // fail): the next write fails, and from then on submissions are refused, naming why.
    let other = rusqlite::Connection::open(s.data().join("journal.db")).unwrap();
    other.execute_batch("DROP TABLE events").unwrap();
    drop(other);
    // The first submission after the damage may or may not be the one whose write fails.
    let mut refused = None;
    for _ in 0..2 {
        if let Err(e) = jobs.submit("w", pid(), JobOptions::new()).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("submissions are refused once the journal cannot be written");
    assert!(matches!(e, JobError::JournalUnavailable(_)), "{e}");
    assert!(e.to_string().contains("events"), "{e}");
    // Reading still works.
    assert!(jobs.list(&JobFilter::default()).len() >= 3);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composition_passes_results_along_and_stops_at_failures() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    s.worker_manifest("v", json!({}));
    let m = s.manager();
    m.discover();
    let jobs = Jobs::builder().max_in_flight(4).open(m).unwrap();
    let comp: cjm_jobs::Composition = serde_json::from_value(json!({"nodes": {
        "pid":   {"target": "w", "call": {"args": ["pid"]}},
        "echo":  {"target": "v", "call": {"args": ["echo", {"$ref": "pid"}],
                                          "kwargs": {"again": {"$ref": "pid"}}}},
        "deep":  {"target": "w", "call": {"args": ["echo"], "kwargs": {"k": {"$ref": "echo.kwargs.again"}}}},
        "fails": {"target": "v", "call": {"args": ["fail"]}},
        "after": {"target": "w", "call": {"args": ["echo", {"$ref": "fails"}]}},
        "hole":  {"target": "w", "call": {"args": ["echo", {"$ref": "pid.no_such_field"}]}}
    }}))
    .unwrap();
    let out = jobs.run_composition(comp).await.unwrap();
    let pid = out["pid"].result.clone().unwrap();
    assert!(pid.is_u64());
    assert_eq!(
        out["echo"].result,
        Some(json!({"args": [pid], "kwargs": {"again": pid}}))
    );
    assert_eq!(
        out["deep"].result,
        Some(json!({"args": [], "kwargs": {"k": pid}}))
    );
    assert_eq!(out["fails"].state, JobState::Failed);
    assert_eq!(out["after"].state, JobState::Cancelled);
    assert!(out["after"].job.is_none(), "never submitted");
    assert!(out["after"]
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("`fails`"));
    assert_eq!(out["hole"].state, JobState::Failed);
    let e = out["hole"].error.as_ref().unwrap();
    assert_eq!(e.category, ErrorCategory::UserInput);
    assert!(e.message.contains("no_such_field"), "{e}");
    // Each node that ran is an ordinary job.
    let id = out["echo"].job.clone().unwrap();
    assert_eq!(jobs.get(&id).unwrap().target, "v");

    // Checked at submission: nothing runs when the composition is wrong.
    let cyclic: cjm_jobs::Composition = serde_json::from_value(json!({"nodes": {
        "a": {"target": "w", "call": {"args": ["echo", {"$ref": "b"}]}},
        "b": {"target": "w", "call": {"args": ["echo", {"$ref": "a"}]}}
    }}))
    .unwrap();
    let before = jobs.list(&JobFilter::default()).len();
    let e = jobs.run_composition(cyclic).await.unwrap_err();
    assert!(e.to_string().contains("cycle through a, b"), "{e}");
    assert_eq!(jobs.list(&JobFilter::default()).len(), before);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_has_its_own_log_lines_even_on_a_shared_worker() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.manager();
    m.discover();
    // Two jobs at once on one worker, logging interleaved.
    let jobs = Jobs::builder()
        .per_target(2)
        .measure_first(false)
        .open(m.clone())
        .unwrap();
    let say = |word: &str| {
        JobCall::new(vec![json!("log")])
            .kwarg("word", json!(word))
            .kwarg("n", json!(4))
            .kwarg("ms", json!(20))
    };
    let a = jobs
        .submit("w", say("alpha"), JobOptions::new())
        .await
        .unwrap();
    let b = jobs
        .submit("w", say("beta"), JobOptions::new())
        .await
        .unwrap();
    jobs.wait(&a).await.unwrap();
    jobs.wait(&b).await.unwrap();
    // The worker's log is written by the host as lines arrive; the last ones may lag a moment.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let (la, lb) = loop {
        let (la, lb) = (jobs.logs(&a, 100).unwrap(), jobs.logs(&b, 100).unwrap());
        if (la.len() >= 4 && lb.len() >= 4) || std::time::Instant::now() > until {
            break (la, lb);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(la.len(), 4, "{la:?}");
    assert_eq!(lb.len(), 4, "{lb:?}");
    assert!(la.iter().all(|l| l.contains("said alpha")), "{la:?}");
    assert!(lb.iter().all(|l| l.contains("said beta")), "{lb:?}");
    // Both ran on the same worker, at the same time.
    let all = m.logs("w", 1000).unwrap().join("\n");
    let first_beta = all.find("said beta 0").unwrap();
    let last_alpha = all.find("said alpha 3").unwrap();
    assert!(first_beta < last_alpha, "the two jobs overlapped:\n{all}");
    assert_eq!(jobs.logs(&a, 2).unwrap().len(), 2);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_fails_the_job_with_the_workers_last_lines() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.manager_with(cjm_host::SupervisorOptions {
        max_crashes: 2,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        ..cjm_host::SupervisorOptions::default()
    });
    m.discover();
    let jobs = Jobs::builder()
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(100))
        .open(m)
        .unwrap();
    // The worker dies on every attempt; the job is retried until the plugin is given up.
    let die = JobCall::new(vec![json!("exit")]).kwarg("code", json!(7));
    let id = jobs
        .submit("w", die, JobOptions::new().retries(10))
        .await
        .unwrap();
    let j = jobs.wait(&id).await.unwrap();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert!(j.attempts >= 2, "{j:?}");
    let e = j.error.unwrap();
    assert!(e.message.contains("crashed repeatedly"), "{e}");
    assert!(!e.details.last_log_lines.is_empty(), "{e:?}");
    assert!(
        e.details
            .last_log_lines
            .iter()
            .any(|l| l.contains("Starting w")),
        "{:?}",
        e.details.last_log_lines
    );
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_measured_and_admission_uses_them() {
    use cjm_host::testing::FakeMonitor;
    let s = Scratch::new();
    s.worker_manifest("a", json!({}));
    s.worker_manifest("b", json!({}));
    // 500 MB available; the workers' RAM is what the test says it is.
    let mon = std::sync::Arc::new(FakeMonitor::with(16_000, 500, vec![]));
    let m = cjm_host::PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .monitor(mon.clone())
        .build()
        .unwrap();
    m.discover();
    let jobs = Jobs::builder().max_in_flight(4).open(m.clone()).unwrap();
    let mut events = jobs.watch(None);

    // Unmeasured: the first job of `a` runs alone; `b`'s waits although a lane is free.
    let a1 = jobs
        .submit("a", sleep(300), JobOptions::new())
        .await
        .unwrap();
    event_of(&mut events, &a1, |k| {
        matches!(k, JobEventKind::Started { .. })
    })
    .await;
    let b1 = jobs.submit("b", pid(), JobOptions::new()).await.unwrap();
    assert_eq!(jobs.get(&b1).unwrap().state, JobState::Queued);
    jobs.wait(&a1).await.unwrap();
    assert_eq!(jobs.wait(&b1).await.unwrap().state, JobState::Succeeded);
    let profiles = jobs.profiles();
    assert_eq!(profiles.len(), 2, "{profiles:?}");
    let pa = profiles.iter().find(|p| p.target == "a").unwrap();
    assert_eq!(pa.runs, 1);
    assert!(pa.mean_duration_ms >= 250.0, "{pa:?}");

    // `a` now uses 800 MB: its next job measures that.
    mon.set_process_ram(m.pid("a").unwrap(), 800);
    let a2 = jobs.submit("a", pid(), JobOptions::new()).await.unwrap();
    jobs.wait(&a2).await.unwrap();
    let pa = jobs
        .profiles()
        .into_iter()
        .find(|p| p.target == "a")
        .unwrap();
    assert_eq!((pa.runs, pa.peak_ram_mb), (2, 800), "{pa:?}");

    // Its loaded worker already holds those 800 MB: with 500 free, the next job still runs.
    let a3 = jobs.submit("a", pid(), JobOptions::new()).await.unwrap();
    assert_eq!(jobs.wait(&a3).await.unwrap().state, JobState::Succeeded);
    // Unloaded, it needs all 800 and 500 do not fit: `a` waits, `b` is not held back by it.
    m.unload("a").await.unwrap();
    let a4 = jobs.submit("a", pid(), JobOptions::new()).await.unwrap();
    let b2 = jobs.submit("b", pid(), JobOptions::new()).await.unwrap();
    assert_eq!(jobs.wait(&b2).await.unwrap().state, JobState::Succeeded);
    assert_eq!(jobs.get(&a4).unwrap().state, JobState::Queued);
    // When RAM frees up, it runs.
    mon.update(|snap| snap.ram_available_mb = 4000);
    assert_eq!(jobs.wait(&a4).await.unwrap().state, JobState::Succeeded);
    let measured = jobs.profiles();
    jobs.shutdown().await;
    // The profiles are saved in the journal: a restarted host admits with them at once.
    let jobs = Jobs::builder().open(m.clone()).unwrap();
    assert_eq!(jobs.profiles(), measured);
    jobs.shutdown().await;
    m.unload_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_for_memory_is_recognised_and_its_job_retried_once() {
    // A real OOM kill: the worker runs in a memory cgroup of 64 MiB and touches 256 MiB.
    let Some(cg) = common::MemoryCgroup::new(64) else {
        eprintln!("skipped: no writable cgroup v1 memory hierarchy here");
        return;
    };
    let s = Scratch::new();
    s.worker_manifest("w", cg.wrap_worker());
    s.worker_manifest("idle", json!({}));
    let m = s.manager_with(cjm_host::SupervisorOptions {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        ..cjm_host::SupervisorOptions::default()
    });
    m.discover();
    m.load("idle", None).await.unwrap();
    let jobs = Jobs::builder().open(m.clone()).unwrap();
    let mut events = jobs.watch(None);
    // The first attempt is killed; the retry (the marker file exists by then) answers.
    let marker = s.dir.path().join("hogged-once");
    let once = JobCall::new(vec![json!("hog")])
        .kwarg("mb", json!(256))
        .kwarg("file", json!(common::path_str(&marker)));
    let id = jobs
        .submit("w", once, JobOptions::new().retries(0))
        .await
        .unwrap();
    let recovering = event_of(&mut events, &id, |k| {
        matches!(
            k,
            JobEventKind::Recovering { .. } | JobEventKind::Failed { .. }
        )
    })
    .await;
    let JobEventKind::Recovering {
        attempt,
        error,
        evicted,
    } = recovering
    else {
        panic!("expected recovery, got {recovering:?}");
    };
    assert_eq!(attempt, 1);
    assert_eq!(error.category, ErrorCategory::Resource, "{error:?}");
    assert!(error.details.out_of_memory, "{error:?}");
    assert!(error.message.contains("worker out of memory"), "{error}");
    let exit = error.details.exit_status.clone().unwrap_or_default();
    assert!(exit.contains("OOM killer"), "{exit}");
    // The idle plugin was evicted to make room; the worker was respawned.
    assert_eq!(evicted, vec!["idle".to_owned()]);
    assert!(!m.is_loaded("idle"));
    let j = jobs.wait(&id).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(j.result, Some(json!({"hogged": false})));
    assert_eq!(j.attempts, 2);
    // Killed again on the retry: failed with the resource error, whatever the budget left.
    let always = JobCall::new(vec![json!("hog")]).kwarg("mb", json!(256));
    let id = jobs
        .submit("w", always, JobOptions::new().retries(5))
        .await
        .unwrap();
    let j = jobs.wait(&id).await.unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Failed, 2), "{j:?}");
    let e = j.error.unwrap();
    assert_eq!(e.category, ErrorCategory::Resource);
    assert!(e.details.out_of_memory, "{e:?}");
    // A SIGKILL that is not the OOM killer's is a plain crash, not a resource error.
    m.wait_for_state("w", Duration::from_secs(30), |s| {
        s == cjm_host::PluginState::Ready
    })
    .await
    .unwrap();
    let pid = m.pid("w").unwrap();
    let crash = jobs
        .submit("w", sleep(60_000), JobOptions::new())
        .await
        .unwrap();
    // Its progress is read only once the call runs on the worker.
    event_of(&mut events, &crash, |k| {
        matches!(k, JobEventKind::Progress { .. })
    })
    .await;
    common::kill9(pid);
    let j = jobs.wait(&crash).await.unwrap();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    let e = j.error.unwrap();
    assert!(!e.details.out_of_memory, "{e:?}");
    assert_ne!(e.category, ErrorCategory::Resource, "{e:?}");
    jobs.shutdown().await;
    m.unload_all().await;
}
