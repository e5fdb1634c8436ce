//! The configuration endpoints: `/config_schema`, `/config` and `/initialize` (validated
//! against the schema before the plugin sees it; serialized; also the hot re-configure).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cjm_core::wire::StatusResponse;
use cjm_core::PluginError;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::decode::{bad_request, body_kind, is_blank, read_body};
use super::respond::{error, json};
use super::state::State;
use super::stream::Body;

/// `GET /config_schema`: the plugin's schema (`{}` when it gives none).
pub(super) async fn schema(state: &State) -> Response<Body> {
    json(StatusCode::OK, state.schema().await)
}

/// `GET /config`: the configuration in force.
pub(super) async fn current(state: &State) -> Response<Body> {
    let p = Arc::clone(&state.plugin);
    match state
        .on_plugin(async move { p.current_config().await })
        .await
    {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

/// `POST /initialize`: a JSON object, validated against the schema (`422` naming each field;
/// the previous configuration stays in force), then handed to the plugin.
pub(super) async fn initialize(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = body_kind(&req, false) {
        return r.into_response();
    }
    let body = match read_body(req, state.max_json_body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let config: Value = if is_blank(&body) {
        Value::Object(serde_json::Map::new())
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return bad_request(format!("malformed JSON body: {e}")).into_response(),
        }
    };
    if !config.is_object() {
        return error(&PluginError::config(
            "the configuration must be a JSON object",
            vec![],
        ));
    }
    let checked = match state.validator().await {
        Ok(v) => v.validate(&config),
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = checked {
        tracing::warn!("configuration refused: {e}");
        return error(&e);
    }
    let _serial = state.init_lock.lock().await;
    let p = Arc::clone(&state.plugin);
    match state
        .on_plugin(async move { p.initialize(config).await })
        .await
    {
        Ok(()) => {
            state.cleaned.store(false, Ordering::Relaxed);
            json(StatusCode::OK, &StatusResponse::new("ok"))
        }
        Err(e) => {
            tracing::warn!("initialize failed: {e}");
            error(&e)
        }
    }
}
