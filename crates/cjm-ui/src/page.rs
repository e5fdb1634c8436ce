//! The settings page's frame: the document with its vendored assets, the category navigation and
//! one category's panel.

use maud::{html, Markup, DOCTYPE};

use crate::ids;

/// htmx settings: swap error responses too (the server answers errors as HTML fragments meant
/// to be shown), and never evaluate scripts in swapped content.
const HTMX_CONFIG: &str = r#"{"responseHandling":[{"code":"204","swap":false},{"code":"[23]..","swap":true},{"code":"[45]..","swap":true,"error":true}],"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false}"#;

/// One entry of the category navigation.
#[derive(Debug, Clone)]
pub struct CategoryLink {
    /// The category.
    pub name: String,
    /// What people see.
    pub display_name: String,
    /// How many plugins it has.
    pub plugins: usize,
}

/// Percent-encodes `s` for a URL path segment or query value (everything but RFC 3986
/// unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The whole document: `<head>` with `/static/app.css` and `/static/htmx.min.js`, a navbar, the
/// category navigation, `main#plugin-area` holding `area`, and `overview` (the table of every
/// plugin) below them.
pub fn render_page(
    categories: &[CategoryLink],
    current: Option<&str>,
    area: Markup,
    overview: Option<Markup>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" data-theme="light" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { "cjm — plugin settings" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/htmx.min.js" defer {}
            }
            body class="min-h-screen bg-base-200" {
                a href="#plugin-area" class="sr-only focus:not-sr-only" { "Skip to plugins" }
                header class="navbar bg-base-100 shadow-sm" {
                    a class="btn btn-ghost text-xl" href="/" { "cjm" }
                    span class="text-base-content/70" { "plugin settings" }
                }
                div class="container mx-auto p-4 grid gap-4 md:grid-cols-4" {
                    (render_category_nav(categories, current, false))
                    main id=(ids::PLUGIN_AREA) class="md:col-span-3" tabindex="-1" {
                        (area)
                    }
                }
                @if let Some(o) = overview {
                    div class="container mx-auto px-4 pb-4" { (o) }
                }
            }
        }
    }
}

/// The category navigation, `current` marked. With `oob`, marked for an htmx out-of-band swap, so
/// a category fragment can update the navigation as well.
pub fn render_category_nav(
    categories: &[CategoryLink],
    current: Option<&str>,
    oob: bool,
) -> Markup {
    html! {
        nav id=(ids::CATEGORY_NAV) class="md:col-span-1" aria-label="Plugin categories"
            hx-swap-oob=[oob.then_some("true")] {
            h2 class="font-semibold mb-2" { "Categories" }
            @if categories.is_empty() {
                p class="text-base-content/60" { "No plugins were discovered." }
            }
            ul class="menu bg-base-100 rounded-box w-full" {
                @for c in categories {
                    @let active = current == Some(c.name.as_str());
                    @let href = format!("/?category={}", url_encode(&c.name));
                    li {
                        a href=(href) class=[active.then_some("active")]
                            aria-current=[active.then_some("page")]
                            hx-get={ "/category/" (url_encode(&c.name)) }
                            hx-target=(ids::as_selector(ids::PLUGIN_AREA))
                            hx-swap="innerHTML" hx-push-url=(href) {
                            (c.display_name)
                            span class="badge badge-sm" { (c.plugins) }
                        }
                    }
                }
            }
        }
    }
}

/// One category on one screen: its heading and the selector (with the details) beside
/// `div#plugin-config`, which holds the selected plugin's settings (side by side from the `lg`
/// width up, so the form is in view without scrolling), and below both, full width, the empty
/// `div#plugin-comparison` (for a selector built with `comparison_outside`).
pub fn render_category_panel(
    display_name: &str,
    selector: Markup,
    config: Option<Markup>,
) -> Markup {
    html! {
        div class="grid gap-4 lg:grid-cols-2 items-start" {
            section class="card bg-base-100 shadow-sm" aria-labelledby="category-title" {
                div class="card-body" {
                    h2 id="category-title" class="text-2xl font-bold" { (display_name) }
                    (selector)
                }
            }
            div id=(ids::PLUGIN_CONFIG) aria-live="polite" {
                @if let Some(c) = config { (c) }
            }
            div id=(ids::PLUGIN_COMPARISON) class="lg:col-span-2" aria-live="polite" {}
        }
    }
}

/// A small error fragment for failed requests.
pub fn render_error(message: &str) -> Markup {
    html! {
        div class="alert alert-error mt-4" role="alert" { span { (message) } }
    }
}
