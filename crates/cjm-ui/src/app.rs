//! The settings web app: categories → plugin selector → details → configuration form → save
//! (persisted through the registry, hot-applied to a loaded plugin) → live status.
//!
//! Routes (fragments are for htmx; every page state has a URL, so a reload lands where it was):
//!
//! | method | path | answers |
//! |---|---|---|
//! | GET | `/?category=&plugin=` | the page, on a category and a plugin's settings (the first plugin when none is given), with the overview of all plugins |
//! | GET | `/category/{category}` | that category's panel (selector, details and the first plugin's settings) |
//! | GET | `/plugins/details?plugin_id=` | a new `div#plugin-details` |
//! | POST | `/plugins/select` (form `plugin_id`) | the plugin's settings: form and status, plus its details out of band (`HX-Push-Url` set); the selector posts here on change |
//! | GET | `/plugins/compare?category=&plugin_id=` | the comparison table (all plugins without `category`) |
//! | GET | `/plugins/overview` | the overview table of every plugin's live state (it polls itself) |
//! | GET/POST | `/plugins/{id}/config` | the form; POST validates, then saves and applies, or shows errors next to fields |
//! | POST | `/plugins/{id}/config/reset` | removes the saved file (the schema defaults apply), applies them to a loaded plugin; the form |
//! | GET | `/plugins/{id}/status`, `/plugins/{id}/status/live` | the status panel, its polling part |
//! | POST | `/plugins/{id}/load`, `/plugins/{id}/unload` | a new status panel |
//! | GET | `/static/htmx.min.js`, `/static/app.css` | the embedded assets |
//!
//! # Who may use it ([`Access`])
//!
//! - **Host guard, always**: a request whose `Host` is not an accepted name is refused (403), so
//!   a web page on another site cannot reach the app through DNS rebinding. Accepted: the bound
//!   IP address; for a loopback bind, `localhost` and every loopback address; for an
//!   unspecified bind (`0.0.0.0`, `::`), any IP-address literal (rebinding needs a name); and
//!   the names the operator adds ([`Access::allow_host`], `cjm ui --allow-host NAME`).
//! - **Token off loopback**: the app refuses to serve a non-loopback address without a token
//!   ([`Access::with_token`], `cjm ui --token-file FILE`). With a token, every request must
//!   carry it: `Authorization: Bearer TOKEN`, or the `cjm_ui_token` cookie. A browser gets the
//!   cookie by opening `/?token=TOKEN` once: the app answers with a redirect to the same URL
//!   without the token and sets the cookie `HttpOnly; SameSite=Strict; Path=/`. Requests
//!   without it get 401. Tokens are compared in constant time.
//! - **Changes from the page only**: `POST`s without htmx's `HX-Request` header (cross-site form
//!   posts) are refused (403).

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

use crate::components::{DropdownSelector, PluginFacts};
use crate::error::UiError;
use crate::form::{parse_config_form, render_config_form_with_reset, FormState, Notice};
use crate::page::{render_category_panel, render_error, render_page, url_encode, CategoryLink};
use crate::schema_fields::{schema_fields, with_live_options};
use crate::status::{
    render_live_status, render_overview, render_status_panel, LiveStatus, OverviewRow, StatusUrls,
};
use crate::{assets, ids};
use subtle::ConstantTimeEq;

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

/// The name of the cookie that carries the access token.
pub const TOKEN_COOKIE: &str = "cjm_ui_token";

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Who may use the settings app: the accepted `Host` names and the access token. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Access {
    bound: SocketAddr,
    hosts: Vec<String>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("bound", &self.bound)
            .field("hosts", &self.hosts)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Access {
    /// Access for an app served on `bound` (its port is not checked): its own address and,
    /// for a loopback address, the loopback names; no token.
    pub fn new(bound: SocketAddr) -> Self {
        Self {
            bound,
            hosts: Vec::new(),
            token: None,
        }
    }

    /// Also accepts requests whose `Host` is `name` (a DNS name or address, without port).
    pub fn allow_host(mut self, name: impl Into<String>) -> Self {
        self.hosts.push(name.into().to_ascii_lowercase());
        self
    }

    /// Requires `token` (surrounding white space ignored) on every request. It must be at least
    /// [`MIN_TOKEN_LEN`] characters of `A-Z a-z 0-9 - . _ ~ + / =` (it travels in a cookie and
    /// a URL).
    pub fn with_token(mut self, token: &str) -> Result<Self, UiError> {
        let token = token.trim();
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
        if token.len() < MIN_TOKEN_LEN || !token.chars().all(ok_char) {
            return Err(UiError::BadToken {
                reason: format!(
                    "it must be at least {MIN_TOKEN_LEN} characters of A-Z a-z 0-9 - . _ ~ + / ="
                ),
            });
        }
        self.token = Some(Arc::from(token));
        Ok(self)
    }

    /// Refuses a non-loopback address without a token ([`UiError::TokenRequired`]).
    pub fn check(&self) -> Result<(), UiError> {
        if self.token.is_none() && !self.bound.ip().is_loopback() {
            return Err(UiError::TokenRequired { addr: self.bound });
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if name.is_empty() {
            return false;
        }
        if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            return true;
        }
        let bound = self.bound.ip();
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                ip == bound || bound.is_unspecified() || (bound.is_loopback() && ip.is_loopback())
            }
            Err(_) => bound.is_loopback() && name.eq_ignore_ascii_case("localhost"),
        }
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())))
    }
}

/// The app's routes, with the request guards of `access`. Refuses a non-loopback address
/// without a token ([`UiError::TokenRequired`]).
pub fn router(state: AppState, access: Access) -> Result<Router, UiError> {
    let routes = Router::new()
        .route("/", get(index))
        .route("/category/{category}", get(category))
        .route("/plugins/details", get(details))
        .route("/plugins/select", post(select))
        .route("/plugins/compare", get(compare))
        .route("/plugins/overview", get(overview))
        .route("/plugins/{id}/config", get(config_get).post(config_post))
        .route("/plugins/{id}/config/reset", post(config_reset))
        .route("/plugins/{id}/status", get(status))
        .route("/plugins/{id}/status/live", get(status_live))
        .route("/plugins/{id}/load", post(load))
        .route("/plugins/{id}/unload", post(unload))
        .route("/static/htmx.min.js", get(htmx_js))
        .route("/static/app.css", get(app_css))
        .with_state(state);
    with_guard(routes, access, Changes::Htmx)
}

/// Puts `routes` (another app's, e.g. the `cjm serve` JSON API) behind the settings page's
/// request guards: the `Host` check and, when `access` has a token, the bearer token or cookie.
/// Requests that change something (not `GET`/`HEAD`) must say `Content-Type:
/// application/json`, which no page of another site can send without a CORS preflight (never
/// answered), so a cross-site form cannot drive the API. Refuses a non-loopback address
/// without a token ([`UiError::TokenRequired`]).
pub fn guarded(routes: Router, access: Access) -> Result<Router, UiError> {
    with_guard(routes, access, Changes::Json)
}

/// What a request that changes something must carry to prove it is not a cross-site one.
#[derive(Debug, Clone, Copy)]
enum Changes {
    /// htmx's `HX-Request: true` (the settings page).
    Htmx,
    /// `Content-Type: application/json` (an API client).
    Json,
}

fn with_guard(routes: Router, access: Access, changes: Changes) -> Result<Router, UiError> {
    access.check()?;
    let access = Arc::new(access);
    Ok(
        routes.layer(middleware::from_fn(move |req: Request, next: Next| {
            guard(Arc::clone(&access), changes, req, next)
        })),
    )
}

/// Serves the settings app on `addr` until Ctrl-C, for `access` (whose address is replaced by
/// `addr`). A non-loopback address without a token is refused before anything is bound.
pub async fn serve(state: AppState, addr: SocketAddr, access: Access) -> Result<(), UiError> {
    let access = Access {
        bound: addr,
        ..access
    };
    access.check()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| UiError::Bind { addr, source })?;
    serve_listener(state, listener, access, async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot wait for Ctrl-C; serving until killed");
            std::future::pending::<()>().await;
        }
    })
    .await
}

/// Serves the settings app on `listener` until `shutdown` completes, for `access` (whose
/// address is replaced by the listener's).
pub async fn serve_listener(
    state: AppState,
    listener: TcpListener,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UiError> {
    let bound = listener.local_addr().map_err(UiError::Serve)?;
    let app = router(state, Access { bound, ..access })?;
    tracing::info!(%bound, "settings page listening on http://{bound}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(UiError::Serve)
}

// ----- guards ---------------------------------------------------------------------------------

/// The token a request carries: `Authorization: Bearer`, else the cookie.
fn request_token(req: &Request) -> Option<&str> {
    let headers = req.headers();
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    {
        return Some(bearer.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
}

/// For `GET /path?token=T&rest`: `T`, and the URL without it.
fn query_token(req: &Request) -> Option<(String, String)> {
    let query = req.uri().query()?;
    let mut token = None;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "token" {
            token = Some(v.into_owned());
        } else {
            rest.append_pair(&k, &v);
        }
    }
    let rest = rest.finish();
    let path = req.uri().path();
    let url = if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{rest}")
    };
    token.map(|t| (t, url))
}

async fn guard(access: Arc<Access>, changes: Changes, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !access.host_allowed(host) {
        tracing::warn!(host, "request refused: unexpected Host");
        return failure(
            StatusCode::FORBIDDEN,
            "This page answers only to its own address.",
        );
    }
    if access.token.is_some() && !request_token(&req).is_some_and(|t| access.token_matches(t)) {
        if req.method() == Method::GET {
            if let Some((token, url)) = query_token(&req) {
                if access.token_matches(&token) {
                    return token_cookie_redirect(&token, &url);
                }
            }
        }
        tracing::warn!(path = %req.uri().path(), "request refused: no valid access token");
        return failure(
            StatusCode::UNAUTHORIZED,
            "This page needs its access token: open it once as /?token=TOKEN, with the token \
             from the file given to `cjm ui --token-file`.",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let headers = req.headers();
        match changes {
            Changes::Htmx
                if headers
                    .get("hx-request")
                    .is_none_or(|v| v.as_bytes() != b"true") =>
            {
                return failure(
                    StatusCode::FORBIDDEN,
                    "Changes are accepted only from the settings page.",
                );
            }
            Changes::Json
                if !headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json")) =>
            {
                return (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "requests that change something need `Content-Type: application/json`\n",
                )
                    .into_response();
            }
            _ => {}
        }
    }
    next.run(req).await
}

/// Sets the token cookie and sends the browser to `url` (the same page without the token, so it
/// stays out of the history and the address bar).
fn token_cookie_redirect(token: &str, url: &str) -> Response {
    let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let (Ok(cookie), Ok(location)) = (HeaderValue::from_str(&cookie), HeaderValue::from_str(url))
    else {
        return failure(StatusCode::BAD_REQUEST, "Malformed address.");
    };
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response()
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

fn reset_url(id: &str) -> String {
    format!("/plugins/{}/config/reset", url_encode(id))
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

/// Resources (from the discovered manifest), live state and operations of each plugin, by id.
async fn plugin_facts(
    state: &AppState,
    plugins: &[PluginMetadata],
) -> HashMap<String, PluginFacts> {
    let mut out = HashMap::with_capacity(plugins.len());
    for p in plugins {
        out.insert(p.unique_id(), facts_of(state, p).await);
    }
    out
}

async fn facts_of(state: &AppState, p: &PluginMetadata) -> PluginFacts {
    PluginFacts {
        resources: state
            .manager
            .discovered_manifest(&p.name)
            .map(|m| m.resources.clone()),
        live: live_status(state, &p.name).await,
        operations: operations_of(state, &p.name).await,
    }
}

/// The plugin's operations from its worker's self-description (`WORKER --describe`, cached by
/// the binary's identity; the first description runs the binary, so off the async threads).
/// `None` when the worker cannot describe itself (the original's Python workers).
async fn operations_of(state: &AppState, name: &str) -> Option<Vec<String>> {
    let manager = state.manager.clone();
    let name = name.to_owned();
    let described = tokio::task::spawn_blocking(move || manager.describe(&name))
        .await
        .ok()?;
    let description = match described {
        Ok(d) => d?,
        Err(e) => {
            tracing::debug!(error = %e, "no self-description; operations unknown");
            return None;
        }
    };
    Some(
        description
            .operations
            .iter()
            .map(|o| o.name.clone().unwrap_or_else(|| "(any call)".to_owned()))
            .collect(),
    )
}

/// The category's panel, its selection's (or else its first plugin's) settings beside it.
async fn category_panel(state: &AppState, category: &str, selected: Option<&str>) -> Markup {
    let plugins = state.registry.plugins_by_category(category);
    let chosen = selected
        .and_then(|id| plugins.iter().find(|p| p.unique_id() == id))
        .or_else(|| plugins.first())
        .cloned();
    let settings = match &chosen {
        Some(p) => Some(settings(state, p).await),
        None => None,
    };
    let chosen_id = chosen.as_ref().map(PluginMetadata::unique_id);
    let facts = plugin_facts(state, &plugins).await;
    let facts_getter =
        move |p: &PluginMetadata| facts.get(&p.unique_id()).cloned().unwrap_or_default();
    let registry = Arc::clone(&state.registry);
    let getter = move |p: &PluginMetadata| registry.effective_plugin_config(&p.unique_id()).ok();
    let compare = format!("/plugins/compare?category={}", url_encode(category));
    let selector = DropdownSelector {
        selected_plugin_id: chosen_id.as_deref(),
        selection_endpoint: Some("/plugins/select"),
        details_endpoint: Some("/plugins/details"),
        compare_endpoint: Some(&compare),
        target_id: Some(ids::PLUGIN_CONFIG),
        get_plugin_config: Some(&getter),
        get_plugin_facts: Some(&facts_getter),
        comparison_outside: true,
        ..DropdownSelector::new(&plugins)
    };
    render_category_panel(
        &state.registry.category_display_name(category),
        selector.render(),
        settings,
    )
}

/// Every plugin's row of the overview.
async fn overview_rows(state: &AppState) -> Vec<OverviewRow> {
    let mut rows = Vec::new();
    for p in state.registry.plugins() {
        rows.push(OverviewRow {
            id: p.unique_id(),
            live: live_status(state, &p.name).await,
            title: p.title,
            category: p.category,
        });
    }
    rows
}

const OVERVIEW_URL: &str = "/plugins/overview";

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
        drift: state
            .manager
            .drift(name)
            .ok()
            .flatten()
            .filter(|d| d.any())
            .map(|d| d.describe()),
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

/// The schema the settings form shows: the plugin's, with the live option domains of its
/// running worker (`/config_options`, e.g. the models installed now) merged on top. A plugin
/// that is not loaded, or whose worker does not answer, gets its static schema, as in the
/// original.
async fn form_schema(state: &AppState, plugin: &PluginMetadata) -> Value {
    if !state.manager.is_loaded(&plugin.name) {
        return plugin.config_schema.clone();
    }
    match state.manager.config_options(&plugin.name).await {
        Ok(options) => with_live_options(&plugin.config_schema, &options),
        Err(e) => {
            tracing::debug!(plugin = %plugin.name, error = %e, "no live config options");
            plugin.config_schema.clone()
        }
    }
}

/// The form showing the effective configuration (defaults overlaid with the saved one).
async fn config_form(state: &AppState, plugin: &PluginMetadata, notice: Option<&Notice>) -> Markup {
    let schema = form_schema(state, plugin).await;
    let id = plugin.unique_id();
    let (values, problem) = match state.registry.effective_plugin_config(&id) {
        Ok(v) => (v, None),
        Err(e) => (
            cjm_core::schema_defaults(&plugin.config_schema),
            Some(Notice::Error(format!("{e}; showing the defaults"))),
        ),
    };
    render_config_form_with_reset(
        &schema,
        &config_url(&id),
        Some(&reset_url(&id)),
        &FormState::new(values),
        notice.or(problem.as_ref()),
    )
}

async fn settings(state: &AppState, plugin: &PluginMetadata) -> Markup {
    html! {
        h2 class="text-xl font-bold mt-6" { "Settings of " (plugin.title) }
        (config_form(state, plugin, None).await)
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
        Some(c) => category_panel(&state, c, q.get("plugin").map(String::as_str)).await,
    };
    let overview = render_overview(&overview_rows(&state).await, OVERVIEW_URL);
    page(render_page(&cats, current.as_deref(), area, Some(overview)))
}

async fn category(State(state): State<AppState>, UrlPath(c): UrlPath<String>) -> Response {
    if state.registry.manager(&c).is_none() {
        return registry_failure(&RegistryError::UnknownCategory(c));
    }
    let nav = crate::page::render_category_nav(&categories(&state), Some(&c), true);
    page(html! { (category_panel(&state, &c, None).await) (nav) })
}

async fn overview(State(state): State<AppState>) -> Response {
    page(render_overview(&overview_rows(&state).await, OVERVIEW_URL))
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
    let facts = facts_of(&state, &plugin).await;
    page(crate::render_plugin_details_with(
        &plugin,
        config.as_ref(),
        Some(&facts),
    ))
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
    let config = state.registry.effective_plugin_config(id).ok();
    let facts = facts_of(&state, &plugin).await;
    let mut resp = page(html! {
        (settings(&state, &plugin).await)
        (crate::render_plugin_details_oob(&plugin, config.as_ref(), Some(&facts)))
    });
    if let Ok(v) = HeaderValue::from_str(&push) {
        resp.headers_mut().insert("hx-push-url", v);
    }
    resp
}

async fn compare(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let plugins = match q.get("category") {
        Some(category) => {
            if state.registry.manager(category).is_none() {
                return registry_failure(&RegistryError::UnknownCategory(category.clone()));
            }
            state.registry.plugins_by_category(category)
        }
        None => state.registry.plugins(),
    };
    let registry = Arc::clone(&state.registry);
    let getter = move |p: &PluginMetadata| registry.effective_plugin_config(&p.unique_id()).ok();
    let facts = plugin_facts(&state, &plugins).await;
    let facts_getter =
        move |p: &PluginMetadata| facts.get(&p.unique_id()).cloned().unwrap_or_default();
    page(crate::render_comparison_table(
        &plugins,
        q.get("plugin_id").map(String::as_str),
        Some(&getter),
        Some(&facts_getter),
    ))
}

async fn config_get(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match state.registry.plugin(&id) {
        Some(p) => page(config_form(&state, &p, None).await),
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
    let schema = &form_schema(&state, &plugin).await;
    let action = config_url(&id);
    let reset = reset_url(&id);
    let mut form = parse_config_form(schema, &form_pairs(&body));
    // The form again, with what was typed, its errors and a notice.
    let again = |form: &FormState, notice: Notice| {
        page(render_config_form_with_reset(
            schema,
            &action,
            Some(&reset),
            form,
            Some(&notice),
        ))
    };

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
            return again(&form, notice);
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
        return again(&form, notice);
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
            return again(&form, notice);
        }
        Err(e) => {
            let notice = Notice::Error(format!("Not saved: {e}"));
            return again(&form, notice);
        }
    };
    tracing::info!(id, "configuration saved");
    page(config_form(&state, &plugin, Some(&notice)).await)
}

async fn config_reset(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(plugin) = state.registry.plugin(&id) else {
        return unknown_plugin(&id);
    };
    let file = state
        .registry
        .store()
        .path_of(&id)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let notice = match state.registry.delete_plugin_config(&id) {
        Err(e) => Notice::Error(format!("Not reset: {e}")),
        Ok(removed) => {
            let what = if removed {
                format!("Reset to the defaults ({file} removed)")
            } else {
                "Already at the defaults (nothing was saved)".to_owned()
            };
            match state.registry.apply_plugin_config(&id).await {
                Ok(true) => Notice::Success(format!("{what}; applied to the running plugin.")),
                Ok(false) => Notice::Success(format!("{what}.")),
                Err(e) => Notice::Warning(format!("{what}, but: {e}")),
            }
        }
    };
    tracing::info!(id, "configuration reset to defaults");
    page(config_form(&state, &plugin, Some(&notice)).await)
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
    // A saved file that fails the schema is named, with its fields, before the worker starts.
    let config = state
        .registry
        .load_valid_plugin_config(&id)
        .and_then(|_| state.registry.effective_plugin_config(&id));
    let error = match config {
        Err(e @ RegistryError::SavedInvalid { .. }) => Some(format!(
            "Cannot load: {e}. Correct the configuration below and save it, or edit the file."
        )),
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

    fn access(bound: &str) -> Access {
        Access::new(bound.parse().unwrap())
    }

    #[test]
    fn hosts() {
        let local = access("127.0.0.1:8765");
        for ok in [
            "127.0.0.1:8765",
            "localhost:8765",
            "LOCALHOST",
            "[::1]:8765",
            "127.0.0.2",
        ] {
            assert!(local.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8765",
            "",
            "10.0.0.1:8765",
            "localhost.evil.example",
        ] {
            assert!(!local.host_allowed(bad), "{bad}");
        }
        // Issue 13 point 1: an unspecified bind used to accept every Host.
        let any = access("0.0.0.0:80");
        assert!(!any.host_allowed("evil.com"));
        assert!(!any.host_allowed("localhost"));
        assert!(any.host_allowed("192.168.1.5:80"));
        assert!(any.host_allowed("[fe80::1]:80"));
        let named = any.allow_host("Box.LAN");
        assert!(named.host_allowed("box.lan:80"));
        assert!(!named.host_allowed("evil.com"));
        let lan = access("192.168.1.5:80");
        assert!(lan.host_allowed("192.168.1.5"));
        assert!(!lan.host_allowed("127.0.0.1"));
        assert!(!lan.host_allowed("localhost"));
    }

    #[test]
    fn non_loopback_needs_a_token_of_some_length() {
        assert!(access("127.0.0.1:1").check().is_ok());
        assert!(matches!(
            access("0.0.0.0:1").check(),
            Err(UiError::TokenRequired { .. })
        ));
        assert!(matches!(
            access("0.0.0.0:1").with_token("short"),
            Err(UiError::BadToken { .. })
        ));
        assert!(matches!(
            access("0.0.0.0:1").with_token("has spaces and ; semicolons!"),
            Err(UiError::BadToken { .. })
        ));
        let with = access("0.0.0.0:1")
            .with_token("0123456789abcdef\n")
            .unwrap();
        assert!(with.check().is_ok());
        assert!(with.token_matches("0123456789abcdef"));
        assert!(!with.token_matches("0123456789abcdeX"));
        assert!(
            !format!("{with:?}").contains("0123"),
            "the token stays out of logs"
        );
    }
}
