//! The original's components with its DaisyUI classes and htmx attributes: the execution-mode
//! badge, the details card (with resources and live state), the dropdown selector (whose change
//! shows the settings at once), the comparison table and the strategy switch.
//!
//! Every string from a plugin (name, title, description, version, config values) is escaped by
//! [`maud`]; nothing here builds HTML by string concatenation.

use std::str::FromStr;

use cjm_core::{PluginExecutionMode, PluginMetadata, Resources};
use maud::{html, Markup};
use serde_json::{Map, Value};

use crate::features::plain;
use crate::features::{execution_mode_badge, execution_mode_label, extract_plugin_features};
use crate::ids;
use crate::status::{state_badge, LiveStatus};

/// A plugin's saved (or effective) configuration, if any: what the original's
/// `get_plugin_config` callback returned.
pub type ConfigGetter<'a> = &'a dyn Fn(&PluginMetadata) -> Option<Map<String, Value>>;

/// What the host knows about a plugin beyond its metadata: declared resources, live state and
/// operations. Every part is optional; unknown parts are shown as such.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginFacts {
    /// The manifest's declared resource needs (none when the host has no manifest for it).
    pub resources: Option<Resources>,
    /// Live state of a loaded plugin (none when not loaded).
    pub live: Option<LiveStatus>,
    /// The operation names, when the plugin declares them.
    pub operations: Option<Vec<String>>,
}

/// A plugin's [`PluginFacts`].
pub type FactsGetter<'a> = &'a dyn Fn(&PluginMetadata) -> PluginFacts;

/// Megabytes as `512 MB` or `8 GB`.
fn mb(v: u64) -> String {
    if v >= 1024 && v.is_multiple_of(1024) {
        format!("{} GB", v / 1024)
    } else if v >= 1024 {
        format!("{:.1} GB", v as f64 / 1024.0)
    } else {
        format!("{v} MB")
    }
}

/// Declared needs in words: `GPU, ≥ 8 GB VRAM (16 GB recommended), ≥ 2 GB RAM`, or
/// `no GPU; no stated RAM`.
pub fn resources_text(r: &Resources) -> String {
    let mut gpu = if r.requires_gpu {
        "GPU".to_owned()
    } else {
        "no GPU".to_owned()
    };
    if let Some(v) = r.min_gpu_vram_mb {
        gpu.push_str(&format!(", ≥ {} VRAM", mb(v)));
    }
    if let Some(v) = r.recommended_gpu_vram_mb {
        gpu.push_str(&format!(" ({} recommended)", mb(v)));
    }
    match r.min_system_ram_mb {
        Some(v) => format!("{gpu}; ≥ {} RAM", mb(v)),
        None => format!("{gpu}; no stated RAM"),
    }
}

/// The live part of the details: state badge, pid, restarts, RSS, CPU and calls; "not loaded"
/// when `live` is `None`.
pub fn render_live_facts(live: Option<&LiveStatus>) -> Markup {
    html! {
        @match live {
            None => span class="badge badge-neutral badge-sm" data-fact="state" { "not loaded" },
            Some(s) => {
                span class={ "badge badge-sm " (state_badge(&s.state)) } data-fact="state" { (s.state) }
                " "
                span class="text-sm" data-fact="live" {
                    @if let Some(pid) = s.pid { "pid " (pid) " · " }
                    (s.restarts) " restarts · "
                    (s.memory_rss_mb.map_or_else(|| "— RSS".to_owned(), |m| format!("{m:.1} MB RSS")))
                    " · "
                    (s.cpu_percent.map_or_else(|| "— CPU".to_owned(), |c| format!("{c:.1} % CPU")))
                    " · " (s.calls) " calls"
                }
            }
        }
    }
}

/// `span.badge.<colour>.badge-sm` with the mode's label.
pub fn execution_mode_badge_html(mode: PluginExecutionMode) -> Markup {
    html! {
        span class={ "badge " (execution_mode_badge(mode)) " badge-sm" } { (execution_mode_label(mode)) }
    }
}

/// `div#plugin-details.card.bg-base-200.mt-4`: title, description, features and version.
pub fn render_plugin_details(
    plugin: &PluginMetadata,
    config: Option<&Map<String, Value>>,
) -> Markup {
    render_plugin_details_with(plugin, config, None)
}

/// [`render_plugin_details`] plus, when `facts` is given, the declared resources
/// (`[data-fact=resources]`), the live state (`[data-fact=state]`, `[data-fact=live]`) and the
/// operations (`[data-fact=operations]`).
pub fn render_plugin_details_with(
    plugin: &PluginMetadata,
    config: Option<&Map<String, Value>>,
    facts: Option<&PluginFacts>,
) -> Markup {
    details_card(plugin, config, facts, false)
}

/// [`render_plugin_details_with`] marked for an htmx out-of-band swap (`hx-swap-oob="true"`), so
/// an answer that fills another element can replace the details card too.
pub fn render_plugin_details_oob(
    plugin: &PluginMetadata,
    config: Option<&Map<String, Value>>,
    facts: Option<&PluginFacts>,
) -> Markup {
    details_card(plugin, config, facts, true)
}

fn details_card(
    plugin: &PluginMetadata,
    config: Option<&Map<String, Value>>,
    facts: Option<&PluginFacts>,
    oob: bool,
) -> Markup {
    let features = extract_plugin_features(plugin, config);
    html! {
        div id=(ids::PLUGIN_DETAILS) class="card bg-base-200 mt-4" aria-live="polite"
            hx-swap-oob=[oob.then_some("true")] {
            div class="card-body" {
                h3 class="card-title" { (plugin.title) }
                p class="text-base-content/80 text-sm mb-4" {
                    (plugin.description.as_deref().filter(|d| !d.is_empty()).unwrap_or("No description available."))
                }
                div class="mb-4" {
                    @for f in &features {
                        div class="flex items-center mb-2" {
                            span class="font-medium text-base-content/70 text-sm" { (f.label) ":" }
                            span class={ "badge " (f.badge) " badge-sm ml-2" } { (f.value) }
                        }
                    }
                }
                @if let Some(facts) = facts {
                    dl class="text-sm mb-4" {
                        dt class="font-medium text-base-content/70" { "Resources" }
                        dd class="mb-2" data-fact="resources" {
                            (facts.resources.as_ref().map_or_else(|| "not declared".to_owned(), resources_text))
                        }
                        dt class="font-medium text-base-content/70" { "State" }
                        dd class="mb-2" { (render_live_facts(facts.live.as_ref())) }
                        dt class="font-medium text-base-content/70" { "Operations" }
                        dd data-fact="operations" {
                            (operations_text(facts.operations.as_deref()))
                        }
                    }
                }
                p class="text-base-content/60 text-xs" {
                    "Version: " (plugin.version.as_deref().unwrap_or("Unknown"))
                }
            }
        }
    }
}

fn operations_text(ops: Option<&[String]>) -> String {
    match ops {
        None => "unknown (not declared)".to_owned(),
        Some([]) => "none".to_owned(),
        Some(ops) => ops.join(", "),
    }
}

/// The dropdown selector's settings: the original's keyword arguments, with the compare endpoint
/// given explicitly instead of derived from the selection endpoint (the original turned
/// `/selector/select` into `/compareor/compare`).
#[derive(Clone, Copy)]
pub struct DropdownSelector<'a> {
    /// The plugins offered, in order.
    pub plugins: &'a [PluginMetadata],
    /// The unique id selected; a missing or unknown id selects the first plugin.
    pub selected_plugin_id: Option<&'a str>,
    /// `POST` endpoint (form field `plugin_id`) the `select` posts to as soon as the selection
    /// changes, filling [`DropdownSelector::target_id`] — no extra click; its answer may update
    /// the details card out of band.
    pub selection_endpoint: Option<&'a str>,
    /// `GET` endpoint returning a new details card for `?plugin_id=`, used on change when no
    /// selection endpoint and target are given.
    pub details_endpoint: Option<&'a str>,
    /// `GET` endpoint returning the comparison table.
    pub compare_endpoint: Option<&'a str>,
    /// The id of the element the selection endpoint's answer fills.
    pub target_id: Option<&'a str>,
    /// The label of the `select`.
    pub label: &'a str,
    /// The configuration getter, called for the selected plugin only.
    pub get_plugin_config: Option<ConfigGetter<'a>>,
    /// Resources, live state and operations, shown in the details and the comparison.
    pub get_plugin_facts: Option<FactsGetter<'a>>,
    /// Whether to offer "Compare All Plugins" and its container.
    pub show_comparison_toggle: bool,
    /// Whether the page places `div#plugin-comparison` itself (e.g. full width below a
    /// two-column layout); then the selector renders only the button.
    pub comparison_outside: bool,
}

impl<'a> DropdownSelector<'a> {
    /// A selector over `plugins` with the original's defaults: no endpoints, label
    /// `Select Plugin`, comparison shown.
    pub fn new(plugins: &'a [PluginMetadata]) -> Self {
        Self {
            plugins,
            selected_plugin_id: None,
            selection_endpoint: None,
            details_endpoint: None,
            compare_endpoint: None,
            target_id: None,
            label: "Select Plugin",
            get_plugin_config: None,
            get_plugin_facts: None,
            show_comparison_toggle: true,
            comparison_outside: false,
        }
    }

    /// Renders it; see [`render_dropdown_selector`].
    pub fn render(&self) -> Markup {
        render_dropdown_selector(self)
    }
}

impl std::fmt::Debug for DropdownSelector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropdownSelector")
            .field("plugins", &self.plugins.len())
            .field("selected_plugin_id", &self.selected_plugin_id)
            .field("selection_endpoint", &self.selection_endpoint)
            .field("details_endpoint", &self.details_endpoint)
            .field("compare_endpoint", &self.compare_endpoint)
            .field("target_id", &self.target_id)
            .finish_non_exhaustive()
    }
}

/// `div#plugin-selector`: a labelled `select#plugin-select`, the details card of the selection,
/// "Compare All Plugins" (when a compare endpoint is given) and the empty
/// `div#plugin-comparison`. Changing the selection posts it to the selection endpoint (filling
/// the target) when both are given, else fetches new details from the details endpoint. With no
/// plugins: "No plugins available."
pub fn render_dropdown_selector(s: &DropdownSelector<'_>) -> Markup {
    let Some(first) = s.plugins.first() else {
        return html! { p class="text-base-content/60" { "No plugins available." } };
    };
    let selected = s
        .selected_plugin_id
        .and_then(|id| s.plugins.iter().find(|p| p.unique_id() == id))
        .unwrap_or(first);
    let selected_id = selected.unique_id();
    let config = s.get_plugin_config.and_then(|get| get(selected));
    let facts = s.get_plugin_facts.map(|get| get(selected));
    let include = ids::as_selector(ids::PLUGIN_SELECT);
    html! {
        div id=(ids::PLUGIN_SELECTOR) {
            div class="mb-4" {
                label class="font-semibold mb-2 block" for=(ids::PLUGIN_SELECT) { (s.label) }
                @if let (Some(endpoint), Some(target)) = (s.selection_endpoint, s.target_id) {
                    select id=(ids::PLUGIN_SELECT) class="select select-bordered w-full" name="plugin_id"
                        hx-post=(endpoint) hx-target=(ids::as_selector(target))
                        hx-swap="innerHTML" hx-trigger="change" hx-include=(include)
                        aria-controls=(target) {
                        (options(s.plugins, &selected_id))
                    }
                } @else if let Some(details) = s.details_endpoint {
                    select id=(ids::PLUGIN_SELECT) class="select select-bordered w-full" name="plugin_id"
                        hx-get=(details) hx-target=(ids::as_selector(ids::PLUGIN_DETAILS))
                        hx-swap="outerHTML" hx-trigger="change" hx-include=(include) {
                        (options(s.plugins, &selected_id))
                    }
                } @else {
                    select id=(ids::PLUGIN_SELECT) class="select select-bordered w-full" name="plugin_id" {
                        (options(s.plugins, &selected_id))
                    }
                }
            }
            (render_plugin_details_with(selected, config.as_ref(), facts.as_ref()))
            @if s.show_comparison_toggle {
                @if let Some(compare) = s.compare_endpoint {
                    div class="mt-2" {
                        button type="button" id=(ids::COMPARISON_TOGGLE) class="btn btn-outline btn-sm mt-2"
                            hx-get=(compare) hx-target=(ids::as_selector(ids::PLUGIN_COMPARISON))
                            hx-swap="innerHTML" hx-include=(include)
                            aria-controls=(ids::PLUGIN_COMPARISON) {
                            "Compare All Plugins"
                        }
                    }
                }
                @if !s.comparison_outside {
                    div id=(ids::PLUGIN_COMPARISON) class="mt-4" aria-live="polite" {}
                }
            }
        }
    }
}

fn options(plugins: &[PluginMetadata], selected_id: &str) -> Markup {
    html! {
        @for p in plugins {
            @let id = p.unique_id();
            option value=(id) selected[id == selected_id] { (p.title) }
        }
    }
}

/// Per plugin, the configuration keys whose values are not the same in every compared plugin
/// (a key missing from one counts as different), with that plugin's value. `None` where the
/// plugin's configuration is unknown.
pub fn config_differences(
    configs: &[Option<Map<String, Value>>],
) -> Vec<Option<Vec<(String, Value)>>> {
    let known: Vec<&Map<String, Value>> = configs.iter().flatten().collect();
    let mut keys: Vec<&String> = known.iter().flat_map(|c| c.keys()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let first = known.first().and_then(|c| c.get(*k));
            known.iter().any(|c| c.get(*k) != first)
        })
        .collect();
    configs
        .iter()
        .map(|c| {
            c.as_ref().map(|c| {
                differing
                    .iter()
                    .filter_map(|k| c.get(*k).map(|v| ((*k).clone(), v.clone())))
                    .collect()
            })
        })
        .collect()
}

/// The comparison table, one row per plugin: `Plugin`, `Version`, `Category` (only when the
/// plugins span more than one — within one category it is the same for all), `Mode`,
/// `Resources`, `State`, `Operations` (`unknown` when undeclared) and `Config differences` (the
/// keys whose effective values differ between the compared plugins). The selected row is
/// highlighted. The getters are called for every plugin. With no plugins: "No plugins to
/// compare."
pub fn render_comparison_table(
    plugins: &[PluginMetadata],
    selected_plugin_id: Option<&str>,
    get_plugin_config: Option<ConfigGetter<'_>>,
    get_plugin_facts: Option<FactsGetter<'_>>,
) -> Markup {
    if plugins.is_empty() {
        return html! { p class="text-base-content/60" { "No plugins to compare." } };
    }
    let configs: Vec<Option<Map<String, Value>>> = plugins
        .iter()
        .map(|p| get_plugin_config.and_then(|get| get(p)))
        .collect();
    let diffs = config_differences(&configs);
    let facts: Vec<Option<PluginFacts>> = plugins
        .iter()
        .map(|p| get_plugin_facts.map(|get| get(p)))
        .collect();
    let show_category = plugins.iter().any(|p| p.category != plugins[0].category);
    html! {
        div {
            div class="card card-body bg-base-100 mt-4" {
                h3 class="font-bold text-lg mb-4" { "Plugin Comparison" }
                div class="overflow-x-auto" {
                    table class="table table-zebra w-full" {
                        thead {
                            tr {
                                th scope="col" { "Plugin" }
                                th scope="col" { "Version" }
                                @if show_category { th scope="col" { "Category" } }
                                th scope="col" { "Mode" }
                                th scope="col" { "Resources" }
                                th scope="col" { "State" }
                                th scope="col" { "Operations" }
                                th scope="col" { "Config differences" }
                            }
                        }
                        tbody {
                            @for ((p, diff), fact) in plugins.iter().zip(&diffs).zip(&facts) {
                                @let is_selected = selected_plugin_id == Some(p.unique_id().as_str());
                                tr class=[is_selected.then_some("bg-primary/10")]
                                    aria-selected=[is_selected.then_some("true")] data-plugin=(p.unique_id()) {
                                    th scope="row" {
                                        @if is_selected { span class="font-bold" { (p.title) } }
                                        @else { (p.title) }
                                    }
                                    td data-col="version" { (p.version.as_deref().unwrap_or("unknown")) }
                                    @if show_category { td data-col="category" { (p.category) } }
                                    td data-col="mode" class="whitespace-nowrap" { (execution_mode_badge_html(p.execution_mode)) }
                                    td data-col="resources" {
                                        (fact.as_ref().and_then(|f| f.resources.as_ref()).map_or_else(|| "not declared".to_owned(), resources_text))
                                    }
                                    td data-col="state" class="whitespace-nowrap" {
                                        @match fact.as_ref().and_then(|f| f.live.as_ref()) {
                                            Some(l) => span class={ "badge badge-sm " (state_badge(&l.state)) } { (l.state) },
                                            None => span class="badge badge-neutral badge-sm" { "not loaded" },
                                        }
                                    }
                                    td data-col="operations" {
                                        @match fact.as_ref().and_then(|f| f.operations.as_deref()) {
                                            Some(ops) => (operations_text(Some(ops))),
                                            None => span class="text-base-content/60" { "unknown" },
                                        }
                                    }
                                    td data-col="config" {
                                        @match diff {
                                            None => span class="text-base-content/60" { "unknown" },
                                            Some(d) if d.is_empty() => span class="text-base-content/60" { "—" },
                                            Some(d) => ul {
                                                @for (k, v) in d {
                                                    li { code { (k) } " = " (plain(v)) }
                                                }
                                            },
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

/// How [`render_plugin_selector`] presents the plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectorStrategy {
    /// The dropdown selector (the default).
    #[default]
    Dropdown,
    /// The comparison table.
    Comparison,
}

impl FromStr for SelectorStrategy {
    type Err = std::convert::Infallible;

    /// `comparison` is the table; any other string the dropdown, as in the original.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "comparison" {
            Self::Comparison
        } else {
            Self::Dropdown
        })
    }
}

/// The strategy switch: the comparison table (which takes only the plugins, the selection and
/// the config getter) or the dropdown selector.
pub fn render_plugin_selector(strategy: SelectorStrategy, s: &DropdownSelector<'_>) -> Markup {
    match strategy {
        SelectorStrategy::Comparison => render_comparison_table(
            s.plugins,
            s.selected_plugin_id,
            s.get_plugin_config,
            s.get_plugin_facts,
        ),
        SelectorStrategy::Dropdown => render_dropdown_selector(s),
    }
}
