//! # cjm-ui
//!
//! HTML components for picking and configuring plugins in a web page, and a settings web app
//! built from them.
//!
//! Components (rendered with [`maud`], which escapes every plugin-supplied string):
//! - [`execution_mode_badge_html`], [`extract_plugin_features`]: a plugin's execution mode and
//!   features as DaisyUI badges;
//! - [`render_plugin_details`] / [`render_plugin_details_with`]: the details card
//!   (`div#plugin-details`), with declared resources, live state and operations
//!   ([`PluginFacts`]);
//! - [`render_dropdown_selector`]: the selector (`div#plugin-selector`); changing the selection
//!   shows that plugin's settings at once (no extra click), and "Compare All Plugins" — whose
//!   endpoint is given explicitly ([`DropdownSelector::compare_endpoint`]) instead of the
//!   original's `select`→`compare` substring replacement that produced `/compareor/compare`;
//! - [`render_comparison_table`] (version, mode, resources, state, operations, config
//!   differences) and the strategy switch [`render_plugin_selector`];
//! - [`render_config_form`] / [`parse_config_form`]: a configuration form generated from the
//!   plugin's JSON Schema (enum labels from the schema, help with its Markdown rendered), with
//!   server-side errors next to their fields and a reset-to-defaults button;
//! - [`render_status_panel`]: live state, restarts, RSS, CPU and calls of a loaded plugin;
//!   [`render_overview`]: the same for every plugin, in one polled table.
//!
//! Every id is a constant in [`ids`].
//!
//! The app ([`app`]): [`serve`] runs the settings page on a registry backed by the host's
//! plugin manager; it serves its own htmx and stylesheet ([`assets`]), so it works offline.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Library code never unwraps, panics or prints; tests may.
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::print_stdout
    )
)]

pub mod app;
pub mod assets;
pub mod components;
pub mod error;
pub mod features;
pub mod form;
pub mod ids;
pub mod page;
pub mod schema_fields;
pub mod status;

pub use app::{guarded, router, serve, serve_listener, Access, AppState};
pub use cjm_core as core;
pub use components::{
    config_differences, execution_mode_badge_html, render_comparison_table,
    render_dropdown_selector, render_plugin_details, render_plugin_details_oob,
    render_plugin_details_with, render_plugin_selector, resources_text, ConfigGetter,
    DropdownSelector, FactsGetter, PluginFacts, SelectorStrategy,
};
pub use error::UiError;
pub use features::{
    execution_mode_badge, execution_mode_label, extract_plugin_features, PluginFeature,
};
pub use form::{
    parse_config_form, render_config_form, render_config_form_with_reset, render_inline_markdown,
    FormState, Notice,
};
pub use schema_fields::{schema_fields, FieldKind, FieldSpec};
pub use status::{
    render_live_status, render_overview, render_status_panel, LiveStatus, OverviewRow, StatusUrls,
};
