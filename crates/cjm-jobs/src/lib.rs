//! Durable jobs over a cjm [`PluginManager`](cjm_host::PluginManager).
//!
//! An application that transcribes a folder of files submits one job per file and gets:
//!
//! - **Submission** journaled before it is accepted ([`Jobs::submit`]), with a priority, a
//!   deadline, retries and an idempotency key ([`JobOptions`]).
//! - **Admission in lanes**: at most N jobs in flight (default 4) and M per plugin (default
//!   1), highest priority first. A job whose plugin is busy never holds back the jobs behind
//!   it.
//! - **Cancel** in phases ([`Jobs::cancel`]): a queued job leaves the queue; a running one is
//!   asked to stop, then abandoned with its worker respawned after a grace period.
//! - **Retries** of retriable errors with backoff.
//! - **Resource profiles** ([`Jobs::profiles`]): peak and mean RAM, GPU memory, CPU and
//!   duration per plugin (or instance) and configuration, updated after each job. A job of a
//!   configuration never measured runs alone the first time; a measured one waits until its
//!   peak RAM fits in the RAM available.
//! - **Events** on a bus with bounded per-subscriber queues ([`Jobs::watch`]).
//! - **Compositions** ([`Jobs::run_composition`]): a DAG of calls whose arguments take
//!   earlier results (`{"$ref": "node.field"}`), checked at submission (unknown nodes,
//!   cycles), each node run as a job.
//! - **Recovery**: the journal (SQLite, WAL, `<data_dir>/journal.db`) rebuilds the history at
//!   open. Queued jobs resume. Jobs that were running when the host died are marked
//!   `interrupted`, or run again when their idempotency key allows it. None is lost, and none
//!   runs twice silently.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cjm_jobs::{JobCall, JobOptions, Jobs};
//! let manager = cjm_host::PluginManager::builder().build()?;
//! let jobs = Jobs::open(manager)?;
//! let id = jobs
//!     .submit("whisper", JobCall::new(vec!["a.wav".into()]), JobOptions::new().retries(2))
//!     .await?;
//! let done = jobs.wait(&id).await?;
//! println!("{}: {:?}", done.state, done.result);
//! # Ok(()) }
//! ```

mod composition;
mod event;
mod job;
mod jobs;
mod journal;
mod profile;

pub use composition::{Composition, Node, NodeOutcome};
pub use event::{CancelPhase, JobEvent, JobEventKind, Subscription, SUBSCRIBER_QUEUE};
pub use job::{Job, JobCall, JobId, JobOptions, JobState};
pub use jobs::{JobError, JobFilter, Jobs, JobsBuilder};
pub use journal::JournalError;
pub use profile::Profile;
