//! A job: what it runs ([`JobCall`] on a target), how ([`JobOptions`]), and where it stands
//! ([`Job`], [`JobState`]).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use cjm_core::PluginError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{CancelPhase, JobEventKind};

/// A job's id: 20 lowercase hex digits, time-ordered (milliseconds, then randomness).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A new id: the time in milliseconds, then a counter that starts at a random value in
    /// each process, so ids of one host sort in submission order.
    pub(crate) fn generate() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::OnceLock;
        static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
        let counter = COUNTER.get_or_init(|| {
            let mut r = [0u8; 4];
            let _ = getrandom::fill(&mut r);
            // The top bit clear: two billion ids before the counter wraps.
            AtomicU32::new(u32::from_be_bytes(r) >> 1)
        });
        let n = counter.fetch_add(1, Ordering::Relaxed);
        Self(format!("{:012x}{n:08x}", now_ms()))
    }

    /// Parses an id as printed; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 20
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a job stands. `queued` → `running` → one of the four terminal states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a lane.
    Queued,
    /// Running (or between retries).
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Cancelled on request.
    Cancelled,
    /// Running when its host died; not run again (no idempotency key allowed it).
    Interrupted,
}

impl JobState {
    /// True for the four terminal states.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The state's name (`"queued"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::Interrupted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown job state `{s}`; expected queued, running, succeeded, failed, \
                 cancelled or interrupted"
            )
        })
    }
}

/// What a job calls: the plugin call's arguments (binary payloads are not journaled, so jobs
/// carry none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobCall {
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl JobCall {
    /// A call with these positional arguments.
    pub fn new(args: Vec<Value>) -> Self {
        Self {
            args,
            kwargs: Map::new(),
        }
    }

    /// Adds a keyword argument.
    pub fn kwarg(mut self, key: impl Into<String>, value: Value) -> Self {
        self.kwargs.insert(key.into(), value);
        self
    }

    pub(crate) fn to_call(&self) -> cjm_core::Call {
        let mut c = cjm_core::Call::new(self.args.clone());
        c.kwargs = self.kwargs.clone();
        c
    }
}

/// How a job runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// Higher runs first (then earlier submission).
    #[serde(default)]
    pub priority: i32,
    /// Wall-clock deadline, milliseconds since the Unix epoch: not started by then → failed
    /// (`timeout`); running then → its call times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// How many times a retriable failure is retried (with backoff).
    #[serde(default)]
    pub retries: u32,
    /// Submitting again with the same key returns the same job while it is not failed,
    /// cancelled or interrupted; a job with a key is run again after its host died instead
    /// of being marked interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl JobOptions {
    /// Priority 0, no deadline, no retries, no key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }

    /// Sets the number of retries.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Sets the deadline `after` from now.
    pub fn deadline_in(mut self, after: std::time::Duration) -> Self {
        self.deadline_ms = Some(now_ms().saturating_add(after.as_millis() as u64));
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// A job as it stands: what [`crate::Jobs::get`] and `list` return. Times are milliseconds
/// since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The plugin it runs on.
    pub target: String,
    /// The call.
    pub call: JobCall,
    /// Its options.
    pub options: JobOptions,
    /// Its state.
    pub state: JobState,
    /// When it was submitted.
    pub submitted_ms: u64,
    /// When it (last) started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Attempts started so far.
    pub attempts: u32,
    /// The worker's last reported progress, 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// The last progress message, retry note or cancel phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The cancel phase reached, when it is being or was cancelled while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_phase: Option<CancelPhase>,
    /// The result of a succeeded job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error of a failed job (the last one, after retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PluginError>,
}

impl Job {
    /// A job as submitted.
    pub(crate) fn submitted(
        id: JobId,
        at: u64,
        target: String,
        call: JobCall,
        options: JobOptions,
    ) -> Self {
        Self {
            id,
            target,
            call,
            options,
            state: JobState::Queued,
            submitted_ms: at,
            started_ms: None,
            finished_ms: None,
            attempts: 0,
            progress: None,
            message: None,
            cancel_phase: None,
            result: None,
            error: None,
        }
    }

    /// Applies one event (live, or replayed from the journal).
    pub(crate) fn apply(&mut self, at: u64, kind: &JobEventKind) {
        match kind {
            JobEventKind::Submitted { .. } => {}
            JobEventKind::Admitted { .. } => {}
            JobEventKind::Started { attempt } => {
                self.state = JobState::Running;
                self.attempts = *attempt;
                self.started_ms = Some(at);
            }
            JobEventKind::Progress { progress, message } => {
                self.progress = *progress;
                if message.is_some() {
                    self.message.clone_from(message);
                }
            }
            JobEventKind::Retrying {
                attempt,
                error,
                after_ms,
            } => {
                self.message = Some(format!(
                    "attempt {attempt} failed ({}); retrying in {after_ms} ms",
                    error.message
                ));
            }
            JobEventKind::Recovering {
                attempt, evicted, ..
            } => {
                self.message = Some(if evicted.is_empty() {
                    format!("attempt {attempt}: worker out of memory; retrying once")
                } else {
                    format!(
                        "attempt {attempt}: worker out of memory; evicted {}; retrying once",
                        evicted.join(", ")
                    )
                });
            }
            JobEventKind::Cancelling { phase } => {
                self.cancel_phase = Some(*phase);
                self.message = Some(format!("cancelling: {}", phase.as_str()));
            }
            JobEventKind::Succeeded { result } => {
                self.finish(JobState::Succeeded, at);
                self.result = Some(result.clone());
                self.progress = Some(1.0);
            }
            JobEventKind::Failed { error } => {
                self.finish(JobState::Failed, at);
                self.error = Some(error.clone());
            }
            JobEventKind::Cancelled => {
                self.finish(JobState::Cancelled, at);
                self.message = Some(match self.cancel_phase {
                    Some(p) => format!("cancelled ({})", p.as_str()),
                    None => "cancelled before it started".to_owned(),
                });
            }
            JobEventKind::Interrupted { reason } => {
                self.finish(JobState::Interrupted, at);
                self.message = Some(reason.clone());
            }
            JobEventKind::Requeued { reason } => {
                self.state = JobState::Queued;
                self.message = Some(reason.clone());
            }
        }
    }

    fn finish(&mut self, state: JobState, at: u64) {
        self.state = state;
        self.finished_ms = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_parsable_and_unique() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert!(a < b, "{a} then {b}");
        assert_eq!(JobId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.as_str().len(), 20);
        for bad in ["", "xyz", "0123456789abcdef012G", "0123456789ABCDEF0123"] {
            assert_eq!(JobId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn states_parse_and_print() {
        for s in [
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "interrupted",
        ] {
            let st: JobState = s.parse().unwrap();
            assert_eq!(st.as_str(), s);
            assert_eq!(st.is_terminal(), !matches!(s, "queued" | "running"));
        }
        assert!("done".parse::<JobState>().unwrap_err().contains("done"));
    }
}
