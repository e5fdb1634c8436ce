//! The settings web app: categories → plugin selector → details → configuration form → save
//! (persisted through the registry, hot-applied to a loaded plugin) → live status.
//!
//! Routes (fragments are for htmx; every page state has a URL, so a reload lands where it was):
//!
//! | method | path | answers |
//! |---|---|---|
//! | GET | `/?category=&plugin=` | the page, on a category and optionally a plugin's settings |
//! | GET | `/category/{category}` | that category's panel (selector and an empty settings area) |
//! | GET | `/plugins/details?plugin_id=` | a new `div#plugin-details` |
//! | POST | `/plugins/select` (form `plugin_id`) | the plugin's settings: form and status (`HX-Push-Url` set) |
//! | GET | `/plugins/compare?category=&plugin_id=` | the comparison table |
//! | GET/POST | `/plugins/{id}/config` | the form; POST validates, then saves and applies, or shows errors next to fields |
//! | GET | `/plugins/{id}/status`, `/plugins/{id}/status/live` | the status panel, its polling part |
//! | POST | `/plugins/{id}/load`, `/plugins/{id}/unload` | a new status panel |
//! | GET | `/static/htmx.min.js`, `/static/app.css` | the embedded assets |
//!
//! Requests are refused (403) when their `Host` is not this machine's loopback or bound address
//! (DNS rebinding), and `POST`s without htmx's `HX-Request` header (cross-site form posts).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cjm_core::PluginMetadata;
use cjm_host::PluginManager;
use cjm_registry::{HostCategorySource, PluginRegistry, RegistryError};
use maud::{html, Markup};
use serde_json::{Map, Value};
use tokio::net::TcpListener;

use crate::components::DropdownSelector;
use crate::error::UiError;
use crate::form::{parse_config_form, render_config_form, FormState, Notice};
use crate::page::{render_category_panel, render_error, render_page, url_encode, CategoryLink};
use crate::schema_fields::schema_fields;
use crate::status::{render_live_status, render_status_panel, LiveStatus, StatusUrls};
use crate::{assets, ids};

/// What the app works on: the registry (configurations, metadata) and the host's plugin
/// manager (loading, live status). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    registry: Arc<PluginRegistry>,
    manager: PluginManager,
}

impl AppState {
    /// An app over `registry`, whose categories should be sources on `manager` (see
    /// [`AppState::from_manager`]) so that saves hot-apply.
    pub fn new(registry: Arc<PluginRegistry>, manager: PluginManager) -> Self {
        Self { registry, manager }
    }

    /// Builds the registry from `manager`'s discovered plugins: one category per manifest
    /// category, each a [`HostCategorySource`], configurations kept in `config_dir`.
    pub async fn from_manager(
        manager: PluginManager,
        config_dir: impl AsRef<Path>,
    ) -> Result<Self, UiError> {
        let registry = PluginRegistry::new(config_dir)?;
        for category in manager.discovered_categories() {
            let source = Arc::new(HostCategorySource::new(manager.clone(), category.clone()));
            registry
                .register_plugin_manager(&category, source, None, false)
                .await?;
        }
        Ok(Self::new(Arc::new(registry), manager))
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// The plugin manager.
    pub fn manager(&self) -> &PluginManager {
        &self.manager
    }
}

/// The app's routes, with the request guards, for `bound` (the address served, used to accept
/// its `Host`).
pub fn router(state: AppState, bound: SocketAddr) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/category/{category}", get(category))
        .route("/plugins/details", get(details))
        .route("/plugins/select", post(select))
        .route("/plugins/compare", get(compare))
        .route("/plugins/{id}/config", get(config_get).post(config_post))
        .route("/plugins/{id}/status", get(status))
        .route("/plugins/{id}/status/live", get(status_live))
        .route("/plugins/{id}/load", post(load))
        .route("/plugins/{id}/unload", post(unload))
        .route("/static/htmx.min.js", get(htmx_js))
        .route("/static/app.css", get(app_css))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            guard(bound, req, next)
        }))
        .with_state(state)
}

/// Serves the settings app on `addr` until Ctrl-C.
pub async fn serve(state: AppState, addr: SocketAddr) -> Result<(), UiError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| UiError::Bind { addr, source })?;
    serve_listener(state, listener, async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot wait for Ctrl-C; serving until killed");
            std::future::pending::<()>().await;
        }
    })
    .await
}

/// Serves the settings app on `listener` until `shutdown` completes.
pub async fn serve_listener(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UiError> {
    let bound = listener.local_addr().map_err(UiError::Serve)?;
    tracing::info!(%bound, "settings page listening on http://{bound}/");
    axum::serve(listener, router(state, bound))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(UiError::Serve)
}

// ----- guards ---------------------------------------------------------------------------------

fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    if bound.ip().is_unspecified() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip == bound.ip())
}

async fn guard(bound: SocketAddr, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !host_allowed(host, bound) {
        tracing::warn!(host, "request refused: unexpected Host");
        return failure(
            StatusCode::FORBIDDEN,
            "This page answers only to its own address.",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let htmx = req
            .headers()
            .get("hx-request")
            .is_some_and(|v| v.as_bytes() == b"true");
        if !htmx {
            return failure(
                StatusCode::FORBIDDEN,
                "Changes are accepted only from the settings page.",
            );
        }
    }
    next.run(req).await
}

// ----- responses -------------------------------------------------------------------------------

fn page(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

fn failure(status: StatusCode, message: &str) -> Response {
    (status, Html(render_error(message).into_string())).into_response()
}

fn registry_failure(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::UnknownPlugin(_)
        | RegistryError::UnknownCategory(_)
        | RegistryError::InvalidId { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    failure(status, &e.to_string())
}

fn static_asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn htmx_js() -> Response {
    static_asset(assets::HTMX_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    static_asset(assets::APP_CSS, "text/css; charset=utf-8")
}

// ----- building blocks -------------------------------------------------------------------------

fn unknown_plugin(id: &str) -> Response {
    registry_failure(&RegistryError::UnknownPlugin(id.to_owned()))
}

fn config_url(id: &str) -> String {
    format!("/plugins/{}/config", url_encode(id))
}

fn status_urls(id: &str) -> (String, String, String) {
    let base = format!("/plugins/{}", url_encode(id));
    (
        format!("{base}/status/live"),
        format!("{base}/load"),
        format!("{base}/unload"),
    )
}

fn categories(state: &AppState) -> Vec<CategoryLink> {
    state
        .registry
        .categories()
        .into_iter()
        .map(|c| CategoryLink {
            display_name: state.registry.category_display_name(&c),
            plugins: state.registry.plugins_by_category(&c).len(),
            name: c,
        })
        .collect()
}

fn category_panel(
    state: &AppState,
    category: &str,
    selected: Option<&str>,
    settings: Option<Markup>,
) -> Markup {
    let plugins = state.registry.plugins_by_category(category);
    let registry = Arc::clone(&state.registry);
    let getter = move |p: &PluginMetadata| registry.effective_plugin_config(&p.unique_id()).ok();
    let compare = format!("/plugins/compare?category={}", url_encode(category));
    let selector = DropdownSelector {
        selected_plugin_id: selected,
        selection_endpoint: Some("/plugins/select"),
        details_endpoint: Some("/plugins/details"),
        compare_endpoint: Some(&compare),
        target_id: Some(ids::PLUGIN_CONFIG),
        get_plugin_config: Some(&getter),
        ..DropdownSelector::new(&plugins)
    };
    render_category_panel(
        &state.registry.category_display_name(category),
        selector.render(),
        settings,
    )
}

async fn live_status(state: &AppState, name: &str) -> Option<LiveStatus> {
    let stats = state.manager.stats(name).await.ok()?;
    Some(LiveStatus {
        state: stats.state.as_str().to_owned(),
        restarts: stats.restarts,
        memory_rss_mb: stats.worker.as_ref().map(|w| w.memory_rss_mb),
        cpu_percent: stats.worker.as_ref().map(|w| w.cpu_percent),
        calls: stats.calls,
        errors: stats.errors,
        pid: stats.pid,
    })
}

async fn status_panel(state: &AppState, plugin: &PluginMetadata, error: Option<&str>) -> Markup {
    let id = plugin.unique_id();
    let (live, load, unload) = status_urls(&id);
    let status = live_status(state, &plugin.name).await;
    render_status_panel(
        status.as_ref(),
        StatusUrls {
            live: &live,
            load: &load,
            unload: &unload,
        },
        error,
    )
}

/// The form showing the effective configuration (defaults overlaid with the saved one).
fn config_form(state: &AppState, plugin: &PluginMetadata, notice: Option<&Notice>) -> Markup {
    let id = plugin.unique_id();
    let (values, problem) = match state.registry.effective_plugin_config(&id) {
        Ok(v) => (v, None),
        Err(e) => (
            cjm_core::schema_defaults(&plugin.config_schema),
            Some(Notice::Error(format!("{e}; showing the defaults"))),
        ),
    };
    render_config_form(
        &plugin.config_schema,
        &config_url(&id),
        &FormState::new(values),
        notice.or(problem.as_ref()),
    )
}

async fn settings(state: &AppState, plugin: &PluginMetadata) -> Markup {
    html! {
        h2 class="text-xl font-bold mt-6" { "Settings of " (plugin.title) }
        (config_form(state, plugin, None))
        (status_panel(state, plugin, None).await)
    }
}

// ----- handlers ------------------------------------------------------------------------------

async fn index(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let cats = categories(&state);
    let current = q
        .get("category")
        .filter(|c| cats.iter().any(|l| &l.name == *c))
        .cloned()
        .or_else(|| state.registry.categories_with_plugins().into_iter().next())
        .or_else(|| cats.first().map(|c| c.name.clone()));
    let area = match &current {
        None => {
            html! { p class="text-base-content/60" { "No plugins were discovered in the search paths." } }
        }
        Some(c) => {
            let chosen = q
                .get("plugin")
                .and_then(|id| state.registry.plugin(id))
                .filter(|p| &p.category == c);
            let settings = match &chosen {
                Some(p) => Some(settings(&state, p).await),
                None => None,
            };
            let id = chosen.as_ref().map(PluginMetadata::unique_id);
            category_panel(&state, c, id.as_deref(), settings)
        }
    };
    page(render_page(&cats, current.as_deref(), area))
}

async fn category(State(state): State<AppState>, UrlPath(c): UrlPath<String>) -> Response {
    if state.registry.manager(&c).is_none() {
        return registry_failure(&RegistryError::UnknownCategory(c));
    }
    let nav = crate::page::render_category_nav(&categories(&state), Some(&c), true);
    page(html! { (category_panel(&state, &c, None, None)) (nav) })
}

async fn details(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = q.get("plugin_id") else {
        return failure(StatusCode::BAD_REQUEST, "No plugin was chosen.");
    };
    let Some(plugin) = state.registry.plugin(id) else {
        return unknown_plugin(id);
    };
    let config = state.registry.effective_plugin_config(id).ok();
    page(crate::render_plugin_details(&plugin, config.as_ref()))
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn select(State(state): State<AppState>, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    let Some((_, id)) = pairs.iter().find(|(k, _)| k == "plugin_id") else {
        return failure(StatusCode::BAD_REQUEST, "No plugin was chosen.");
    };
    let Some(plugin) = state.registry.plugin(id) else {
        return unknown_plugin(id);
    };
    let push = format!(
        "/?category={}&plugin={}",
        url_encode(&plugin.category),
        url_encode(id)
    );
    let mut resp = page(settings(&state, &plugin).await);
    if let Ok(v) = HeaderValue::from_str(&push) {
        resp.headers_mut().insert("hx-push-url", v);
    }
    resp
}

async fn compare(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(category) = q.get("category") else {
        return failure(StatusCode::BAD_REQUEST, "No category was given.");
    };
    if state.registry.manager(category).is_none() {
        return registry_failure(&RegistryError::UnknownCategory(category.clone()));
    }
    let plugins = state.registry.plugins_by_category(category);
    let registry = Arc::clone(&state.registry);
    let getter = move |p: &PluginMetadata| registry.effective_plugin_config(&p.unique_id()).ok();
    page(crate::render_comparison_table(
        &plugins,
        q.get("plugin_id").map(String::as_str),
        Some(&getter),
    ))
}

async fn config_get(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match state.registry.plugin(&id) {
        Some(p) => page(config_form(&state, &p, None)),
        None => unknown_plugin(&id),
    }
}

async fn config_post(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Some(plugin) = state.registry.plugin(&id) else {
        return unknown_plugin(&id);
    };
    let schema = &plugin.config_schema;
    let action = config_url(&id);
    let mut form = parse_config_form(schema, &form_pairs(&body));

    // Keys the form does not show (allowed by the schema) are kept as saved.
    let shown: Vec<String> = schema_fields(schema).into_iter().map(|f| f.key).collect();
    let mut config: Map<String, Value> = match state.registry.load_plugin_config(&id) {
        Ok(saved) => saved
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !shown.contains(k))
            .collect(),
        Err(e) => {
            tracing::warn!(id, error = %e, "saved configuration unreadable; replacing it");
            Map::new()
        }
    };
    config.extend(form.values.clone());

    let unreadable: Vec<String> = form.raw.keys().cloned().collect();
    if let Err(e) = state.registry.validate_plugin_config(&id, &config) {
        let fields = e.field_errors();
        if fields.is_empty() {
            let notice = Notice::Error(format!("Not saved: {e}"));
            return page(render_config_form(schema, &action, &form, Some(&notice)));
        }
        form.add_errors(
            fields
                .iter()
                .filter(|f| {
                    let key = f.field.split('/').next().unwrap_or_default();
                    !unreadable.iter().any(|k| k == key)
                })
                .cloned(),
        );
    }
    if !form.errors.is_empty() {
        let n = form.errors.len();
        let notice = Notice::Error(format!(
            "Not saved: {n} problem{} (see below).",
            if n == 1 { "" } else { "s" }
        ));
        tracing::debug!(id, problems = n, "configuration rejected");
        return page(render_config_form(schema, &action, &form, Some(&notice)));
    }
    let file = state
        .registry
        .store()
        .path_of(&id)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let notice = match state
        .registry
        .save_and_apply_plugin_config(&id, &config)
        .await
    {
        Ok(true) => Notice::Success(format!(
            "Saved to {file} and applied to the running plugin."
        )),
        Ok(false) => Notice::Success(format!(
            "Saved to {file}. The plugin is not loaded; the settings apply when it is."
        )),
        Err(e @ RegistryError::Apply { .. }) => Notice::Warning(e.to_string()),
        Err(e) if !e.field_errors().is_empty() => {
            form.add_errors(e.field_errors().iter().cloned());
            let notice = Notice::Error(format!("Not saved: {e}"));
            return page(render_config_form(schema, &action, &form, Some(&notice)));
        }
        Err(e) => {
            let notice = Notice::Error(format!("Not saved: {e}"));
            return page(render_config_form(schema, &action, &form, Some(&notice)));
        }
    };
    tracing::info!(id, "configuration saved");
    page(config_form(&state, &plugin, Some(&notice)))
}

async fn status(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match state.registry.plugin(&id) {
        Some(p) => page(status_panel(&state, &p, None).await),
        None => unknown_plugin(&id),
    }
}

async fn status_live(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(plugin) = state.registry.plugin(&id) else {
        return unknown_plugin(&id);
    };
    let (live, _, _) = status_urls(&id);
    let status = live_status(&state, &plugin.name).await;
    page(render_live_status(status.as_ref(), &live))
}

async fn load(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(plugin) = state.registry.plugin(&id) else {
        return unknown_plugin(&id);
    };
    let error = match state.registry.effective_plugin_config(&id) {
        Err(e) => Some(e.to_string()),
        Ok(cfg) => match state
            .manager
            .load(&plugin.name, Some(Value::Object(cfg)))
            .await
        {
            Ok(()) => {
                tracing::info!(id, "loaded from the settings page");
                None
            }
            Err(e) => Some(format!("Cannot load: {e}")),
        },
    };
    page(status_panel(&state, &plugin, error.as_deref()).await)
}

async fn unload(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(plugin) = state.registry.plugin(&id) else {
        return unknown_plugin(&id);
    };
    let error = state
        .manager
        .unload(&plugin.name)
        .await
        .err()
        .map(|e| format!("Cannot unload: {e}"));
    page(status_panel(&state, &plugin, error.as_deref()).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let bound: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        for ok in [
            "127.0.0.1:8765",
            "localhost:8765",
            "LOCALHOST",
            "[::1]:8765",
            "127.0.0.2",
        ] {
            assert!(host_allowed(ok, bound), "{ok}");
        }
        for bad in [
            "evil.example:8765",
            "",
            "10.0.0.1:8765",
            "localhost.evil.example",
        ] {
            assert!(!host_allowed(bad, bound), "{bad}");
        }
        let any: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert!(host_allowed("anything", any));
        let lan: SocketAddr = "192.168.1.5:80".parse().unwrap();
        assert!(host_allowed("192.168.1.5", lan));
    }
}
