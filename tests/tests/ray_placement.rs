//! Placement on a real Ray cluster (`execution_mode: ray`).
//!
//! The test starts a real Ray head on loopback (`ray start --head --block` from the venv
//! `cargo xtask test` makes, `target/py312-ray`, or `CJM_TEST_RAY_PYTHON`; a head that exits or
//! stays silent is stopped and started again on fresh ports, and if none answers the failure
//! shows what each attempt printed and the dashboard's log). It places the test
//! worker on it as a Ray job through the job server's REST API, then calls it, streams from it,
//! kills it (Ray reports the job failed, and the supervisor restarts it as a new job) and
//! unloads it. It checks through Ray's own API that no job is left, and that every process the
//! head started is gone after it stops.
//!
//! Without the venv this test fails with a message saying so: it never skips silently.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cjm_host::{Call, ErrorCategory, PluginManager, PluginState, RayCluster};
use common::Scratch;
use serde_json::{json, Value};

fn ray_bin() -> PathBuf {
    let python = std::env::var_os("CJM_TEST_RAY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py312-ray/bin/python")
        });
    let ray = python.with_file_name("ray");
    assert!(
        ray.is_file(),
        "no Ray at {}: run `cargo xtask test` (it creates the venv with ray[default]) or set \
         CJM_TEST_RAY_PYTHON to the venv's python",
        ray.display()
    );
    ray
}

/// A port nothing listens on, picked between Ray's worker ports (10002–19999 by default) and
/// the kernel's ephemeral ones (32768 and up on Linux), so that neither a Ray worker nor any
/// outgoing connection takes it before the head binds it. Each pick moves on from the last.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(COUNT)) as u16;
    for _ in 0..COUNT {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) % COUNT;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port on 127.0.0.1 between {FIRST} and {}",
        FIRST + COUNT - 1
    )
}

/// A blocking HTTP/1.0 request to the job server; (status, JSON body).
fn http(port: u16, method: &str, path: &str) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// How many times a head is started before the test gives up, and how long each may take to
/// answer. A head can still lose a port picked by [`free_port`] to another process between the
/// pick and its bind (`ray start` then exits); a fresh start with fresh ports is the remedy.
const HEAD_ATTEMPTS: u32 = 3;
const HEAD_READY_WITHIN: Duration = Duration::from_secs(180);

/// A Ray head on loopback, stopped with everything it started when dropped.
struct RayHead {
    child: Child,
    dashboard: u16,
    temp: PathBuf,
    log: PathBuf,
}

impl RayHead {
    /// Starts a head and waits for its job server, retrying with fresh ports; on failure the
    /// panic carries each attempt's account (the head's output and the dashboard's log).
    fn start() -> Self {
        let mut failures = Vec::new();
        for attempt in 1..=HEAD_ATTEMPTS {
            match Self::try_start(attempt) {
                Ok(head) => return head,
                Err(why) => {
                    eprintln!("Ray head, attempt {attempt} of {HEAD_ATTEMPTS}: {why}");
                    failures.push(format!("attempt {attempt}: {why}"));
                }
            }
        }
        panic!(
            "the Ray head's job server never answered:\n{}",
            failures.join("\n\n")
        );
    }

    fn try_start(attempt: u32) -> Result<Self, String> {
        let ray = ray_bin();
        // Ray puts Unix sockets under its temp dir: keep the path short.
        let temp = PathBuf::from(format!("/tmp/cjm-ray-{}-{attempt}", std::process::id()));
        let _ = std::fs::remove_dir_all(&temp);
        let log = temp.with_extension("log");
        let out = std::fs::File::create(&log).expect("create the Ray head's log");
        let err = out.try_clone().expect("share the Ray head's log");
        let dashboard = free_port();
        let mut cmd = Command::new(&ray);
        cmd.args(["start", "--head", "--block", "--disable-usage-stats"])
            .arg(format!("--port={}", free_port()))
            .arg("--node-ip-address=127.0.0.1")
            .arg("--dashboard-host=127.0.0.1")
            .arg(format!("--dashboard-port={dashboard}"))
            .arg(format!("--ray-client-server-port={}", free_port()))
            .arg(format!("--dashboard-agent-listen-port={}", free_port()))
            // One GPU as Ray counts them (a logical resource: this machine need not have one),
            // so that placement by GPU is decided by Ray as on a real GPU node.
            .args(["--num-cpus=3", "--num-gpus=1", "--include-dashboard=true"])
            .arg("--object-store-memory=100000000")
            .arg(format!("--temp-dir={}", temp.display()))
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().expect("start `ray start --head`");
        let mut head = Self {
            child,
            dashboard,
            temp,
            log,
        };
        // Ready when the job server answers (Ray has no readiness signal but its API).
        let started = Instant::now();
        loop {
            if let Some((200, v)) = http(dashboard, "GET", "/api/version") {
                assert!(v["ray_version"].is_string(), "{v}");
                return Ok(head);
            }
            if let Ok(Some(status)) = head.child.try_wait() {
                return Err(format!(
                    "`ray start` ended ({status}) before its job server answered\n{}",
                    head.account()
                ));
            }
            if started.elapsed() > HEAD_READY_WITHIN {
                return Err(format!(
                    "no answer on port {dashboard} within {} s\n{}",
                    HEAD_READY_WITHIN.as_secs(),
                    head.account()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines of the head's own output and of its dashboard's log.
    fn account(&self) -> String {
        let tail = |p: &std::path::Path| {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let dashboard = self.temp.join("session_latest/logs/dashboard.log");
        format!(
            "--- {}:\n{}\n--- {}:\n{}",
            self.log.display(),
            tail(&self.log),
            dashboard.display(),
            tail(&dashboard)
        )
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.dashboard)
    }

    /// Waits (up to a minute) until `n` jobs of cjm are on the cluster; fails with `what`.
    fn wait_for_jobs(&self, n: usize, what: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        while self.cjm_jobs().len() != n {
            assert!(Instant::now() < until, "{what}: {:?}", self.cjm_jobs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ray's jobs started by cjm: (submission id, status).
    fn cjm_jobs(&self) -> Vec<(String, String)> {
        let (status, v) = http(self.dashboard, "GET", "/api/jobs/").expect("list jobs");
        assert_eq!(status, 200, "{v}");
        v.as_array()
            .expect("a job list")
            .iter()
            .filter(|j| j["metadata"]["cjm_plugin"].is_string())
            .map(|j| {
                (
                    j["submission_id"].as_str().unwrap_or_default().to_owned(),
                    j["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for RayHead {
    fn drop(&mut self) {
        let pid = self.child.id();
        let family = cjm_sys::proc::descendants(pid);
        // `ray start --block` stops every process it started on SIGTERM.
        cjm_sys::signal::kill(pid, libc::SIGTERM);
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        cjm_sys::signal::kill_group(pid, libc::SIGKILL);
        let _ = self.child.wait();
        let mut left = common::wait_gone(&family, Duration::from_secs(30));
        for p in &left {
            cjm_sys::signal::kill(*p, libc::SIGKILL);
        }
        left = common::wait_gone(&left, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.temp);
        let _ = std::fs::remove_file(&self.log);
        if !std::thread::panicking() {
            assert!(left.is_empty(), "Ray left processes behind: {left:?}");
        }
    }
}

/// True when `pid` descends from `ancestor`.
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        match cjm_sys::proc::stat(p) {
            Some(s) if s.ppid == ancestor => return true,
            Some(s) if s.ppid > 1 => p = s.ppid,
            _ => return false,
        }
    }
    false
}

fn pid_of(v: &Value) -> u32 {
    v.as_u64().expect("a pid") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_placed_on_ray_is_called_restarted_and_leaves_nothing_on_the_cluster() {
    let head = RayHead::start();
    let s = Scratch::new();
    s.worker_manifest(
        "onray",
        json!({"execution_mode": "ray", "startup_timeout_secs": 180,
               "env_vars": {"CJM_RAY_TEST": "from-the-registration"},
               "ray": {"num_cpus": 1, "runtime_env": {"env_vars": {"FROM_RAY": "runtime-env"}}}}),
    );
    // A GPU plugin (its manifest's `requires_gpu`), and one that needs more GPUs than the
    // cluster has.
    s.worker_manifest(
        "ongpu",
        json!({"execution_mode": "ray", "startup_timeout_secs": 180,
               "resources": {"requires_gpu": true}, "ray": {"num_cpus": 1}}),
    );
    s.worker_manifest(
        "twogpus",
        json!({"execution_mode": "ray", "startup_timeout_secs": 8,
               "ray": {"num_cpus": 1, "num_gpus": 2}}),
    );
    s.write(
        "broken.json",
        &json!({"name": "broken", "version": "1.0.0", "category": "test",
                "command": "/nonexistent/cjm-worker", "execution_mode": "ray",
                "startup_timeout_secs": 180})
        .to_string(),
    );
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .ray(RayCluster::new(head.url()))
        .build()
        .unwrap();
    assert_eq!(m.discover(), 4, "{:?}", m.invalid_manifests());

    // Placed as a Ray job: the worker runs under the Ray head, not under this host.
    m.load("onray", None).await.expect("load on Ray");
    assert_eq!(m.pid("onray"), None);
    let pid = pid_of(
        &m.execute("onray", Call::new(vec![json!("pid")]))
            .await
            .unwrap()
            .value,
    );
    assert!(
        descends_from(pid, head.child.id()),
        "worker {pid} does not run under the Ray head"
    );
    let jobs = head.cjm_jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].1, "RUNNING", "{jobs:?}");
    // The environment came through the registration, the runtime_env through Ray.
    let env = |name: &str| Call::new(vec![json!("env")]).kwarg("name", json!(name));
    let v = m.execute("onray", env("CJM_RAY_TEST")).await.unwrap().value;
    assert_eq!(v, json!("from-the-registration"));
    let v = m.execute("onray", env("FROM_RAY")).await.unwrap().value;
    assert_eq!(v, json!("runtime-env"));
    // Streams.
    common::streams_three(&m, "onray").await;

    // The worker dies: Ray reports the job failed, the supervisor places a new one.
    cjm_sys::signal::kill(pid, libc::SIGKILL);
    m.wait_for_state("onray", Duration::from_secs(120), |st| {
        st != PluginState::Ready
    })
    .await
    .expect("the host noticed the job ended");
    m.wait_for_state("onray", Duration::from_secs(240), |st| {
        st == PluginState::Ready
    })
    .await
    .expect("restarted on Ray");
    let again = pid_of(
        &m.execute("onray", Call::new(vec![json!("pid")]))
            .await
            .unwrap()
            .value,
    );
    assert_ne!(again, pid);
    assert!(descends_from(again, head.child.id()));
    let stats = m.stats("onray").await.unwrap();
    assert!(stats.restarts >= 1, "{stats:?}");
    assert!(
        stats
            .last_exit
            .as_deref()
            .unwrap_or_default()
            .contains("Ray job"),
        "{stats:?}"
    );
    // The dead job was deleted; only the new one runs.
    let jobs = head.cjm_jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].1, "RUNNING", "{jobs:?}");
    // Its log reached the plugin's log.
    let logs = m.logs("onray", 200).unwrap().join("\n");
    assert!(logs.contains("registered with the host"), "{logs}");

    // A job that cannot start fails the load with Ray's account of it, and leaves no job.
    let e = m.load("broken", None).await.unwrap_err();
    assert!(e.message.contains("before its worker registered"), "{e}");
    assert!(e.message.contains("/nonexistent/cjm-worker"), "{e}");
    // The other plugin was not disturbed.
    assert_eq!(
        pid_of(
            &m.execute("onray", Call::new(vec![json!("pid")]))
                .await
                .unwrap()
                .value
        ),
        again
    );

    // The GPU plugin is placed on the node with the GPU, which Ray gives it (and only it).
    m.load("ongpu", None).await.expect("load on Ray's GPU");
    let v = m
        .execute("ongpu", env("CUDA_VISIBLE_DEVICES"))
        .await
        .unwrap()
        .value;
    assert_eq!(v, json!("0"), "Ray did not give the GPU plugin its GPU");
    let v = m
        .execute("onray", env("CUDA_VISIBLE_DEVICES"))
        .await
        .unwrap()
        .value;
    assert_ne!(v, json!("0"), "a CPU plugin got the GPU");
    // Two GPUs fit on no node: refused before any job exists (Ray could not stop a job
    // pending on resources).
    let e = m.load("twogpus", None).await.unwrap_err();
    assert_eq!(e.category, cjm_host::ErrorCategory::Resource, "{e}");
    assert!(e.message.contains("GPU 2 (the most on one node: 1)"), "{e}");
    assert_eq!(head.cjm_jobs().len(), 2, "{:?}", head.cjm_jobs());
    m.unload("ongpu").await.unwrap();
    head.wait_for_jobs(1, "the GPU job is left");

    // The command line places it the same way (`--ray-address`), in a host of its own, and
    // leaves no job behind when it exits.
    let out = Command::new(common::cjm_bin())
        .arg("--search-path")
        .arg(s.manifests())
        .arg("--data-dir")
        .arg(s.data())
        .args(["--ray-address", &head.url(), "call", "onray", "--args"])
        .arg(r#"["env"]"#)
        .args(["--kwargs", r#"{"name": "FROM_RAY"}"#])
        .env_remove("CJM_HOST")
        .output()
        .expect("run cjm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#""runtime-env""#
    );
    head.wait_for_jobs(1, "the CLI's job is left");

    // Unloading stops the job and deletes it: nothing of cjm is left on the cluster.
    m.unload("onray").await.unwrap();
    assert!(
        common::wait_gone(&[again], Duration::from_secs(60)).is_empty(),
        "the worker outlived its unload"
    );
    head.wait_for_jobs(0, "jobs left on the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_cluster_a_ray_plugin_fails_clearly() {
    let s = Scratch::new();
    s.worker_manifest("onray", json!({"execution_mode": "ray"}));
    // No cluster configured: a config error saying how to give one.
    let m = s.manager();
    assert_eq!(m.discover(), 1, "{:?}", m.invalid_manifests());
    let e = m.load("onray", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Config, "{e}");
    assert!(e.message.contains("--ray-address"), "{e}");
    // A cluster nobody answers at: transient, naming the address.
    let port = free_port();
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .ray(RayCluster::new(format!("http://127.0.0.1:{port}")))
        .build()
        .unwrap();
    m.discover();
    let e = m.load("onray", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Transient, "{e}");
    assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
    // Not an address of a job server at all.
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .ray(RayCluster::new("ray://head:10001"))
        .build()
        .unwrap();
    m.discover();
    let e = m.load("onray", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Config, "{e}");
    assert!(e.message.contains("ray://head:10001"), "{e}");
    assert!(!m.is_loaded("onray"));
}
