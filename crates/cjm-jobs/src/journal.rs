//! The durable journal: an append-only SQLite database (WAL) of every job event and of the
//! workers' lives (plus a small table of the resource profiles, one row per target and
//! configuration), written in batched transactions (group commit) by one thread — or, for a
//! submission that finds nobody writing, by the submitting task itself, which saves two thread
//! wake-ups. A submission waits until its event is committed; later events are written in
//! order without waiting. An exclusive lock file keeps a second host off the same journal, so
//! no job runs twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use crate::event::{JobEvent, JobEventKind};
use crate::job::JobId;
use crate::profile::Profile;

/// Why the journal cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the job journal {path}: {reason}")]
pub struct JournalError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// One row: a job event, or a record about a worker (`job` absent).
pub(crate) struct Row {
    pub seq: u64,
    pub at_ms: u64,
    pub job: Option<JobId>,
    pub kind: &'static str,
    pub body: String,
}

impl Row {
    pub(crate) fn of(ev: &JobEvent) -> Self {
        Self {
            seq: ev.seq,
            at_ms: ev.at_ms,
            job: Some(ev.job.clone()),
            kind: ev.kind.name(),
            body: serde_json::to_string(&ev.kind).unwrap_or_else(|_| "{}".into()),
        }
    }
}

type Ack = oneshot::Sender<Result<(), String>>;

enum Cmd {
    Append(Vec<Row>, Option<Ack>),
    Forget(Vec<JobId>),
    /// Deletes the rows about workers older than this (ms since the epoch).
    Prune(u64),
    Profile(Box<Profile>),
    Flush(oneshot::Sender<()>),
}

/// The journal's writer.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    path: PathBuf,
    thread: Mutex<Option<JoinHandle<()>>>,
    lock: Mutex<Option<std::fs::File>>,
}

/// What the writer thread and the submitting tasks share. Commands are taken from `queue`
/// only by whoever holds `conn`, so they are written in the order they were queued.
struct Shared {
    queue: Mutex<Queue>,
    /// Signals the writer thread that `queue` has commands (or closed).
    ready: Condvar,
    /// The database; `None` once closed.
    conn: Mutex<Option<Connection>>,
    broken: Mutex<Option<String>>,
    /// Commits since the last checkpoint.
    commits: AtomicU64,
}

#[derive(Default)]
struct Queue {
    cmds: Vec<Cmd>,
    /// A queued command is waited on (a durable append, a flush).
    urgent: bool,
    /// The writer sleeps until woken (nothing queued when it looked).
    writer_idle: bool,
    closed: bool,
}

impl Shared {
    /// The queued commands, at most [`BATCH`] (call with `conn` held).
    fn take(&self, first: Option<Cmd>) -> Vec<Cmd> {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = q.cmds.len().min(BATCH);
        let mut batch: Vec<Cmd> = q.cmds.drain(..n).collect();
        q.urgent = q
            .cmds
            .iter()
            .any(|c| matches!(c, Cmd::Append(_, Some(_)) | Cmd::Flush(_)));
        batch.extend(first);
        batch
    }

    /// Writes `batch` in one transaction and answers its acknowledgements.
    fn commit(&self, conn: &mut Connection, batch: Vec<Cmd>) {
        let result = write(conn, &batch).map_err(|e| e.to_string());
        if self.commits.fetch_add(1, Ordering::Relaxed) + 1 == CHECKPOINT_EVERY {
            // Time for a checkpoint: the writer thread does it.
            self.ready.notify_one();
        }
        if let Err(why) = &result {
            tracing::error!(error = %why, "the job journal cannot be written");
            if let Ok(mut g) = self.broken.lock() {
                *g = Some(why.clone());
            }
        }
        for cmd in batch {
            match cmd {
                Cmd::Append(_, Some(ack)) => {
                    let _ = ack.send(result.clone());
                }
                Cmd::Flush(done) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
    }
}

/// What the journal held at open.
pub(crate) struct Replay {
    /// Every job event, in order.
    pub events: Vec<JobEvent>,
    /// The highest sequence number in use.
    pub last_seq: u64,
    /// Rows that could not be read (skipped).
    pub unreadable: usize,
    /// The saved resource profiles.
    pub profiles: Vec<Profile>,
}

/// The most commands one transaction takes.
const BATCH: usize = 4096;

/// Commits between two WAL checkpoints (SQLite's own automatic ones are off: they would run
/// in whichever task commits).
const CHECKPOINT_EVERY: u64 = 256;

/// How long the writer gathers events nobody waits on before it commits them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

impl Journal {
    /// Opens (creating) the journal at `path`, takes its lock, and reads it back.
    pub(crate) fn open(path: &Path) -> Result<(Self, Replay), JournalError> {
        let err = |reason: String| JournalError {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
        match fs4::FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(err(
                    "another host has it open (one host per data directory runs jobs)".into(),
                ))
            }
            Err(fs4::TryLockError::Error(e)) => {
                return Err(err(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
        let conn = Connection::open(path).map_err(|e| err(e.to_string()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE IF NOT EXISTS events (
                 seq   INTEGER PRIMARY KEY,
                 at_ms INTEGER NOT NULL,
                 job   TEXT,
                 kind  TEXT NOT NULL,
                 body  TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS events_job ON events(job);
             CREATE TABLE IF NOT EXISTS profiles (
                 target      TEXT NOT NULL,
                 config_hash TEXT NOT NULL,
                 body        TEXT NOT NULL,
                 PRIMARY KEY (target, config_hash)
             );",
        )
        .map_err(|e| err(e.to_string()))?;
        let replay = read_back(&conn).map_err(|e| err(e.to_string()))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            conn: Mutex::new(Some(conn)),
            broken: Mutex::new(None),
            commits: AtomicU64::new(0),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("cjm-journal".into())
                .spawn(move || writer(&shared))
                .map_err(|e| err(format!("cannot start its writer: {e}")))?
        };
        Ok((
            Self {
                shared,
                path: path.to_path_buf(),
                thread: Mutex::new(Some(thread)),
                lock: Mutex::new(Some(lock)),
            },
            replay,
        ))
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Why the journal stopped working, if it did.
    pub(crate) fn broken(&self) -> Option<String> {
        self.shared.broken.lock().ok().and_then(|g| g.clone())
    }

    fn send(&self, cmd: Cmd) -> bool {
        let Ok(mut q) = self.shared.queue.lock() else {
            return false;
        };
        if q.closed {
            return false;
        }
        // Someone waits on it: wake the writer now, not after its gathering pause.
        let urgent = matches!(cmd, Cmd::Append(_, Some(_)) | Cmd::Flush(_));
        q.urgent |= urgent;
        q.cmds.push(cmd);
        // Wake the writer when it sleeps with no deadline, or when it must not wait out its
        // gathering pause; otherwise it finds the command when the pause ends.
        if q.writer_idle || urgent || q.cmds.len() >= BATCH {
            q.writer_idle = false;
            self.shared.ready.notify_one();
        }
        true
    }

    /// Queues rows; they are written in order, without waiting.
    pub(crate) fn append(&self, rows: Vec<Row>) {
        if !self.send(Cmd::Append(rows, None)) {
            tracing::warn!(path = %self.path.display(), "the job journal is closed: events not recorded");
        }
    }

    /// Writes rows durably and returns what resolves once they are committed (or failed).
    /// When nobody is writing, the caller commits them at once, with whatever was queued
    /// before (a WAL commit without fsync: microseconds), instead of waking the writer thread
    /// and waiting to be woken; otherwise they join the writer's next batch.
    pub(crate) fn append_durable(&self, rows: Vec<Row>) -> oneshot::Receiver<Result<(), String>> {
        let (ack, rx) = oneshot::channel();
        if let Some(why) = self.broken() {
            let _ = ack.send(Err(why));
            return rx;
        }
        let cmd = Cmd::Append(rows, Some(ack));
        if let Ok(mut conn) = self.shared.conn.try_lock() {
            if let Some(c) = conn.as_mut() {
                let batch = self.shared.take(Some(cmd));
                self.shared.commit(c, batch);
            }
            // Closed: the sender is dropped with the command and the receiver sees it.
            return rx;
        }
        // The sender is dropped with the command if the journal is closed.
        self.send(cmd);
        rx
    }

    /// Deletes every record of these jobs (retention).
    pub(crate) fn forget(&self, jobs: Vec<JobId>) {
        if !jobs.is_empty() {
            self.send(Cmd::Forget(jobs));
        }
    }

    /// Deletes the rows about workers (not about jobs) older than `before_ms` (retention).
    pub(crate) fn prune(&self, before_ms: u64) {
        self.send(Cmd::Prune(before_ms));
    }

    /// Saves a resource profile as it now stands.
    pub(crate) fn save_profile(&self, profile: Profile) {
        self.send(Cmd::Profile(Box::new(profile)));
    }

    /// Waits until everything queued so far is written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Cmd::Flush(tx)) {
            let _ = rx.await;
        }
    }

    /// Stops the writer after it has written everything queued, and releases the lock so
    /// another host may open the journal.
    pub(crate) fn close(&self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.ready.notify_one();
        if let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) {
            let _ = t.join();
        }
        if let Ok(mut g) = self.shared.conn.lock() {
            g.take();
        }
        if let Ok(mut g) = self.lock.lock() {
            g.take();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_back(conn: &Connection) -> rusqlite::Result<Replay> {
    let last_seq: u64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
        r.get::<_, i64>(0).map(|v| v.max(0) as u64)
    })?;
    let mut stmt = conn
        .prepare("SELECT seq, at_ms, job, body FROM events WHERE job IS NOT NULL ORDER BY seq")?;
    let mut events = Vec::new();
    let mut unreadable = 0;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (seq, at_ms, job, body) = row?;
        match (
            JobId::parse(&job),
            serde_json::from_str::<JobEventKind>(&body),
        ) {
            (Some(job), Ok(kind)) => events.push(JobEvent {
                seq: seq.max(0) as u64,
                at_ms: at_ms.max(0) as u64,
                job,
                kind,
            }),
            _ => {
                unreadable += 1;
                tracing::warn!(seq, "an unreadable job-journal row was skipped");
            }
        }
    }
    let mut profiles = Vec::new();
    let mut stmt = conn.prepare("SELECT body FROM profiles ORDER BY target, config_hash")?;
    for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
        match serde_json::from_str::<Profile>(&body?) {
            Ok(p) => profiles.push(p),
            Err(e) => {
                unreadable += 1;
                tracing::warn!(error = %e, "an unreadable saved profile was skipped");
            }
        }
    }
    Ok(Replay {
        events,
        last_seq,
        unreadable,
        profiles,
    })
}

/// The writer thread: sleeps until commands are queued, then writes them in batches (group
/// commit) until the queue is empty and closed.
fn writer(shared: &Shared) {
    loop {
        {
            let mut q = shared
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while q.cmds.is_empty()
                && !q.closed
                && shared.commits.load(Ordering::Relaxed) < CHECKPOINT_EVERY
            {
                q.writer_idle = true;
                q = shared
                    .ready
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            q.writer_idle = false;
            if q.cmds.is_empty() && q.closed {
                return; // closed, and everything written
            }
            // Events nobody waits on: gather more for a moment, so that a busy host commits
            // (and wakes this thread) once per pause rather than once per event.
            let until = std::time::Instant::now() + GATHER;
            while !q.cmds.is_empty() && !q.urgent && !q.closed && q.cmds.len() < BATCH {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                q = shared
                    .ready
                    .wait_timeout(q, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        let mut conn = shared
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(c) = conn.as_mut() else { return };
        let batch = shared.take(None);
        if !batch.is_empty() {
            shared.commit(c, batch);
        }
        // Checkpoints are this thread's work, never a submitter's.
        if shared.commits.load(Ordering::Relaxed) >= CHECKPOINT_EVERY {
            shared.commits.store(0, Ordering::Relaxed);
            if let Err(e) = c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                tracing::warn!(error = %e, "the job journal's checkpoint failed");
            }
        }
    }
}

fn write(conn: &mut Connection, batch: &[Cmd]) -> rusqlite::Result<()> {
    let t = conn.transaction()?;
    {
        let mut insert = t.prepare_cached(
            "INSERT OR REPLACE INTO events (seq, at_ms, job, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut delete = t.prepare_cached("DELETE FROM events WHERE job = ?1")?;
        let mut prune = t.prepare_cached("DELETE FROM events WHERE job IS NULL AND at_ms < ?1")?;
        let mut profile = t.prepare_cached(
            "INSERT OR REPLACE INTO profiles (target, config_hash, body) VALUES (?1, ?2, ?3)",
        )?;
        for cmd in batch {
            match cmd {
                Cmd::Append(rows, _) => {
                    for r in rows {
                        insert.execute(params![
                            r.seq as i64,
                            r.at_ms as i64,
                            r.job.as_ref().map(JobId::as_str),
                            r.kind,
                            r.body
                        ])?;
                    }
                }
                Cmd::Forget(jobs) => {
                    for j in jobs {
                        delete.execute(params![j.as_str()])?;
                    }
                }
                Cmd::Prune(before) => {
                    prune.execute(params![i64::try_from(*before).unwrap_or(i64::MAX)])?;
                }
                Cmd::Profile(p) => {
                    let body = serde_json::to_string(p).unwrap_or_else(|_| "{}".into());
                    profile.execute(params![p.target, p.config_hash, body])?;
                }
                Cmd::Flush(_) => {}
            }
        }
    }
    t.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, job: &JobId) -> JobEvent {
        JobEvent {
            seq,
            at_ms: 7,
            job: job.clone(),
            kind: JobEventKind::Started { attempt: 1 },
        }
    }

    #[tokio::test]
    async fn events_survive_a_reopen_and_forget_removes_a_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let (a, b) = (JobId::generate(), JobId::generate());
        {
            let (j, replay) = Journal::open(&path).unwrap();
            assert!(replay.events.is_empty());
            j.append_durable(vec![Row::of(&event(1, &a))])
                .await
                .unwrap()
                .unwrap();
            j.append(vec![Row::of(&event(2, &b)), Row::of(&event(3, &a))]);
            j.append(vec![Row {
                seq: 4,
                at_ms: 1,
                job: None,
                kind: "worker",
                body: "{}".into(),
            }]);
            // A second host is refused while this one has it.
            let e = Journal::open(&path).err().unwrap();
            assert!(e.reason.contains("another host"), "{e}");
            j.flush().await;
        }
        let (j, replay) = Journal::open(&path).unwrap();
        let seqs: Vec<u64> = replay.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(replay.last_seq, 4);
        j.forget(vec![a]);
        // The worker row (at 1 ms) ages out; a saved profile is kept, the last one wins.
        j.prune(2);
        let profile = |runs| Profile {
            target: "w".into(),
            config_hash: "h".into(),
            runs,
            ..Profile::default()
        };
        j.save_profile(profile(1));
        j.save_profile(profile(2));
        j.flush().await;
        drop(j);
        let (_j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.events.len(), 1);
        assert_eq!(replay.events[0].job, b);
        assert_eq!(replay.profiles, vec![profile(2)]);
        let conn = Connection::open(&path).unwrap();
        let workers: i64 = conn
            .query_row("SELECT COUNT(*) FROM events WHERE job IS NULL", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(workers, 0);
    }

    #[test]
    fn a_journal_that_cannot_be_created_says_where() {
        let e = Journal::open(Path::new("/proc/no/such/journal.db"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/proc/no/such"), "{e}");
    }
}
