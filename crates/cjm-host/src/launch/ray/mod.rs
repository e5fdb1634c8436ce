//! Placement on a Ray cluster (`execution_mode: ray`): the worker runs as a Ray job.
//!
//! 1. A one-shot registration endpoint opens ([`registrar`]).
//! 2. The job is submitted through the Ray Jobs REST API ([`jobs`]) with the manifest's `ray`
//!    resources (`entrypoint_num_cpus/gpus/memory`) and `runtime_env`. Its entrypoint is the
//!    worker's command with `--listen tcp:0.0.0.0:0 --register URL --register-pin SHA256
//!    --register-token T`.
//! 3. The worker binds a port on its node and registers. It receives a certificate for its
//!    address, the bearer token and the plugin's environment (secrets included: they never
//!    go through Ray).
//! 4. The host connects over TLS, trusting only the CA made for that worker, and watches the
//!    job. A job Ray reports ended is a crashed worker to the supervisor. The job's logs are
//!    copied into the plugin's log.
//! 5. Stopping asks Ray to stop the job, then deletes it, so nothing is left on the cluster.

pub(crate) mod jobs;
pub(crate) mod registrar;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cjm_core::wire::register::{FLAG_PIN, FLAG_TOKEN, FLAG_URL};
use cjm_core::{ErrorCategory, Manifest, PluginError, WorkerSpec};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use self::jobs::JobsApi;
use super::remote::TlsTarget;
use super::{Gone, Killer, Launched, Launcher, WorkerControl};
use crate::client::WorkerClient;
use crate::logs::PluginLog;
use crate::spawn::LaunchSpec;
use crate::transport::{Endpoint, Transport};

/// The Ray cluster a host places `execution_mode: ray` plugins on: the address of its job
/// server (`http://HEAD:8265`), and where the host listens for its workers' registration.
///
/// ```
/// let cluster = cjm_host::RayCluster::new("http://10.0.0.5:8265")
///     .register_on("0.0.0.0:7400".parse().unwrap())
///     .advertise("10.0.0.2");
/// assert_eq!(cluster.address(), "http://10.0.0.5:8265");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RayCluster {
    address: String,
    register_bind: SocketAddr,
    advertise: Option<String>,
}

impl RayCluster {
    /// The cluster whose job server is at `address` (`http://HOST:PORT`). Registration
    /// listens on `127.0.0.1` (a port of the system's choice): enough for a cluster on this
    /// machine; a real cluster needs [`register_on`](Self::register_on) and
    /// [`advertise`](Self::advertise).
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            register_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
        }
    }

    /// Listens for registrations on `bind` (port 0: any free port).
    pub fn register_on(mut self, bind: SocketAddr) -> Self {
        self.register_bind = bind;
        self
    }

    /// The host name or IP the cluster's nodes reach this host at (default: the address of
    /// [`register_on`](Self::register_on), which must then not be unspecified).
    pub fn advertise(mut self, host: impl Into<String>) -> Self {
        self.advertise = Some(host.into());
        self
    }

    /// The job server's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The host name the nodes use to reach the registration endpoint.
    fn public_host(&self) -> Result<String, PluginError> {
        match &self.advertise {
            Some(h) if !h.trim().is_empty() => Ok(h.trim().to_owned()),
            _ if self.register_bind.ip().is_unspecified() => Err(PluginError::new(
                ErrorCategory::Config,
                format!(
                    "Ray registration listens on {}, which names no address the nodes can \
                     reach: set the address to advertise (RayCluster::advertise, \
                     `--ray-advertise`)",
                    self.register_bind
                ),
            )),
            _ => Ok(self.register_bind.ip().to_string()),
        }
    }
}

/// Places workers on the host's Ray cluster.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RayLauncher;

#[async_trait]
impl Launcher for RayLauncher {
    fn kind(&self) -> &'static str {
        "ray"
    }

    async fn launch(&self, spec: &LaunchSpec, seq: u64) -> Result<Launched, PluginError> {
        place(spec, seq)
            .await
            .map_err(|e| e.with_plugin(&spec.manifest.name))
    }
}

/// How often the job's status (and its logs) are read while the worker runs.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How often the job's status is read while waiting for the worker to register.
const PENDING_EVERY: Duration = Duration::from_millis(300);

/// How long release waits for a stopped job to end before deleting it.
const END_WAIT: Duration = Duration::from_secs(20);

/// How long a stopped job still pending on resources is watched, to delete it once Ray fails
/// it (Ray's default start timeout is 15 minutes).
const PENDING_END_WAIT: Duration = Duration::from_secs(20 * 60);

/// How often such a job is looked at.
const PENDING_POLL: Duration = Duration::from_secs(5);

async fn place(spec: &LaunchSpec, seq: u64) -> Result<Launched, PluginError> {
    let m = &spec.manifest;
    let cluster = spec.ray.as_deref().ok_or_else(|| {
        PluginError::new(
            ErrorCategory::Config,
            "the plugin is placed on Ray (execution_mode: ray) but this host has no Ray cluster: \
             give its job server's address (ManagerBuilder::ray, `cjm --ray-address URL`, or \
             CJM_RAY_ADDRESS)",
        )
    })?;
    let WorkerSpec::Native { command, args } = m.worker() else {
        return Err(PluginError::new(
            ErrorCategory::Config,
            "execution_mode `ray` places a native worker (`command`)",
        ));
    };
    let api = Arc::new(JobsApi::connect(cluster.address()).await?);
    let registrar =
        registrar::Registrar::open(cluster.register_bind, &cluster.public_host()?).await?;
    let id = submission_id(&m.name, seq)?;
    let mut argv = vec![crate::spawn::resolve_program(m, command)
        .to_string_lossy()
        .into_owned()];
    argv.extend(args.iter().cloned());
    argv.extend(
        [
            "--listen",
            "tcp:0.0.0.0:0",
            FLAG_URL,
            registrar.url(),
            FLAG_PIN,
            registrar.pin(),
            FLAG_TOKEN,
            registrar.token(),
        ]
        .map(str::to_owned),
    );
    let entrypoint = shlex::try_join(argv.iter().map(String::as_str)).map_err(|e| {
        PluginError::new(
            ErrorCategory::Config,
            format!("the worker's command cannot be given to Ray: {e}"),
        )
    })?;
    let env: BTreeMap<String, String> =
        crate::launch_env::overlay(m, &spec.data_dir, spec.models_dir.as_deref())?
            .into_iter()
            .collect();
    let body = submission(m, &id, &entrypoint);
    // A job no node can hold would wait forever: Ray cannot stop a job pending on resources
    // (its stop goes to a supervisor that never starts), so it is refused before it exists.
    if let Some(nodes) = api.node_resources().await {
        if let Some(why) = jobs::unplaceable(&body, &nodes) {
            return Err(PluginError::resource(
                format!(
                    "the worker cannot be placed on the Ray cluster at {}: {why}",
                    api.address()
                ),
                vec![],
            )
            .with_plugin(&m.name));
        }
    }
    // From the moment the submission is sent a job may exist: if this start fails or is
    // dropped, the guard stops and deletes it (a job Ray never made is a 404, which is fine).
    let mut guard = JobGuard {
        api: Some(Arc::clone(&api)),
        id: id.clone(),
    };
    api.submit(&body).await?;
    tracing::info!(plugin = %m.name, job = %id, cluster = %api.address(), "submitted the worker to Ray");
    let deadline = Instant::now() + m.startup_timeout();
    let registered = tokio::select! {
        r = registrar.accept(env) => r?,
        e = until_ended(&api, &id) => return Err(e),
        () = tokio::time::sleep_until(deadline.into()) => {
            let status = api.info(&id).await.ok().flatten().map(|i| format!("{:?}", i.status));
            return Err(PluginError::timeout(format!(
                "the Ray job {id} did not register within {}s (its status: {})",
                m.startup_timeout().as_secs(),
                status.as_deref().unwrap_or("unknown")
            )));
        }
    };
    tracing::info!(plugin = %m.name, job = %id, host = %registered.host, port = registered.port, pid = registered.pid, "the Ray worker registered");
    let target = TlsTarget::with_ca_pem(
        &registered.host,
        registered.port,
        registered.ca_pem.as_bytes(),
    )?;
    let endpoint = Endpoint::Tls(Arc::new(target));
    let transport = Transport::new(endpoint, Some(&registered.auth_token));
    let client =
        Arc::new(WorkerClient::handshake(transport, Some(deadline), spec.generation()).await?);
    let (tx, gone) = oneshot::channel();
    tokio::spawn(watch(
        Arc::clone(&api),
        id.clone(),
        Arc::clone(&spec.log),
        tx,
    ));
    guard.api = None;
    Ok(Launched {
        client,
        pid: None,
        gone,
        control: Box::new(RayControl { api, id }),
    })
}

/// `cjm-NAME-SEQ-RANDOM`: unique across hosts and restarts, recognisable in Ray's job list.
fn submission_id(name: &str, seq: u64) -> Result<String, PluginError> {
    let token = crate::spawn::new_token()?;
    Ok(format!("cjm-{name}-{seq}-{}", &token[..12]))
}

/// The `POST /api/jobs/` body: the entrypoint, the manifest's `ray` resources (or what its
/// `resources` imply) and `runtime_env`, and metadata naming the plugin.
fn submission(m: &Manifest, id: &str, entrypoint: &str) -> Value {
    let ray = m.ray.clone().unwrap_or_default();
    let mut body = Map::new();
    body.insert("entrypoint".into(), json!(entrypoint));
    body.insert("submission_id".into(), json!(id));
    body.insert(
        "metadata".into(),
        json!({"cjm_plugin": m.name, "cjm_version": env!("CARGO_PKG_VERSION")}),
    );
    body.insert(
        "runtime_env".into(),
        Value::Object(ray.runtime_env.unwrap_or_default()),
    );
    let gpus = ray
        .num_gpus
        .or_else(|| m.resources.requires_gpu.then_some(1.0));
    if let Some(n) = ray.num_cpus {
        body.insert("entrypoint_num_cpus".into(), json!(n));
    }
    if let Some(n) = gpus {
        body.insert("entrypoint_num_gpus".into(), json!(n));
    }
    let memory = ray.memory.or_else(|| {
        m.resources
            .min_system_ram_mb
            .map(|mb| mb.saturating_mul(1024 * 1024))
            .filter(|b| *b > 0)
    });
    if let Some(b) = memory {
        body.insert("entrypoint_memory".into(), json!(b));
    }
    Value::Object(body)
}

/// Resolves with an error when the job ends (or disappears) before its worker registered,
/// quoting the end of its log.
async fn until_ended(api: &JobsApi, id: &str) -> PluginError {
    loop {
        tokio::time::sleep(PENDING_EVERY).await;
        let info = match api.info(id).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return PluginError::transient(format!("the Ray job {id} disappeared"));
            }
            Err(e) => {
                tracing::debug!(job = %id, error = %e, "reading the job's status failed");
                continue;
            }
        };
        if info.status.is_terminal() {
            let tail = api
                .logs(id)
                .await
                .map(|l| last_lines(&l, 20))
                .unwrap_or_default();
            return PluginError::new(
                ErrorCategory::Config,
                format!(
                    "the Ray job {id} ended ({:?}: {}) before its worker registered{}",
                    info.status,
                    info.message.as_deref().unwrap_or("no message"),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; its last lines:\n{tail}")
                    }
                ),
            );
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Watches the job: copies new log lines into the plugin's log, and reports the worker gone
/// when Ray says the job ended. Ends quietly when nobody listens any more.
async fn watch(
    api: Arc<JobsApi>,
    id: String,
    log: Arc<PluginLog>,
    mut tx: oneshot::Sender<io::Result<std::process::ExitStatus>>,
) {
    let mut copied = 0usize;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let info = tokio::select! {
            () = tx.closed() => return,
            i = api.info(&id) => i,
        };
        if let Ok(text) = api.logs(&id).await {
            copied = copy_new_lines(&log, &text, copied);
        }
        let ended = match info {
            Ok(Some(i)) if i.status.is_terminal() => Some(format!(
                "the Ray job {id} ended: {:?} ({})",
                i.status,
                i.message.as_deref().unwrap_or("no message")
            )),
            Ok(None) => Some(format!("the Ray job {id} disappeared")),
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::debug!(job = %id, error = %e, "reading the job's status failed");
                None
            }
        };
        if let Some(why) = ended {
            let _ = tx.send(Err(io::Error::other(why)));
            return;
        }
    }
}

/// Appends the complete lines of `text` past byte `copied` to `log`; the new offset. A log
/// that shrank (Ray rotated it) is copied again from its start.
fn copy_new_lines(log: &PluginLog, text: &str, copied: usize) -> usize {
    let from = if copied > text.len() { 0 } else { copied };
    let Some(fresh) = text.get(from..) else {
        return copied;
    };
    let Some(end) = fresh.rfind('\n') else {
        return from;
    };
    for line in fresh[..end].lines() {
        log.line(line);
    }
    from + end + 1
}

/// Stops and forgets a job whose start did not finish (failed, timed out or dropped).
struct JobGuard {
    api: Option<Arc<JobsApi>>,
    id: String,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            end_job_in_background(api, self.id.clone());
        }
    }
}

/// Stops the job and deletes it once ended, on the current runtime (nothing when there is
/// none: the host is going away, and Ray keeps the job until its worker sees the host gone).
fn end_job_in_background(api: Arc<JobsApi>, id: String) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            end_job(&api, &id).await;
        });
    }
}

/// Stops the job, waits up to [`END_WAIT`] for Ray to end it, and deletes it.
async fn end_job(api: &JobsApi, id: &str) {
    if let Err(e) = api.stop(id).await {
        tracing::warn!(job = %id, error = %e, "could not stop the Ray job");
    }
    let began = Instant::now();
    loop {
        match api.info(id).await {
            Ok(Some(i)) if !i.status.is_terminal() => {
                let waited = began.elapsed();
                if waited < END_WAIT {
                    tokio::time::sleep(PENDING_EVERY).await;
                } else if i.status == jobs::JobStatus::Pending && waited < PENDING_END_WAIT {
                    // Ray cannot stop a job still waiting for resources; it fails it when its
                    // start times out (RAY_JOB_START_TIMEOUT_SECONDS). Delete it then.
                    tokio::time::sleep(PENDING_POLL).await;
                } else {
                    break;
                }
            }
            _ => break,
        }
    }
    match api.delete(id).await {
        Ok(()) => tracing::info!(job = %id, "the Ray job is stopped and deleted"),
        Err(e) => tracing::warn!(job = %id, error = %e, "could not delete the Ray job"),
    }
}

/// Ends one placed worker: Ray stops the job (SIGTERM, then SIGKILL after its own grace), and
/// the ended job is deleted.
struct RayControl {
    api: Arc<JobsApi>,
    id: String,
}

#[async_trait]
impl WorkerControl for RayControl {
    async fn stop(&mut self, grace: Duration, gone: &mut Gone) {
        if let Err(e) = self.api.stop(&self.id).await {
            tracing::warn!(job = %self.id, error = %e, "could not stop the Ray job");
        }
        let _ = tokio::time::timeout(grace + END_WAIT, &mut *gone).await;
    }

    fn killer(&self) -> Option<Killer> {
        let (api, id) = (Arc::clone(&self.api), self.id.clone());
        Some(Killer::new(move || {
            end_job_in_background(Arc::clone(&api), id.clone())
        }))
    }

    async fn release(&mut self) {
        end_job(&self.api, &self.id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_no_node_can_hold_is_named_before_it_is_submitted() {
        let answer = json!({"result": true, "data": {"result": {"total": 2, "result": [
            {"node_id": "a", "state": "ALIVE", "resources_total": {"CPU": 4.0, "GPU": 1.0, "memory": 8e9}},
            {"node_id": "b", "state": "ALIVE", "resources_total": {"CPU": 16.0, "memory": 6.4e10}},
            {"node_id": "c", "state": "DEAD", "resources_total": {"CPU": 64.0, "GPU": 8.0}}
        ]}}});
        let nodes = jobs::parse_nodes(&answer);
        assert_eq!(nodes.len(), 2);
        let fits = |b: Value| jobs::unplaceable(&b, &nodes);
        assert_eq!(
            fits(json!({"entrypoint_num_gpus": 1, "entrypoint_num_cpus": 2})),
            None
        );
        assert_eq!(fits(json!({"entrypoint_num_cpus": 12})), None);
        assert_eq!(fits(json!({})), None);
        // Each fits somewhere, not both on one node; a dead node's GPUs do not count.
        let why = fits(json!({"entrypoint_num_gpus": 1, "entrypoint_num_cpus": 12})).unwrap();
        assert!(why.contains("GPU 1 (the most on one node: 1)"), "{why}");
        assert!(why.contains("CPU 12 (the most on one node: 16)"), "{why}");
        let why = fits(json!({"entrypoint_num_gpus": 2})).unwrap();
        assert!(why.contains("GPU 2 (the most on one node: 1)"), "{why}");
        // Nothing known about the nodes: nothing is refused.
        assert_eq!(
            jobs::unplaceable(&json!({"entrypoint_num_gpus": 9}), &[]),
            None
        );
        assert!(jobs::parse_nodes(&json!({"data": "?"})).is_empty());
    }

    #[test]
    fn the_submission_carries_resources_and_the_runtime_env() {
        let m = Manifest::parse(
            r#"{"name": "p", "command": "/bin/w", "execution_mode": "ray",
                "resources": {"requires_gpu": true, "min_system_ram_mb": 2},
                "ray": {"num_cpus": 0.5, "runtime_env": {"env_vars": {"A": "1"}}}}"#,
            None,
        )
        .unwrap();
        let body = submission(&m, "cjm-p-1-x", "/bin/w --listen tcp:0.0.0.0:0");
        assert_eq!(body["entrypoint_num_cpus"], json!(0.5));
        assert_eq!(body["entrypoint_num_gpus"], json!(1.0));
        assert_eq!(body["entrypoint_memory"], json!(2 * 1024 * 1024));
        assert_eq!(body["runtime_env"]["env_vars"]["A"], json!("1"));
        assert_eq!(body["submission_id"], json!("cjm-p-1-x"));
        assert_eq!(body["metadata"]["cjm_plugin"], json!("p"));
    }

    #[test]
    fn new_log_lines_are_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = PluginLog::open(dir.path(), "p", 1 << 20);
        let n = copy_new_lines(&log, "a\nb\npart", 0);
        assert_eq!(n, 4);
        let n = copy_new_lines(&log, "a\nb\npartial\nc\n", n);
        assert_eq!(n, 14);
        assert_eq!(log.recent(10), vec!["a", "b", "partial", "c"]);
        // A rotated (shorter) log starts again.
        assert_eq!(copy_new_lines(&log, "x\n", n), 2);
    }

    #[test]
    fn an_unspecified_registration_address_needs_one_to_advertise() {
        let c = RayCluster::new("http://h:8265").register_on("0.0.0.0:0".parse().unwrap());
        let e = c.public_host().unwrap_err();
        assert!(e.message.contains("--ray-advertise"), "{e}");
        assert_eq!(c.advertise("10.1.2.3").public_host().unwrap(), "10.1.2.3");
        assert_eq!(RayCluster::new("x").public_host().unwrap(), "127.0.0.1");
    }
}
