//! The original's components with its DaisyUI classes and htmx attributes: the execution-mode
//! badge, the details card, the dropdown selector, the comparison table and the strategy switch.
//!
//! Every string from a plugin (name, title, description, version, config values) is escaped by
//! [`maud`]; nothing here builds HTML by string concatenation.

use std::str::FromStr;

use cjm_core::{PluginExecutionMode, PluginMetadata};
use maud::{html, Markup};
use serde_json::{Map, Value};

use crate::features::{execution_mode_badge, execution_mode_label, extract_plugin_features};
use crate::ids;

/// A plugin's saved (or effective) configuration, if any: what the original's
/// `get_plugin_config` callback returned.
pub type ConfigGetter<'a> = &'a dyn Fn(&PluginMetadata) -> Option<Map<String, Value>>;

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
    let features = extract_plugin_features(plugin, config);
    html! {
        div id=(ids::PLUGIN_DETAILS) class="card bg-base-200 mt-4" aria-live="polite" {
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
                p class="text-base-content/60 text-xs" {
                    "Version: " (plugin.version.as_deref().unwrap_or("Unknown"))
                }
            }
        }
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
    /// `POST` endpoint of "Continue with Selected Plugin" (form field `plugin_id`).
    pub selection_endpoint: Option<&'a str>,
    /// `GET` endpoint returning a new details card for `?plugin_id=`.
    pub details_endpoint: Option<&'a str>,
    /// `GET` endpoint returning the comparison table.
    pub compare_endpoint: Option<&'a str>,
    /// The id of the element "Continue" fills.
    pub target_id: Option<&'a str>,
    /// The label of the `select`.
    pub label: &'a str,
    /// The text of the confirm button.
    pub confirm_button_text: &'a str,
    /// The configuration getter, called for the selected plugin only.
    pub get_plugin_config: Option<ConfigGetter<'a>>,
    /// Whether to offer "Compare All Plugins" and its container.
    pub show_comparison_toggle: bool,
}

impl<'a> DropdownSelector<'a> {
    /// A selector over `plugins` with the original's defaults: no endpoints, label
    /// `Select Plugin`, button `Continue with Selected Plugin`, comparison shown.
    pub fn new(plugins: &'a [PluginMetadata]) -> Self {
        Self {
            plugins,
            selected_plugin_id: None,
            selection_endpoint: None,
            details_endpoint: None,
            compare_endpoint: None,
            target_id: None,
            label: "Select Plugin",
            confirm_button_text: "Continue with Selected Plugin",
            get_plugin_config: None,
            show_comparison_toggle: true,
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

/// `div#plugin-selector`: a labelled `select#plugin-select` (details swap on change), the details
/// card of the selection, "Continue with Selected Plugin" (when a selection endpoint and target
/// are given), "Compare All Plugins" (when a compare endpoint is given) and the empty
/// `div#plugin-comparison`. With no plugins: "No plugins available."
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
    let include = ids::as_selector(ids::PLUGIN_SELECT);
    html! {
        div id=(ids::PLUGIN_SELECTOR) {
            div class="mb-4" {
                label class="font-semibold mb-2 block" for=(ids::PLUGIN_SELECT) { (s.label) }
                @if let Some(details) = s.details_endpoint {
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
            (render_plugin_details(selected, config.as_ref()))
            @if let (Some(endpoint), Some(target)) = (s.selection_endpoint, s.target_id) {
                div class="mt-4" {
                    button type="button" class="btn btn-primary btn-md mt-4"
                        hx-post=(endpoint) hx-target=(ids::as_selector(target))
                        hx-swap="innerHTML" hx-include=(include) {
                        (s.confirm_button_text)
                    }
                }
            }
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
                div id=(ids::PLUGIN_COMPARISON) class="mt-4" aria-live="polite" {}
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

/// The comparison table: `Plugin`, `Execution`, then every other feature label in first-seen
/// order; `N/A` where a plugin lacks one; the selected row highlighted. The config getter is
/// called for every plugin. With no plugins: "No plugins to compare."
pub fn render_comparison_table(
    plugins: &[PluginMetadata],
    selected_plugin_id: Option<&str>,
    get_plugin_config: Option<ConfigGetter<'_>>,
) -> Markup {
    if plugins.is_empty() {
        return html! { p class="text-base-content/60" { "No plugins to compare." } };
    }
    let rows: Vec<(&PluginMetadata, Vec<crate::PluginFeature>)> = plugins
        .iter()
        .map(|p| {
            let config = get_plugin_config.and_then(|get| get(p));
            (p, extract_plugin_features(p, config.as_ref()))
        })
        .collect();
    let mut columns: Vec<&'static str> = vec!["Execution"];
    for (_, features) in &rows {
        for f in features {
            if !columns.contains(&f.label) {
                columns.push(f.label);
            }
        }
    }
    html! {
        div {
            div class="card card-body bg-base-100 mt-4" {
                h3 class="font-bold text-lg mb-4" { "Plugin Comparison" }
                div class="overflow-x-auto" {
                    table class="table table-zebra w-full" {
                        thead {
                            tr {
                                th scope="col" { "Plugin" }
                                @for c in &columns { th scope="col" { (c) } }
                            }
                        }
                        tbody {
                            @for (p, features) in &rows {
                                @let is_selected = selected_plugin_id == Some(p.unique_id().as_str());
                                tr class=[is_selected.then_some("bg-primary/10")]
                                    aria-selected=[is_selected.then_some("true")] {
                                    td {
                                        @if is_selected { span class="font-bold" { (p.title) } }
                                        @else { (p.title) }
                                    }
                                    @for c in &columns {
                                        td {
                                            (features.iter().find(|f| f.label == *c).map_or("N/A", |f| f.value.as_str()))
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
        SelectorStrategy::Comparison => {
            render_comparison_table(s.plugins, s.selected_plugin_id, s.get_plugin_config)
        }
        SelectorStrategy::Dropdown => render_dropdown_selector(s),
    }
}
