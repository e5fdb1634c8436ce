//! The control endpoints, answered on the server's runtime while calls run: `/health`,
//! `/stats`, `/progress`, `/cancel`, `/cleanup`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cjm_core::wire::{content_types, StatusResponse};
use cjm_core::CancelOutcome;
use http::{Response, StatusCode};

use super::respond::{error, json, respond};
use super::state::{lock, State};
use super::stream::Body;

/// How long `/cancel` waits for the plugin's cancel hook.
const CANCEL_HOOK_WAIT: Duration = Duration::from_secs(1);

/// `GET /health`: the answer encoded at start.
pub(super) fn health(state: &State) -> Response<Body> {
    respond(
        StatusCode::OK,
        content_types::JSON,
        Body::Full(Some(state.health.clone())),
    )
}

/// `GET /stats`: counters and the process subtree's CPU and memory.
pub(super) fn stats(state: &State) -> Response<Body> {
    json(StatusCode::OK, &state.stats.sample())
}

/// `GET /progress`: the latest call's progress.
pub(super) fn progress(state: &State) -> Response<Body> {
    json(StatusCode::OK, &lock(&state.latest).get())
}

/// `POST /cancel`: cancels every running call, then asks the plugin's cancel hook (bounded).
pub(super) async fn cancel(state: &State) -> Response<Body> {
    let any = state.cancel_all();
    let p = Arc::clone(&state.plugin);
    let hook = tokio::time::timeout(
        CANCEL_HOOK_WAIT,
        state.on_plugin(async move { p.cancel().await }),
    )
    .await;
    let outcome = match hook {
        _ if any => CancelOutcome::Cancelled,
        Ok(Ok(o)) => o,
        Ok(Err(e)) => CancelOutcome::Error { detail: e.message },
        Err(_) => CancelOutcome::Error {
            detail: "the plugin's cancel hook did not return in time".to_owned(),
        },
    };
    tracing::info!(?outcome, "cancel requested");
    json(StatusCode::OK, &outcome)
}

/// `POST /cleanup`: the plugin's cleanup; shutdown then skips it unless a call or a
/// configuration comes first.
pub(super) async fn cleanup(state: &State) -> Response<Body> {
    let p = Arc::clone(&state.plugin);
    match state.on_plugin(async move { p.cleanup().await }).await {
        Ok(()) => {
            state.cleaned.store(true, Ordering::Relaxed);
            json(StatusCode::OK, &StatusResponse::new("cleaned"))
        }
        Err(e) => error(&e),
    }
}
