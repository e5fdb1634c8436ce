//! The JSON API under `/api/v1` (API.md): plugins, load/unload/reload, enable/disable, calls
//! and streams, configuration, stats and logs.
//!
//! A call to a plugin that is not loaded loads it first with its saved configuration, and it
//! stays loaded: the next call reuses its worker.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cjm_core::wire::StreamLine;
use cjm_core::PluginError;
use cjm_host::{Call, CallContext, PluginManager};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::service::Service;

/// The largest request body accepted: 16 MiB (larger payloads belong to a worker's frames).
pub const MAX_BODY: usize = 16 << 20;

/// The longest `timeout_s` accepted: 100 years.
const MAX_TIMEOUT_S: f64 = 100.0 * 365.25 * 86_400.0;

/// Lines of a plugin's log returned when `lines` is not given; at most [`MAX_LOG_LINES`].
const DEFAULT_LOG_LINES: usize = 100;
const MAX_LOG_LINES: usize = 10_000;

type ApiResult = Result<Response, ApiError>;

pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/api/v1/plugins", get(list))
        .route("/api/v1/plugins/{name}", get(show))
        .route("/api/v1/plugins/{name}/load", post(load))
        .route("/api/v1/plugins/{name}/instances", post(add_instance))
        .route("/api/v1/plugins/{name}/unload", post(unload))
        .route("/api/v1/plugins/{name}/reload", post(reload))
        .route("/api/v1/plugins/{name}/refresh", post(refresh))
        .route("/api/v1/plugins/{name}/enable", post(enable))
        .route("/api/v1/plugins/{name}/disable", post(disable))
        .route("/api/v1/plugins/{name}/call", post(call))
        .route("/api/v1/plugins/{name}/stream", post(stream))
        .route(
            "/api/v1/plugins/{name}/config",
            get(config_get).put(config_put),
        )
        .route("/api/v1/plugins/{name}/stats", get(stats))
        .route("/api/v1/plugins/{name}/logs", get(logs))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// A JSON body, or `{}` when there is none; otherwise a `user_input` error naming what is
/// wrong (`Json`'s own rejection is plain text).
pub(crate) fn body<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        ApiError::bad_request(format!("invalid request body{at}: {}", e.inner()))
    })
}

fn plugin_json(m: &PluginManager, name: &str) -> Value {
    let manifest = m
        .discovered_manifest(name)
        .or_else(|| m.loaded_manifest(name));
    json!({
        "name": name,
        "version": manifest.as_ref().map(|m| m.version.clone()),
        "category": manifest.as_ref().map(|m| m.category.clone()),
        "description": manifest.as_ref().map(|m| m.description.clone()),
        "loaded": m.is_loaded(name),
        "state": m.state(name).map(|s| s.as_str()),
        "pid": m.pid(name),
        "instance_of": m.instance_of(name),
        "instances": m.instances(name),
    })
}

async fn list(State(s): State<Service>) -> Json<Value> {
    let m = s.manager();
    let plugins: Vec<Value> = m
        .discovered()
        .iter()
        .map(|p| plugin_json(m, &p.name))
        .collect();
    let invalid: Vec<Value> = m
        .invalid_manifests()
        .iter()
        .map(|e| json!({"file": e.file, "problems": e.problems}))
        .collect();
    Json(json!({"plugins": plugins, "invalid": invalid}))
}

async fn show(State(s): State<Service>, Path(name): Path<String>) -> ApiResult {
    if s.manager().instance_of(&name).is_none() {
        s.manager().require_discovered(&name)?;
    }
    Ok(Json(plugin_json(s.manager(), &name)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceBody {
    /// The instance id; generated when absent.
    instance: Option<String>,
    /// Its configuration; default: the plugin's saved one.
    config: Option<Map<String, Value>>,
}

/// Loads another worker of `name` as an instance (`cjm_host::PluginManager::load_instance`).
async fn add_instance(State(s): State<Service>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let b: InstanceBody = body(&b)?;
    let config = config_for(&s, &name, b.config)?;
    let id = s
        .manager()
        .load_instance(&name, b.instance.as_deref(), Some(config))
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(plugin_json(s.manager(), &id)),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    /// The configuration; default: the saved one over the schema's defaults.
    config: Option<Map<String, Value>>,
}

/// The registry id of the plugin `name` (configurations are kept by id).
fn registry_id(s: &Service, name: &str) -> Result<String, ApiError> {
    registry_id_in(&s.inner.app, name).map_err(ApiError)
}

fn registry_id_in(app: &cjm_ui::AppState, name: &str) -> Result<String, PluginError> {
    app.manager().require_discovered(name)?;
    app.registry()
        .plugins()
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.unique_id())
        .ok_or_else(|| PluginError::not_loaded(name))
}

/// The configuration a plugin is loaded with when none is given: the saved one (checked
/// against its schema) over the schema's defaults. What calls and jobs of a service use.
pub fn saved_config(app: &cjm_ui::AppState, name: &str) -> Result<Value, PluginError> {
    let id = registry_id_in(app, name)?;
    let reg = app.registry();
    reg.load_valid_plugin_config(&id)
        .map_err(|e| ApiError::from(e).0)?;
    Ok(Value::Object(
        reg.effective_plugin_config(&id)
            .map_err(|e| ApiError::from(e).0)?,
    ))
}

/// The configuration a load of `name` uses: `given`, else the saved one (checked against the
/// schema) over the schema's defaults.
fn config_for(
    s: &Service,
    name: &str,
    given: Option<Map<String, Value>>,
) -> Result<Value, ApiError> {
    if let Some(c) = given {
        return Ok(Value::Object(c));
    }
    saved_config(&s.inner.app, name).map_err(ApiError)
}

async fn load(State(s): State<Service>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let b: LoadBody = body(&b)?;
    let config = config_for(&s, &name, b.config)?;
    s.manager().load(&name, Some(config)).await?;
    Ok(Json(plugin_json(s.manager(), &name)).into_response())
}

async fn reload(State(s): State<Service>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let b: LoadBody = body(&b)?;
    let config = config_for(&s, &name, b.config)?;
    s.manager().reload(&name, Some(config)).await?;
    Ok(Json(plugin_json(s.manager(), &name)).into_response())
}

async fn unload(State(s): State<Service>, Path(name): Path<String>) -> ApiResult {
    s.manager().unload(&name).await?;
    Ok(Json(plugin_json(s.manager(), &name)).into_response())
}

/// Recomputes the worker's environment (secrets, env vars) and respawns it only when that
/// changed (`cjm secret set` calls this on a running service).
async fn refresh(State(s): State<Service>, Path(name): Path<String>) -> ApiResult {
    s.manager().require_discovered(&name)?;
    let respawned = if s.manager().is_loaded(&name) {
        s.manager().refresh_environment(&name).await?
    } else {
        false
    };
    let mut v = plugin_json(s.manager(), &name);
    v["respawned"] = json!(respawned);
    Ok(Json(v).into_response())
}

async fn enable(State(s): State<Service>, Path(name): Path<String>) -> ApiResult {
    s.manager().enable_notified(&name).await?;
    Ok(Json(plugin_json(s.manager(), &name)).into_response())
}

async fn disable(State(s): State<Service>, Path(name): Path<String>) -> ApiResult {
    s.manager().disable_notified(&name).await?;
    Ok(Json(plugin_json(s.manager(), &name)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    /// Give up after this many seconds (the call is cancelled in the worker).
    timeout_s: Option<f64>,
}

impl CallBody {
    fn into_call(self) -> Result<Call, ApiError> {
        let deadline = match self.timeout_s {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_S => {
                Instant::now().checked_add(Duration::from_secs_f64(t))
            }
            Some(t) => {
                return Err(ApiError::bad_request(format!(
                    "invalid request body at `timeout_s`: {t} is not a positive number of seconds"
                )))
            }
        };
        let ctx = CallContext::new().with_deadline(deadline);
        Ok(Call::new(self.args).with_kwargs(self.kwargs).with_ctx(ctx))
    }
}

/// Loads `name` with its saved configuration unless it is loaded already. Loads on demand
/// take turns, so concurrent first calls start one worker.
async fn ensure_loaded(s: &Service, name: &str) -> Result<(), ApiError> {
    if s.manager().is_loaded(name) {
        return Ok(());
    }
    let _turn = s.inner.loading.lock().await;
    if s.manager().is_loaded(name) {
        return Ok(());
    }
    let config = config_for(s, name, None)?;
    s.manager().load(name, Some(config)).await?;
    Ok(())
}

async fn call(State(s): State<Service>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let call = body::<CallBody>(&b)?.into_call()?;
    ensure_loaded(&s, &name).await?;
    let timer = s.inner.metrics.call(&name);
    // The worker's JSON goes out as it came: checked, not parsed and written again.
    let out = s.manager().execute_raw(&name, call).await;
    timer.finish(out.as_ref().err().map(|e| e.category));
    let out = out?;
    let tail = format!(",\"blobs\":{}}}", out.blobs.len());
    let mut body = Vec::with_capacity(9 + out.json.len() + tail.len());
    body.extend_from_slice(b"{\"value\":");
    body.extend_from_slice(&out.json);
    body.extend_from_slice(tail.as_bytes());
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

async fn stream(State(s): State<Service>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let call = body::<CallBody>(&b)?.into_call()?;
    ensure_loaded(&s, &name).await?;
    let timer = s.inner.metrics.call(&name);
    let chunks = match s.manager().execute_stream(&name, call).await {
        Ok(c) => c,
        Err(e) => {
            timer.finish(Some(e.category));
            return Err(e.into());
        }
    };
    // Lines as a cjm worker writes them (PROTOCOL.md §6): chunks, then the end line or an
    // error line. A client that goes away drops the stream, which cancels the call.
    let lines = futures::stream::unfold(
        (chunks, 0u64, Some(timer)),
        |(mut chunks, n, mut timer)| async move {
            let t = timer.take()?;
            let (line, next) = match chunks.next().await {
                Some(Ok(v)) => (StreamLine::Chunk(v), Some(t)),
                Some(Err(e)) => {
                    t.finish(Some(e.category));
                    (StreamLine::Error(e), None)
                }
                None => {
                    t.finish(None);
                    (StreamLine::End { chunks: n }, None)
                }
            };
            let mut text = line.to_json().to_string();
            text.push('\n');
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(text)),
                (chunks, n + 1, next),
            ))
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn config_get(State(s): State<Service>, Path(name): Path<String>) -> ApiResult {
    let id = registry_id(&s, &name)?;
    let reg = s.inner.app.registry();
    let saved = reg.load_plugin_config(&id)?;
    let effective = reg.effective_plugin_config(&id)?;
    let schema = s
        .manager()
        .discovered_manifest(&name)
        .map(|m| s.manager().with_described_schema(&m).config_schema.clone());
    Ok(Json(json!({
        "id": id, "saved": saved, "effective": effective, "schema": schema,
        "file": reg.store().path_of(&id).ok(),
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    /// The whole configuration to save (replaces the saved one).
    config: Option<Map<String, Value>>,
}

async fn config_put(State(s): State<Service>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let Some(config) = body::<ConfigBody>(&b)?.config else {
        return Err(ApiError::bad_request(
            "invalid request body: `config` (an object) is required",
        ));
    };
    let id = registry_id(&s, &name)?;
    let applied = s
        .inner
        .app
        .registry()
        .save_and_apply_plugin_config(&id, &config)
        .await?;
    Ok(Json(json!({"id": id, "config": config, "applied": applied})).into_response())
}

async fn stats(State(s): State<Service>, Path(name): Path<String>) -> ApiResult {
    let stats = s.manager().stats(&name).await?;
    Ok(Json(stats).into_response())
}

/// `?lines=N` of a log tail: default [`DEFAULT_LOG_LINES`], at most [`MAX_LOG_LINES`].
#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    lines: Option<usize>,
}

impl LogQuery {
    pub(crate) fn lines(&self) -> usize {
        self.lines.unwrap_or(DEFAULT_LOG_LINES).min(MAX_LOG_LINES)
    }
}

async fn logs(
    State(s): State<Service>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let lines = s.manager().logs(&name, q.lines())?;
    Ok(Json(json!({"lines": lines})).into_response())
}
