//! The jobs layer over a [`PluginManager`]: submission (journaled before it is accepted),
//! admission in lanes, the run of each job (retries, progress, cancel phases), waiting and
//! watching, and recovery from the journal at open.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cjm_core::{ErrorCategory, PluginError};
use cjm_host::{CallOptions, PluginManager, PluginState};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::event::{Bus, CancelPhase, JobEvent, JobEventKind, Subscription};
use crate::job::{now_ms, Job, JobCall, JobId, JobOptions, JobState};
use crate::journal::{Journal, JournalError, Row};
use crate::profile::{config_hash, Profile, Profiles, Samples};

/// Why a jobs operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The journal cannot be written: new submissions are refused.
    #[error("the job journal cannot be written ({0}); no new job is accepted")]
    JournalUnavailable(String),
    /// No plugin of that name is discovered or loaded.
    #[error("no plugin `{0}` to run a job on")]
    UnknownTarget(String),
    /// No job with that id (never submitted, or past retention).
    #[error("no job `{0}`")]
    NotFound(String),
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
    /// The jobs layer is shut down.
    #[error("the jobs layer is shut down")]
    Closed,
}

/// Which jobs [`Jobs::list`] returns (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only on this plugin.
    pub target: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
}

/// How the jobs layer runs; see [`Jobs::builder`].
#[derive(Clone)]
pub struct JobsBuilder {
    max_in_flight: usize,
    per_target: usize,
    cancel_grace: Duration,
    retry_base: Duration,
    retry_max: Duration,
    keep_jobs: usize,
    keep_for: Duration,
    journal: Option<PathBuf>,
    config: Option<ConfigSource>,
    measure_first: bool,
}

/// Where the configuration a job loads its plugin with comes from.
type ConfigSource =
    Arc<dyn Fn(&str) -> Result<Option<serde_json::Value>, PluginError> + Send + Sync>;

impl std::fmt::Debug for JobsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsBuilder")
            .field("max_in_flight", &self.max_in_flight)
            .field("per_target", &self.per_target)
            .field("cancel_grace", &self.cancel_grace)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl Default for JobsBuilder {
    fn default() -> Self {
        Self {
            max_in_flight: 4,
            per_target: 1,
            cancel_grace: Duration::from_secs(5),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            keep_jobs: 10_000,
            keep_for: Duration::from_secs(7 * 24 * 3600),
            journal: None,
            config: None,
            measure_first: true,
        }
    }
}

impl JobsBuilder {
    /// At most `n` jobs run at once (default 4; at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// At most `n` jobs run at once on one plugin (default 1; at least 1).
    pub fn per_target(mut self, n: usize) -> Self {
        self.per_target = n.max(1);
        self
    }

    /// How long a running job has to stop after a cooperative cancel before its call is
    /// abandoned and its worker respawned (default 5 s).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Backoff between retries: `base` doubling up to `max` (default 0.5 s, 30 s).
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base;
        self.retry_max = max.max(base);
        self
    }

    /// Keeps at most `jobs` finished jobs, none older than `age` (default 10 000, 7 days):
    /// older ones leave memory and the journal.
    pub fn retention(mut self, jobs: usize, age: Duration) -> Self {
        self.keep_jobs = jobs;
        self.keep_for = age;
        self
    }

    /// The configuration a job loads an unloaded plugin with (a service's saved one, say);
    /// `Ok(None)`, or no source, loads it with its defaults.
    pub fn load_config(
        mut self,
        source: impl Fn(&str) -> Result<Option<serde_json::Value>, PluginError> + Send + Sync + 'static,
    ) -> Self {
        self.config = Some(Arc::new(source));
        self
    }

    /// Whether a job whose (plugin, configuration) has no resource profile yet runs alone
    /// (default `true`): nothing else is admitted while it runs, so its first measurement is
    /// clean and it cannot overcommit the machine. Off: admission ignores missing profiles.
    pub fn measure_first(mut self, on: bool) -> Self {
        self.measure_first = on;
        self
    }

    /// The journal's file (default `<data_dir>/journal.db`).
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// Opens the journal, rebuilds the jobs from it, and starts running: queued jobs resume;
    /// jobs that were running when the last host died are marked `interrupted`, or queued
    /// again when they have an idempotency key. Call inside a Tokio runtime.
    pub fn open(self, manager: PluginManager) -> Result<Jobs, JobError> {
        let path = self
            .journal
            .clone()
            .unwrap_or_else(|| manager.data_dir().join("journal.db"));
        let (journal, replay) = Journal::open(&path)?;
        if replay.unreadable > 0 {
            tracing::warn!(rows = replay.unreadable, path = %path.display(), "unreadable job-journal rows were skipped");
        }
        let inner = Arc::new(Inner {
            manager,
            loading: Mutex::new(HashMap::new()),
            journal,
            bus: Bus::default(),
            opts: self,
            profiles: Mutex::new(Profiles::from_saved(replay.profiles)),
            end_sampled: Mutex::new(HashMap::new()),
            resident: Mutex::new(HashMap::new()),
            last_hash: Mutex::new(HashMap::new()),
            ram_available_mb: std::sync::atomic::AtomicU64::new(u64::MAX),
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                seq: replay.last_seq,
                ..State::default()
            }),
        });
        inner.recover(replay.events);
        Inner::watch_ram(&inner);
        Ok(Jobs { inner })
    }
}

/// The jobs of one host. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("journal", &self.inner.journal.path())
            .finish_non_exhaustive()
    }
}

struct Inner {
    manager: PluginManager,
    /// One load at a time per plugin: jobs that find it unloaded wait for the first one's.
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    journal: Journal,
    bus: Bus,
    opts: JobsBuilder,
    /// What jobs used, by (target, configuration).
    profiles: Mutex<Profiles>,
    /// When each target's worker was last sampled at the end of a job.
    end_sampled: Mutex<HashMap<String, std::time::Instant>>,
    /// Each target's configuration digest when it was last seen loaded.
    last_hash: Mutex<HashMap<String, String>>,
    /// Each target's worker RAM (MB) at its last sample; forgotten when the worker changes.
    resident: Mutex<HashMap<String, u64>>,
    /// RAM available now, MB (`u64::MAX` until first read, or when unknown).
    ram_available_mb: std::sync::atomic::AtomicU64,
    closed: AtomicBool,
    state: Mutex<State>,
}

/// A queued job's place: higher priority first, then earlier submission.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    neg_priority: i64,
    order: u64,
    id: JobId,
}

impl State {
    /// Takes a job out of the queue.
    fn unqueue(&mut self, id: &JobId) {
        let Some((target, p)) = self.places.remove(id) else {
            return;
        };
        if let Some(q) = self.pending.get_mut(&target) {
            q.remove(&p);
            if q.is_empty() {
                self.pending.remove(&target);
            }
        }
    }
}

struct Running {
    target: String,
    /// Runs alone: its configuration had no profile when it was admitted.
    alone: bool,
    cancel: CancellationToken,
    task: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct State {
    jobs: HashMap<JobId, Job>,
    /// Queued jobs, per target, best first: admission looks at each target's first jobs only,
    /// so a long queue behind a busy plugin costs nothing.
    pending: HashMap<String, BTreeSet<Pending>>,
    /// Where each queued job is: its target and its key there.
    places: HashMap<JobId, (String, Pending)>,
    running: HashMap<JobId, Running>,
    per_target: HashMap<String, usize>,
    finished: VecDeque<(u64, JobId)>,
    by_key: HashMap<String, JobId>,
    waiters: HashMap<JobId, Vec<oneshot::Sender<Job>>>,
    watched_targets: HashSet<String>,
    seq: u64,
    /// When rows about workers were last pruned (ms since the epoch).
    pruned_ms: u64,
}

/// The longest wait for a worker killed for memory to serve again before its retry.
const RESPAWN_WAIT: Duration = Duration::from_secs(120);

/// How often a running job's progress is read from its worker.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Jobs of a plugin whose worker is always sampled when they end, before sampling thins out.
const YOUNG_PROFILE_RUNS: u64 = 8;

/// The longest idempotency key accepted.
const MAX_KEY: usize = 256;

impl Jobs {
    /// The default configuration, to adjust before [`JobsBuilder::open`].
    pub fn builder() -> JobsBuilder {
        JobsBuilder::default()
    }

    /// Opens the jobs layer of `manager` with the default configuration.
    pub fn open(manager: PluginManager) -> Result<Self, JobError> {
        JobsBuilder::default().open(manager)
    }

    /// The manager the jobs run on.
    pub fn manager(&self) -> &PluginManager {
        &self.inner.manager
    }

    /// Submits a job; its id once the submission is in the journal. The same idempotency key
    /// as a job that is queued, running or succeeded returns that job's id.
    pub async fn submit(
        &self,
        target: &str,
        call: JobCall,
        options: JobOptions,
    ) -> Result<JobId, JobError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(JobError::Closed);
        }
        let m = &inner.manager;
        if m.discovered_manifest(target).is_none() && !m.is_loaded(target) {
            return Err(JobError::UnknownTarget(target.to_owned()));
        }
        if let Some(k) = &options.idempotency_key {
            if k.is_empty() || k.len() > MAX_KEY {
                return Err(JobError::Invalid(format!(
                    "an idempotency key has 1 to {MAX_KEY} bytes, not {}",
                    k.len()
                )));
            }
        }
        let (ev, durable) = {
            let mut st = inner.lock();
            if let Some(k) = &options.idempotency_key {
                if let Some(id) = st.by_key.get(k) {
                    let reusable = st.jobs.get(id).is_none_or(|j| {
                        !matches!(
                            j.state,
                            JobState::Failed | JobState::Cancelled | JobState::Interrupted
                        )
                    });
                    if reusable {
                        return Ok(id.clone());
                    }
                }
            }
            if let Some(why) = inner.journal.broken() {
                return Err(JobError::JournalUnavailable(why));
            }
            let id = JobId::generate();
            st.seq += 1;
            let ev = JobEvent {
                seq: st.seq,
                at_ms: now_ms(),
                job: id.clone(),
                kind: JobEventKind::Submitted {
                    target: target.to_owned(),
                    call: call.clone(),
                    options: options.clone(),
                },
            };
            if let Some(k) = &options.idempotency_key {
                st.by_key.insert(k.clone(), id.clone());
            }
            let durable = inner.journal.append_durable(vec![Row::of(&ev)]);
            (ev, durable)
        };
        let written = match durable.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(why),
            Err(_) => Err("its writer is gone".to_owned()),
        };
        let mut st = inner.lock();
        if let Err(why) = written {
            if let Some(k) = &options.idempotency_key {
                if st.by_key.get(k) == Some(&ev.job) {
                    st.by_key.remove(k);
                }
            }
            return Err(JobError::JournalUnavailable(why));
        }
        let id = ev.job.clone();
        let job = Job::submitted(id.clone(), ev.at_ms, target.to_owned(), call, options);
        st.jobs.insert(id.clone(), job);
        inner.enqueue(&mut st, &id, ev.seq);
        inner.bus.publish(&ev);
        inner.pump(&mut st);
        Ok(id)
    }

    /// The job as it stands.
    pub fn get(&self, id: &JobId) -> Option<Job> {
        self.inner.lock().jobs.get(id).cloned()
    }

    /// Jobs, newest first.
    pub fn list(&self, filter: &JobFilter) -> Vec<Job> {
        let st = self.inner.lock();
        let mut out: Vec<Job> = st
            .jobs
            .values()
            .filter(|j| filter.state.is_none_or(|s| j.state == s))
            .filter(|j| filter.target.as_ref().is_none_or(|t| *t == j.target))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.id.cmp(&a.id));
        out.truncate(filter.limit.unwrap_or(100));
        out
    }

    /// Cancels a job: a queued one leaves the queue at once; a running one is asked to stop
    /// (cooperative), then abandoned with its worker respawned after the grace period
    /// (forced); each phase is an event. Returns the state right after the request.
    pub fn cancel(&self, id: &JobId) -> Result<JobState, JobError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        let state = st
            .jobs
            .get(id)
            .map(|j| j.state)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        match state {
            JobState::Queued => {
                st.unqueue(id);
                inner.emit(&mut st, id, JobEventKind::Cancelled);
                Ok(JobState::Cancelled)
            }
            JobState::Running => {
                if let Some(r) = st.running.get(id) {
                    r.cancel.cancel();
                }
                Ok(JobState::Running)
            }
            done => Ok(done),
        }
    }

    /// Waits until the job has ended.
    pub async fn wait(&self, id: &JobId) -> Result<Job, JobError> {
        let rx = {
            let mut st = self.inner.lock();
            let job = st
                .jobs
                .get(id)
                .ok_or_else(|| JobError::NotFound(id.to_string()))?;
            if job.state.is_terminal() {
                return Ok(job.clone());
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.entry(id.clone()).or_default().push(tx);
            rx
        };
        rx.await.map_err(|_| JobError::Closed)
    }

    /// The log lines the job's worker wrote while it ran the job's calls: the lines of the
    /// plugin's log tagged `tag=<id>` (a cjm worker logs each call inside a `call{tag=…}`
    /// span; output outside `tracing`, and original Python workers' lines, carry no tag).
    /// At most `lines`, the last ones, from the plugin's last 10 000.
    pub fn logs(&self, id: &JobId, lines: usize) -> Result<Vec<String>, JobError> {
        let target = self
            .get(id)
            .map(|j| j.target)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        let all = match self.inner.manager.logs(&target, 10_000) {
            Ok(l) => l,
            Err(_) => return Ok(Vec::new()),
        };
        let needle = format!("tag={id}");
        let mut mine: Vec<String> = all.into_iter().filter(|l| l.contains(&needle)).collect();
        let skip = mine.len().saturating_sub(lines);
        mine.drain(..skip);
        Ok(mine)
    }

    /// The resource profiles measured so far, by plugin (or instance) and configuration.
    pub fn profiles(&self) -> Vec<Profile> {
        self.inner
            .profiles
            .lock()
            .map(|p| p.all())
            .unwrap_or_default()
    }

    /// Every event from now on, or one job's.
    pub fn watch(&self, job: Option<JobId>) -> Subscription {
        self.inner.bus.subscribe(job)
    }

    /// Stops running jobs: running ones are marked `interrupted` (their calls are dropped, so
    /// their workers are told to cancel), queued ones stay queued in the journal for the next
    /// host. No submission is accepted afterwards, and the journal is closed (another host may
    /// open it).
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::SeqCst);
        {
            let mut st = inner.lock();
            let running: Vec<(JobId, Running)> = st.running.drain().collect();
            for (id, r) in running {
                if let Some(t) = r.task {
                    t.abort();
                }
                inner.emit(
                    &mut st,
                    &id,
                    JobEventKind::Interrupted {
                        reason: "the host shut down while it ran".into(),
                    },
                );
            }
            st.per_target.clear();
        }
        inner.journal.flush().await;
        let me = Arc::clone(inner);
        let _ = tokio::task::spawn_blocking(move || me.journal.close()).await;
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records, applies and publishes one event of a job.
    fn emit(&self, st: &mut State, id: &JobId, kind: JobEventKind) -> JobEvent {
        let ev = self.emit_unjournaled(st, id, kind);
        self.journal.append(vec![Row::of(&ev)]);
        ev
    }

    /// [`emit`](Self::emit), leaving the journaling to the caller.
    fn emit_unjournaled(&self, st: &mut State, id: &JobId, kind: JobEventKind) -> JobEvent {
        st.seq += 1;
        let ev = JobEvent {
            seq: st.seq,
            at_ms: now_ms(),
            job: id.clone(),
            kind,
        };
        if let Some(job) = st.jobs.get_mut(id) {
            job.apply(ev.at_ms, &ev.kind);
            if ev.kind.is_terminal() {
                let snapshot = job.clone();
                st.finished.push_back((ev.at_ms, id.clone()));
                for w in st.waiters.remove(id).unwrap_or_default() {
                    let _ = w.send(snapshot.clone());
                }
                self.retain(st);
            }
        }
        self.bus.publish(&ev);
        ev
    }

    fn enqueue(self: &Arc<Self>, st: &mut State, id: &JobId, order: u64) {
        let Some(job) = st.jobs.get(id) else { return };
        if let Some(deadline) = job.options.deadline_ms {
            // Fails it at its deadline if it is still queued then (it may be behind a plugin
            // that stays busy for long).
            let weak = Arc::downgrade(self);
            let id = id.clone();
            let wait = Duration::from_millis(deadline.saturating_sub(now_ms()));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let Some(inner) = weak.upgrade() else { return };
                let mut st = inner.lock();
                if st.places.contains_key(&id) {
                    st.unqueue(&id);
                    inner.emit(
                        &mut st,
                        &id,
                        JobEventKind::Failed {
                            error: PluginError::timeout(
                                "the job's deadline passed before it started",
                            ),
                        },
                    );
                }
            });
        }
        let p = Pending {
            neg_priority: -i64::from(job.options.priority),
            order,
            id: id.clone(),
        };
        let target = job.target.clone();
        st.pending
            .entry(target.clone())
            .or_default()
            .insert(p.clone());
        st.places.insert(id.clone(), (target, p));
    }

    /// Forgets finished jobs past retention, in memory and in the journal.
    fn retain(&self, st: &mut State) {
        let oldest_kept = now_ms().saturating_sub(self.opts.keep_for.as_millis() as u64);
        let mut gone = Vec::new();
        while let Some((at, _)) = st.finished.front() {
            if st.finished.len() <= self.opts.keep_jobs && *at >= oldest_kept {
                break;
            }
            if let Some((_, id)) = st.finished.pop_front() {
                if let Some(job) = st.jobs.remove(&id) {
                    if let Some(k) = &job.options.idempotency_key {
                        if st.by_key.get(k) == Some(&id) {
                            st.by_key.remove(k);
                        }
                    }
                }
                gone.push(id);
            }
        }
        self.journal.forget(gone);
        // Rows about workers age out too; checked at most once a minute (it scans).
        if now_ms().saturating_sub(st.pruned_ms) >= 60_000 {
            st.pruned_ms = now_ms();
            self.journal.prune(oldest_kept);
        }
    }

    /// Starts every queued job a lane admits: highest priority first, skipping (never
    /// waiting on) jobs whose plugin is at its cap.
    fn pump(self: &Arc<Self>, st: &mut State) {
        if self.closed.load(Ordering::SeqCst)
            || st.running.len() >= self.opts.max_in_flight
            || st.running.values().any(|r| r.alone)
        {
            return;
        }
        let now = now_ms();
        let mut start: Vec<(Pending, bool)> = Vec::new();
        let mut expired = Vec::new();
        let mut planned: HashMap<&str, usize> = HashMap::new();
        let ram = self.ram_available_mb.load(Ordering::Relaxed);
        let mut planned_ram = 0u64;
        let profiles = self
            .profiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let resident = self
            .resident
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each target's first jobs, as many as it has room for (and the expired ones before
        // them), then best first across targets.
        let mut heads: Vec<&Pending> = Vec::new();
        for (target, queue) in &st.pending {
            let busy = st.per_target.get(target).copied().unwrap_or(0);
            let mut room = self.opts.per_target.saturating_sub(busy);
            for p in queue {
                if room == 0 {
                    break;
                }
                let Some(job) = st.jobs.get(&p.id) else {
                    continue;
                };
                if job.options.deadline_ms.is_some_and(|d| d <= now) {
                    expired.push(p.clone());
                    continue;
                }
                heads.push(p);
                room -= 1;
            }
        }
        heads.sort_unstable();
        for p in heads {
            if st.running.len() + start.len() >= self.opts.max_in_flight
                || st.running.values().any(|r| r.alone)
                || start.iter().any(|(_, alone)| *alone)
            {
                break;
            }
            let Some(job) = st.jobs.get(&p.id) else {
                continue;
            };
            let busy = st.per_target.get(&job.target).copied().unwrap_or(0)
                + planned.get(job.target.as_str()).copied().unwrap_or(0);
            if busy >= self.opts.per_target {
                continue;
            }
            // Its profile: unmeasured runs alone; measured must fit in the RAM there is.
            let hash = self.config_hash_of(&job.target);
            let alone = match profiles.get(&job.target, &hash) {
                None if self.opts.measure_first => {
                    if !st.running.is_empty() || !start.is_empty() {
                        continue;
                    }
                    true
                }
                None => false,
                Some(profile) => {
                    // What the job adds: its measured peak, less what a loaded worker already
                    // holds (a model loaded once is not needed twice).
                    let held = if self.manager.is_loaded(&job.target) {
                        resident.get(&job.target).copied().unwrap_or(0)
                    } else {
                        0
                    };
                    let need = profile.peak_ram_mb.saturating_sub(held);
                    // Jobs admitted in this round are not in the reading yet: count them.
                    if ram != u64::MAX && need > ram.saturating_sub(planned_ram) {
                        continue;
                    }
                    planned_ram += need;
                    false
                }
            };
            *planned.entry(job.target.as_str()).or_default() += 1;
            start.push((p.clone(), alone));
        }
        drop(profiles);
        drop(resident);
        for p in expired {
            st.unqueue(&p.id);
            self.emit(
                st,
                &p.id,
                JobEventKind::Failed {
                    error: PluginError::timeout("the job's deadline passed before it started"),
                },
            );
        }
        for (p, alone) in start {
            st.unqueue(&p.id);
            let Some(job) = st.jobs.get(&p.id).cloned() else {
                continue;
            };
            *st.per_target.entry(job.target.clone()).or_default() += 1;
            let in_flight = st.running.len() + 1;
            self.emit(st, &p.id, JobEventKind::Admitted { in_flight });
            let cancel = CancellationToken::new();
            let task = tokio::spawn(Arc::clone(self).run(job.clone(), cancel.clone()));
            st.running.insert(
                p.id.clone(),
                Running {
                    target: job.target.clone(),
                    alone,
                    cancel,
                    task: Some(task.abort_handle()),
                },
            );
            self.watch_worker(st, &job.target);
        }
    }

    /// Journals the state changes of a plugin's worker (spawned, ready, crashed, …) from its
    /// first job on.
    fn watch_worker(self: &Arc<Self>, st: &mut State, target: &str) {
        if !st.watched_targets.insert(target.to_owned()) {
            return;
        }
        let weak = Arc::downgrade(self);
        let target = target.to_owned();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let Some(mut rx) = inner.manager.watch_state(&target) else {
                    // Not loaded yet: look again shortly (the job loads it).
                    drop(inner);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let state = *rx.borrow_and_update();
                // A new or restarted worker: what the old one held says nothing.
                if let Ok(mut r) = inner.resident.lock() {
                    r.remove(&target);
                }
                inner.worker_record(&target, state.to_string());
                drop(inner);
                if rx.changed().await.is_err() {
                    // Unloaded: watch the next load.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }

    fn worker_record(&self, target: &str, state: String) {
        let mut st = self.lock();
        st.seq += 1;
        let body =
            serde_json::json!({"target": target, "state": state, "pid": self.manager.pid(target)});
        self.journal.append(vec![Row {
            seq: st.seq,
            at_ms: now_ms(),
            job: None,
            kind: "worker",
            body: body.to_string(),
        }]);
    }

    /// Ends a running job with `kind` and admits what can run next.
    fn finish(self: &Arc<Self>, id: &JobId, kind: JobEventKind) {
        let mut st = self.lock();
        let Some(r) = st.running.remove(id) else {
            return; // shut down meanwhile: already marked interrupted
        };
        if let Some(n) = st.per_target.get_mut(&r.target) {
            *n = n.saturating_sub(1);
        }
        self.emit(&mut st, id, kind);
        self.pump(&mut st);
    }

    fn event(self: &Arc<Self>, id: &JobId, kind: JobEventKind) {
        let mut st = self.lock();
        if st.running.contains_key(id) {
            self.emit(&mut st, id, kind);
        }
    }

    /// Emits `started` for attempt `attempt` and waits until the journal has it.
    async fn started(self: &Arc<Self>, id: &JobId, attempt: u32) -> Result<(), String> {
        let ev = {
            let mut st = self.lock();
            if !st.running.contains_key(id) {
                return Ok(()); // shut down meanwhile
            }
            self.emit_unjournaled(&mut st, id, JobEventKind::Started { attempt })
        };
        match self.journal.append_durable(vec![Row::of(&ev)]).await {
            Ok(r) => r,
            Err(_) => Err("its writer is gone".to_owned()),
        }
    }

    async fn run(self: Arc<Self>, job: Job, cancel: CancellationToken) {
        let outcome = self.attempts(&job, &cancel).await;
        self.finish(&job.id, outcome);
    }

    /// Runs the job's attempts; the terminal event.
    async fn attempts(self: &Arc<Self>, job: &Job, cancel: &CancellationToken) -> JobEventKind {
        let mut attempt = job.attempts;
        // The one attempt after an OOM kill, outside the retry budget, has been used.
        let mut oom_retried = false;
        loop {
            attempt += 1;
            // Committed before the call goes out: after a crash, a job the journal shows
            // queued never reached a worker, so resuming it cannot run it twice.
            if let Err(why) = self.started(&job.id, attempt).await {
                return JobEventKind::Failed {
                    error: PluginError::fatal(format!(
                        "the job journal cannot record the start: {why}"
                    )),
                };
            }
            let began = std::time::Instant::now();
            let mut samples = Samples::default();
            let result = match self.attempt(job, cancel, &mut samples).await {
                Attempt::Done(r) => r,
                Attempt::Cancelled => return JobEventKind::Cancelled,
            };
            let error = match result {
                Ok(value) => {
                    self.record_profile(&job.target, &samples, began.elapsed());
                    return JobEventKind::Succeeded { result: value };
                }
                Err(e) => e,
            };
            if error.details.out_of_memory && !oom_retried {
                oom_retried = true;
                let evicted = tokio::select! {
                    e = self.recover_memory(&job.target) => e,
                    () = cancel.cancelled() => return JobEventKind::Cancelled,
                };
                self.event(
                    &job.id,
                    JobEventKind::Recovering {
                        attempt,
                        error,
                        evicted,
                    },
                );
                continue;
            }
            if !error.retriable
                || error.details.out_of_memory
                || attempt > job.options.retries + u32::from(oom_retried)
            {
                return JobEventKind::Failed { error };
            }
            let after = self
                .opts
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.opts.retry_max);
            self.event(
                &job.id,
                JobEventKind::Retrying {
                    attempt,
                    error,
                    after_ms: after.as_millis() as u64,
                },
            );
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = cancel.cancelled() => return JobEventKind::Cancelled,
            }
        }
    }

    /// After `target`'s worker was killed for memory: evicts the idle plugins no running job
    /// needs, then waits (bounded, cancel-safe: it holds nothing) until the worker serves
    /// again, respawning it where its restart policy left it down. Returns what was evicted.
    async fn recover_memory(&self, target: &str) -> Vec<String> {
        let keep: Vec<String> = {
            let st = self.lock();
            st.running.values().map(|r| r.target.clone()).collect()
        };
        let keep: Vec<&str> = keep.iter().map(String::as_str).chain([target]).collect();
        let evicted = self.manager.evict_idle(&keep).await;
        if !evicted.is_empty() {
            tracing::info!(plugin = target, evicted = ?evicted, "worker out of memory: evicted idle plugins");
        }
        let state = self
            .manager
            .wait_for_state(target, RESPAWN_WAIT, |s| {
                s.is_serving() || matches!(s, PluginState::Crashed | PluginState::Failed)
            })
            .await;
        if matches!(state, Ok(PluginState::Crashed)) {
            if let Err(e) = self.manager.reload(target, None).await {
                tracing::warn!(plugin = target, error = %e, "respawning a worker killed for memory failed");
            }
        }
        evicted
    }

    /// The digest of the configuration `target` runs with: its current one when loaded;
    /// else the last one seen loaded; else the one a job would load it with (the load-config
    /// source's, or none, completed with the manifest schema's defaults).
    fn config_hash_of(&self, target: &str) -> String {
        if let Ok(c) = self.manager.config(target) {
            let h = config_hash(&c);
            if let Ok(mut g) = self.last_hash.lock() {
                if g.get(target) != Some(&h) {
                    g.insert(target.to_owned(), h.clone());
                }
            }
            return h;
        }
        if let Some(h) = self
            .last_hash
            .lock()
            .ok()
            .and_then(|g| g.get(target).cloned())
        {
            return h;
        }
        let given = match &self.opts.config {
            Some(source) => source(target).ok().flatten(),
            None => None,
        };
        let schema = self
            .manager
            .discovered_manifest(target)
            .and_then(|m| m.config_schema.clone())
            .unwrap_or_default();
        cjm_core::schema::complete_config(&schema, given)
            .map(|c| config_hash(&c))
            .unwrap_or_default()
    }

    /// Folds a succeeded job's measurements into its (target, configuration) profile.
    fn record_profile(&self, target: &str, samples: &Samples, took: Duration) {
        let hash = self.config_hash_of(target);
        let saved = match self.profiles.lock() {
            Ok(mut p) => p.record(target, &hash, samples, took.as_secs_f64() * 1e3),
            Err(_) => return,
        };
        self.journal.save_profile(saved);
    }

    /// Reads the RAM available every second while the jobs layer exists, and admits again
    /// when it changed.
    fn watch_ram(inner: &Arc<Self>) {
        let weak = Arc::downgrade(inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let snap = inner.manager.system_snapshot().await;
                let ram = if snap.ram_total_mb == 0 {
                    u64::MAX
                } else {
                    snap.ram_available_mb
                };
                let before = inner.ram_available_mb.swap(ram, Ordering::Relaxed);
                if before != ram {
                    // Jobs held for RAM may fit now.
                    let mut st = inner.lock();
                    inner.pump(&mut st);
                }
                drop(inner);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Whether a job of `target` that just ended should sample its worker: for its first
    /// few measured jobs always, then at most every [`PROGRESS_EVERY`] × 2.
    fn end_sample_due(&self, target: &str) -> bool {
        let young = self
            .profiles
            .lock()
            .map(|p| p.runs_of(target) < YOUNG_PROFILE_RUNS)
            .unwrap_or(true);
        let Ok(mut g) = self.end_sampled.lock() else {
            return young;
        };
        if young {
            g.insert(target.to_owned(), std::time::Instant::now());
            return true;
        }
        let now = std::time::Instant::now();
        match g.get(target) {
            Some(t) if now.duration_since(*t) < PROGRESS_EVERY * 2 => false,
            _ => {
                g.insert(target.to_owned(), now);
                true
            }
        }
    }

    /// One sample of the worker's RAM and GPU memory, and (`with_cpu`) its CPU use.
    async fn sample(&self, target: &str, samples: &mut Samples, with_cpu: bool) {
        if let Ok(u) = self.manager.resource_usage(target).await {
            let gpu: u64 = u.gpu_memory_mb.iter().map(|(_, mb)| mb).sum();
            samples.ram(u.ram_mb, gpu);
            if let Ok(mut r) = self.resident.lock() {
                r.insert(target.to_owned(), u.ram_mb);
            }
        }
        if with_cpu {
            if let Ok(Some(w)) = self.manager.stats(target).await.map(|s| s.worker) {
                samples.cpu(w.cpu_percent);
            }
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        job: &Job,
        cancel: &CancellationToken,
        samples: &mut Samples,
    ) -> Attempt {
        let m = &self.manager;
        let target = job.target.as_str();
        let timeout = job
            .options
            .deadline_ms
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms())));
        if timeout == Some(Duration::ZERO) {
            return Attempt::Done(Err(PluginError::timeout("the job's deadline passed")));
        }
        let mut opts = CallOptions::new().priority(job.options.priority);
        if let Some(t) = timeout {
            opts = opts.timeout(t);
        }
        // Tagged with the job's id: the worker's log lines for this call carry it.
        let mut call = job.call.to_call();
        call.ctx = std::mem::take(&mut call.ctx).with_tag(job.id.as_str());
        let exec = async {
            self.ensure_loaded(target).await?;
            m.execute_with(target, call, opts).await.map(|o| o.value)
        };
        // Boxed so that a forced cancel can drop the call before it respawns the worker.
        let mut exec = Box::pin(exec);
        // The first read after one period: a job that ends sooner costs no progress request.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(f64, String)> = None;
        loop {
            tokio::select! {
                r = &mut exec => {
                    // The worker's RAM right after the call, before it frees much; for jobs
                    // too short to be sampled while running, at most once a second per
                    // plugin, so that a stream of short jobs is not slowed by /proc reads.
                    if self.end_sample_due(target) {
                        self.sample(target, samples, false).await;
                    }
                    return Attempt::Done(r);
                }
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    self.sample(target, samples, true).await;
                    if let Ok(p) = m.progress(target).await {
                        let now = (p.progress, p.message.clone());
                        if last.as_ref() != Some(&now) && (p.progress > 0.0 || !p.message.is_empty()) {
                            self.event(&job.id, JobEventKind::Progress {
                                progress: (p.progress >= 0.0).then_some(p.progress),
                                message: (!p.message.is_empty()).then_some(p.message),
                            });
                        }
                        last = Some(now);
                    }
                }
            }
        }
        // Cancel: ask the worker, give it the grace period, then abandon the call and
        // respawn the worker.
        self.event(
            &job.id,
            JobEventKind::Cancelling {
                phase: CancelPhase::Cooperative,
            },
        );
        if let Err(e) = m.cancel(target).await {
            tracing::debug!(job = %job.id, error = %e, "the cooperative cancel was not delivered");
        }
        let stopped = tokio::time::timeout(self.opts.cancel_grace, &mut exec)
            .await
            .is_ok();
        if !stopped {
            // Abandon the call first: a respawn waits for the calls in flight.
            drop(exec);
            self.event(
                &job.id,
                JobEventKind::Cancelling {
                    phase: CancelPhase::Forced,
                },
            );
            if let Err(e) = m.reload(target, None).await {
                tracing::warn!(job = %job.id, plugin = target, error = %e, "respawning the worker after a forced cancel failed");
            }
        }
        Attempt::Cancelled
    }

    /// Loads `target` (with its saved configuration, else the defaults) unless it is loaded;
    /// concurrent jobs wait for one load.
    async fn ensure_loaded(&self, target: &str) -> Result<(), PluginError> {
        if self.manager.is_loaded(target) {
            return Ok(());
        }
        let gate = {
            let mut g = self
                .loading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(g.entry(target.to_owned()).or_default())
        };
        let _one = gate.lock().await;
        if self.manager.is_loaded(target) {
            return Ok(());
        }
        let config = match &self.opts.config {
            Some(source) => source(target)?,
            None => None,
        };
        self.manager.load(target, config).await
    }

    /// Rebuilds the jobs from the journal and resumes: see [`JobsBuilder::open`].
    fn recover(self: &Arc<Self>, events: Vec<JobEvent>) {
        let mut st = self.lock();
        let mut order: Vec<JobId> = Vec::new();
        for ev in events {
            match &ev.kind {
                JobEventKind::Submitted {
                    target,
                    call,
                    options,
                } => {
                    order.push(ev.job.clone());
                    st.jobs.insert(
                        ev.job.clone(),
                        Job::submitted(
                            ev.job.clone(),
                            ev.at_ms,
                            target.clone(),
                            call.clone(),
                            options.clone(),
                        ),
                    );
                }
                kind => {
                    if let Some(j) = st.jobs.get_mut(&ev.job) {
                        j.apply(ev.at_ms, kind);
                    }
                }
            }
        }
        let mut finished: Vec<(u64, JobId)> = Vec::new();
        let (mut resumed, mut interrupted, mut requeued) = (0, 0, 0);
        for id in order {
            let Some(job) = st.jobs.get(&id).cloned() else {
                continue;
            };
            if let Some(k) = &job.options.idempotency_key {
                st.by_key.insert(k.clone(), id.clone());
            }
            match job.state {
                JobState::Queued => {
                    resumed += 1;
                    let seq = st.seq;
                    self.enqueue(&mut st, &id, seq);
                }
                JobState::Running if job.options.idempotency_key.is_some() => {
                    requeued += 1;
                    self.emit(
                        &mut st,
                        &id,
                        JobEventKind::Requeued {
                            reason: "its host stopped while it ran; its idempotency key allows \
                                     running it again"
                                .into(),
                        },
                    );
                    let seq = st.seq;
                    self.enqueue(&mut st, &id, seq);
                }
                JobState::Running => {
                    interrupted += 1;
                    self.emit(
                        &mut st,
                        &id,
                        JobEventKind::Interrupted {
                            reason: "its host stopped while it ran".into(),
                        },
                    );
                }
                _ => finished.push((job.finished_ms.unwrap_or(job.submitted_ms), id)),
            }
        }
        finished.sort();
        let mut all: Vec<(u64, JobId)> = finished;
        all.extend(st.finished.drain(..));
        st.finished = all.into();
        self.retain(&mut st);
        if resumed + interrupted + requeued > 0 {
            tracing::info!(
                resumed,
                interrupted,
                requeued,
                "jobs recovered from the journal"
            );
        }
        self.pump(&mut st);
    }
}

enum Attempt {
    Done(Result<serde_json::Value, PluginError>),
    Cancelled,
}

impl From<JobError> for PluginError {
    fn from(e: JobError) -> Self {
        let category = match &e {
            JobError::UnknownTarget(_) | JobError::NotFound(_) => ErrorCategory::NotLoaded,
            JobError::Invalid(_) => ErrorCategory::UserInput,
            JobError::Journal(_) | JobError::JournalUnavailable(_) => ErrorCategory::Resource,
            JobError::Closed => ErrorCategory::Fatal,
        };
        PluginError::new(category, e.to_string())
    }
}
