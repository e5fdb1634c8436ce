//! The jobs API under `/api/v1/jobs` (API.md): submit, list, show, cancel, wait, and the live
//! event stream (NDJSON), over the service's [`cjm_jobs::Jobs`].

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cjm_core::PluginError;
use cjm_jobs::{JobCall, JobError, JobFilter, JobId, JobOptions, JobState, Jobs};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::body;
use crate::error::ApiError;
use crate::service::Service;

type ApiResult = Result<Response, ApiError>;

/// The longest `wait` holds a request open before answering with the job as it stands.
const MAX_WAIT_S: f64 = 3600.0;

pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/api/v1/jobs", get(list).post(submit))
        .route("/api/v1/jobs/events", get(events))
        .route("/api/v1/jobs/profiles", get(profiles))
        .route("/api/v1/compositions", post(compose))
        .route("/api/v1/jobs/{id}", get(show))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/wait", get(wait))
        .route("/api/v1/jobs/{id}/logs", get(logs))
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        Self(PluginError::from(e))
    }
}

fn jobs(s: &Service) -> Result<&Jobs, ApiError> {
    s.jobs().map_err(|why| {
        ApiError(PluginError::new(
            cjm_core::ErrorCategory::Resource,
            format!("jobs are not available in this service: {why}"),
        ))
    })
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    JobId::parse(id).ok_or_else(|| {
        ApiError(PluginError::new(
            cjm_core::ErrorCategory::NotLoaded,
            format!("no job `{id}` (an id is 20 hex digits)"),
        ))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    target: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    retries: u32,
    /// Seconds from now.
    deadline_s: Option<f64>,
    idempotency_key: Option<String>,
}

async fn submit(State(s): State<Service>, b: Bytes) -> ApiResult {
    let b: SubmitBody = body(&b)?;
    if b.target.is_empty() {
        return Err(ApiError::bad_request(
            "invalid request body at `target`: the plugin to run the job on is required",
        ));
    }
    let mut opts = JobOptions::new().priority(b.priority).retries(b.retries);
    if let Some(d) = b.deadline_s {
        if !(d.is_finite() && (0.0..=100.0 * 365.25 * 86_400.0).contains(&d)) {
            return Err(ApiError::bad_request(format!(
                "invalid request body at `deadline_s`: {d} is not a number of seconds ≥ 0"
            )));
        }
        opts = opts.deadline_in(Duration::from_secs_f64(d));
    }
    if let Some(k) = b.idempotency_key {
        opts = opts.idempotency_key(k);
    }
    let call = JobCall {
        args: b.args,
        kwargs: b.kwargs,
    };
    let jobs = jobs(&s)?;
    let id = jobs.submit(&b.target, call, opts).await?;
    let job = jobs.get(&id);
    Ok((StatusCode::CREATED, Json(json!({"id": id, "job": job}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    target: Option<String>,
    limit: Option<usize>,
}

async fn list(State(s): State<Service>, Query(q): Query<ListQuery>) -> ApiResult {
    let state = match q.state.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<JobState>()
                .map_err(|e| ApiError::bad_request(format!("`state`: {e}")))?,
        ),
    };
    let filter = JobFilter {
        state,
        target: q.target,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
    };
    Ok(Json(json!({"jobs": jobs(&s)?.list(&filter)})).into_response())
}

/// Runs a composition (`cjm_jobs::Composition`: `{"nodes": {ID: {"target", "call", "options"}}}`)
/// and answers when every node has ended: `{"nodes": {ID: {"job", "state", "result", "error"}}}`.
/// A malformed composition (unknown node, cycle, …) is a `400` before anything runs.
async fn compose(State(s): State<Service>, b: Bytes) -> ApiResult {
    let comp: cjm_jobs::Composition = body(&b)?;
    let out = jobs(&s)?.run_composition(comp).await?;
    Ok(Json(json!({"nodes": out})).into_response())
}

/// The resource profiles measured so far.
async fn profiles(State(s): State<Service>) -> ApiResult {
    Ok(Json(json!({"profiles": jobs(&s)?.profiles()})).into_response())
}

async fn show(State(s): State<Service>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let job = jobs(&s)?
        .get(&id)
        .ok_or_else(|| ApiError::from(JobError::NotFound(id.to_string())))?;
    Ok(Json(job).into_response())
}

async fn cancel(State(s): State<Service>, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let state = jobs(&s)?.cancel(&id)?;
    Ok(Json(json!({"id": id, "state": state})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    timeout_s: Option<f64>,
}

/// The job once it has ended, or as it stands after `timeout_s` (default and at most an hour).
async fn wait(
    State(s): State<Service>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult {
    let id = job_id(&id)?;
    let limit = match q.timeout_s {
        None => MAX_WAIT_S,
        Some(t) if t.is_finite() && t >= 0.0 => t.min(MAX_WAIT_S),
        Some(t) => {
            return Err(ApiError::bad_request(format!(
                "`timeout_s`: {t} is not a number of seconds ≥ 0"
            )))
        }
    };
    let jobs = jobs(&s)?;
    let job = match tokio::time::timeout(Duration::from_secs_f64(limit), jobs.wait(&id)).await {
        Ok(done) => done?,
        Err(_) => jobs
            .get(&id)
            .ok_or_else(|| ApiError::from(JobError::NotFound(id.to_string())))?,
    };
    Ok(Json(job).into_response())
}

/// The worker's log lines tagged with the job (`cjm_jobs::Jobs::logs`).
async fn logs(
    State(s): State<Service>,
    Path(id): Path<String>,
    Query(q): Query<crate::api::LogQuery>,
) -> ApiResult {
    let id = job_id(&id)?;
    let lines = jobs(&s)?.logs(&id, q.lines())?;
    Ok(Json(json!({"lines": lines})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    job: Option<String>,
}

/// Live events as NDJSON, one per line: every job's, or one job's (then the stream starts with
/// the job as it stands, `{"type": "snapshot", "job": …}`, and ends after its last event).
async fn events(State(s): State<Service>, Query(q): Query<EventsQuery>) -> ApiResult {
    let jobs = jobs(&s)?;
    let id = q.job.as_deref().map(job_id).transpose()?;
    let sub = jobs.watch(id.clone());
    let first = match &id {
        Some(id) => {
            let job = jobs
                .get(id)
                .ok_or_else(|| ApiError::from(JobError::NotFound(id.to_string())))?;
            let done = job.state.is_terminal();
            Some((json!({"type": "snapshot", "job": job}), done))
        }
        None => None,
    };
    let lines =
        futures::stream::unfold((sub, first, false), |(mut sub, first, ended)| async move {
            if ended {
                return None;
            }
            let (v, end) = match first {
                Some((v, done)) => (v, done),
                None => {
                    let ev = sub.next().await?;
                    let done = ev.kind.is_terminal();
                    (
                        serde_json::to_value(&ev).unwrap_or(Value::Null),
                        done && is_one_job(&sub),
                    )
                }
            };
            let mut text = v.to_string();
            text.push('\n');
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(text)),
                (sub, None, end),
            ))
        });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

fn is_one_job(sub: &cjm_jobs::Subscription) -> bool {
    sub.job().is_some()
}
