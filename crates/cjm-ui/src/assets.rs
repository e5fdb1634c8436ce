//! The page's own htmx and stylesheet, embedded in the binary so the page works offline.
//!
//! - `htmx.min.js`: htmx 2.0.11 from the npm registry (`npm pack htmx.org@2.0.11`,
//!   `dist/htmx.min.js`, unmodified), Zero-Clause BSD licence (`assets/htmx.LICENSE`).
//! - `app.css`: Tailwind CSS 3 with the DaisyUI 4 plugin (both from the npm registry), compiled
//!   and minified for exactly the classes this crate's sources use; `assets/build-css.sh`
//!   regenerates it after a class is added. MIT licences (`assets/daisyui.LICENSE`,
//!   `assets/tailwindcss.LICENSE`).

/// htmx, minified.
pub const HTMX_JS: &[u8] = include_bytes!("../assets/htmx.min.js");
/// The stylesheet.
pub const APP_CSS: &[u8] = include_bytes!("../assets/app.css");
/// The htmx version embedded.
pub const HTMX_VERSION: &str = "2.0.11";
