//! Live status of a loaded plugin: state, restarts, resident memory, CPU and calls, polled by
//! htmx, with a Load/Unload button; and the overview table of every plugin, polled the same way.

use maud::{html, Markup};

use crate::ids;

/// What the status panel shows about a loaded plugin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveStatus {
    /// The host's state (`starting`, `ready`, `busy`, `crashed`, `restarting`, `failed`, …).
    pub state: String,
    /// Worker restarts so far.
    pub restarts: u32,
    /// Resident memory of the worker and its descendants, MB (none for in-process plugins).
    pub memory_rss_mb: Option<f64>,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Calls finished.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The worker's pid.
    pub pid: Option<u32>,
    /// What drifted between the manifest's `drift_tracking` witnesses and the live worker
    /// (`config schema`, `structural surface`); `None` when nothing did or nothing is known.
    pub drift: Option<String>,
}

/// The badge colour of a host state.
pub fn state_badge(state: &str) -> &'static str {
    match state {
        "ready" => "badge-success",
        "busy" => "badge-info",
        "starting" | "restarting" => "badge-warning",
        "crashed" | "failed" => "badge-error",
        _ => "badge-neutral",
    }
}

/// URLs the status panel uses for one plugin.
#[derive(Debug, Clone, Copy)]
pub struct StatusUrls<'a> {
    /// `GET`: the polling part (`#plugin-status-live`).
    pub live: &'a str,
    /// `POST`: load the plugin; answers a new panel.
    pub load: &'a str,
    /// `POST`: unload the plugin; answers a new panel.
    pub unload: &'a str,
}

/// The polling part: `div#plugin-status-live`, which replaces itself every 2 s while the plugin
/// is loaded. `None` means not loaded (and no polling).
pub fn render_live_status(status: Option<&LiveStatus>, live_url: &str) -> Markup {
    let Some(s) = status else {
        return html! {
            div id=(ids::PLUGIN_STATUS_LIVE) {
                span id=(ids::PLUGIN_STATE) class="badge badge-neutral" { "not loaded" }
                p class="text-sm text-base-content/70 mt-2" {
                    "Saved settings apply when the plugin is loaded."
                }
            }
        };
    };
    html! {
        div id=(ids::PLUGIN_STATUS_LIVE) hx-get=(live_url) hx-trigger="every 2s" hx-swap="outerHTML" {
            div class="stats stats-vertical bg-base-100 shadow w-full" {
                div class="stat" {
                    div class="stat-title" { "State" }
                    div class="stat-value text-lg" {
                        span id=(ids::PLUGIN_STATE) class={ "badge " (state_badge(&s.state)) } { (s.state) }
                    }
                    @if let Some(pid) = s.pid { div class="stat-desc" { "pid " (pid) } }
                    @if let Some(d) = &s.drift {
                        div class="stat-desc" {
                            span class="badge badge-warning" data-stat="drift"
                                title="The installed manifest no longer matches the running worker; reinstall or regenerate the manifest." {
                                "drift: " (d)
                            }
                        }
                    }
                }
                div class="stat" {
                    div class="stat-title" { "Restarts" }
                    div class="stat-value text-lg" data-stat="restarts" { (s.restarts) }
                }
                div class="stat" {
                    div class="stat-title" { "Memory (RSS)" }
                    div class="stat-value text-lg" data-stat="rss" {
                        (s.memory_rss_mb.map_or_else(|| "—".to_owned(), |m| format!("{m:.1} MB")))
                    }
                }
                div class="stat" {
                    div class="stat-title" { "CPU" }
                    div class="stat-value text-lg" data-stat="cpu" {
                        (s.cpu_percent.map_or_else(|| "—".to_owned(), |c| format!("{c:.1} %")))
                    }
                }
                div class="stat" {
                    div class="stat-title" { "Calls" }
                    div class="stat-value text-lg" data-stat="calls" { (s.calls) }
                    div class="stat-desc" { (s.errors) " failed" }
                }
            }
        }
    }
}

/// `div#plugin-status.card`: the live part and a Load or Unload button (which replace the whole
/// panel), plus an error message from the last button press, if any.
pub fn render_status_panel(
    status: Option<&LiveStatus>,
    urls: StatusUrls<'_>,
    error: Option<&str>,
) -> Markup {
    let target = ids::as_selector(ids::PLUGIN_STATUS);
    html! {
        div id=(ids::PLUGIN_STATUS) class="card bg-base-100 shadow-sm mt-4" aria-live="polite" {
            div class="card-body" {
                h3 class="card-title" { "Status" }
                @if let Some(e) = error {
                    div class="alert alert-error" role="alert" { span { (e) } }
                }
                (render_live_status(status, urls.live))
                div class="card-actions mt-2" {
                    @if status.is_some() {
                        button type="button" class="btn btn-outline btn-sm" hx-post=(urls.unload)
                            hx-target=(target) hx-swap="outerHTML" hx-disabled-elt="this" { "Unload" }
                    } @else {
                        button type="button" class="btn btn-secondary btn-sm" hx-post=(urls.load)
                            hx-target=(target) hx-swap="outerHTML" hx-disabled-elt="this" { "Load" }
                    }
                }
            }
        }
    }
}

/// One row of the overview table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OverviewRow {
    /// The plugin's unique id (`category.name`).
    pub id: String,
    /// What people see.
    pub title: String,
    /// Its category.
    pub category: String,
    /// Live status when loaded.
    pub live: Option<LiveStatus>,
}

fn dash_or(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1} {unit}"))
}

/// `div#plugin-overview`: a table of every plugin with state, restarts, RSS, CPU and calls
/// (`—` when not loaded), each title a link to its settings; it replaces itself from
/// `live_url` every 2 s.
pub fn render_overview(rows: &[OverviewRow], live_url: &str) -> Markup {
    html! {
        section id=(ids::PLUGIN_OVERVIEW) class="card bg-base-100 shadow-sm mt-4" aria-labelledby="overview-title"
            hx-get=(live_url) hx-trigger="every 2s" hx-swap="outerHTML" {
            div class="card-body" {
                h2 id="overview-title" class="card-title" { "All plugins" }
                @if rows.is_empty() {
                    p class="text-base-content/60" { "No plugins were discovered." }
                } @else {
                    div class="overflow-x-auto" {
                        table class="table table-zebra w-full" {
                            thead {
                                tr {
                                    th scope="col" { "Plugin" }
                                    th scope="col" { "Category" }
                                    th scope="col" { "State" }
                                    th scope="col" { "Restarts" }
                                    th scope="col" { "RSS" }
                                    th scope="col" { "CPU" }
                                    th scope="col" { "Calls" }
                                }
                            }
                            tbody {
                                @for r in rows {
                                    @let href = format!("/?category={}&plugin={}", crate::page::url_encode(&r.category), crate::page::url_encode(&r.id));
                                    tr data-plugin=(r.id) {
                                        th scope="row" { a class="link" href=(href) { (r.title) } }
                                        td { (r.category) }
                                        @match &r.live {
                                            None => {
                                                td data-col="state" class="whitespace-nowrap" { span class="badge badge-neutral badge-sm" { "not loaded" } }
                                                td data-col="restarts" { "—" }
                                                td data-col="rss" { "—" }
                                                td data-col="cpu" { "—" }
                                                td data-col="calls" { "—" }
                                            }
                                            Some(s) => {
                                                td data-col="state" class="whitespace-nowrap" { span class={ "badge badge-sm " (state_badge(&s.state)) } { (s.state) } }
                                                td data-col="restarts" { (s.restarts) }
                                                td data-col="rss" { (dash_or(s.memory_rss_mb, "MB")) }
                                                td data-col="cpu" { (dash_or(s.cpu_percent, "%")) }
                                                td data-col="calls" { (s.calls) @if s.errors > 0 { " (" (s.errors) " failed)" } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
