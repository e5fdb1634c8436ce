//! Every HTML id the components and the settings page use, in one place, so server routes,
//! `hx-target`s, tests and stylesheets agree.
//!
//! The first five are the original's `PluginSelectorHtmlIds`; `comparison-toggle`, unused there,
//! is the id of the "Compare All Plugins" button here.

/// The dropdown selector's outer `div`.
pub const PLUGIN_SELECTOR: &str = "plugin-selector";
/// The plugin `select` (form field `plugin_id`).
pub const PLUGIN_SELECT: &str = "plugin-select";
/// The details card, replaced when the selection changes.
pub const PLUGIN_DETAILS: &str = "plugin-details";
/// Where the comparison table goes.
pub const PLUGIN_COMPARISON: &str = "plugin-comparison";
/// The "Compare All Plugins" button.
pub const COMPARISON_TOGGLE: &str = "comparison-toggle";

/// The settings page's category navigation.
pub const CATEGORY_NAV: &str = "category-nav";
/// The settings page's main area: one category's selector and the chosen plugin's settings.
pub const PLUGIN_AREA: &str = "plugin-area";
/// Where the chosen plugin's configuration form and status go ("Continue" fills it).
pub const PLUGIN_CONFIG: &str = "plugin-config";
/// The configuration form.
pub const CONFIG_FORM: &str = "plugin-config-form";
/// The notice above the form after a save (success, or what went wrong).
pub const CONFIG_NOTICE: &str = "config-notice";
/// The form's "Reset to defaults" button.
pub const CONFIG_RESET: &str = "config-reset";
/// The overview table of every plugin's live state (polls).
pub const PLUGIN_OVERVIEW: &str = "plugin-overview";
/// The status panel (live facts and the Load/Unload button).
pub const PLUGIN_STATUS: &str = "plugin-status";
/// The part of the status panel that polls.
pub const PLUGIN_STATUS_LIVE: &str = "plugin-status-live";
/// The state badge inside the status panel.
pub const PLUGIN_STATE: &str = "plugin-state";

/// `#id`, for `hx-target` and CSS selectors.
pub fn as_selector(id: &str) -> String {
    format!("#{id}")
}

/// The id of the form input for the configuration key `key`: `cfg-` followed by the key, with
/// every character other than an ASCII letter, digit or `_` written as `-` plus its hex code, so
/// distinct keys always get distinct, valid ids (`max tokens` → `cfg-max-20tokens`).
pub fn field_id(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    out.push_str("cfg-");
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            out.push_str(&format!("-{:x}-", u32::from(c)));
        }
    }
    out
}

/// The id of the help text under the input of `key`.
pub fn field_help_id(key: &str) -> String {
    format!("{}--help", field_id(key))
}

/// The id of the error message under the input of `key`.
pub fn field_error_id(key: &str) -> String {
    format!("{}--error", field_id(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_field_ids() {
        assert_eq!(as_selector(PLUGIN_DETAILS), "#plugin-details");
        assert_eq!(field_id("level"), "cfg-level");
        assert_eq!(field_id("max tokens"), "cfg-max-20-tokens");
        assert_eq!(field_id("a-b"), "cfg-a-2d-b");
        assert_ne!(field_id("a-2d-b"), field_id("a-b"), "ids are injective");
        assert_eq!(field_id("\"><x"), "cfg--22--3e--3c-x");
        assert_eq!(field_error_id("level"), "cfg-level--error");
        assert_eq!(field_help_id("level"), "cfg-level--help");
    }
}
