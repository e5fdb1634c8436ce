//! # cjm-ui
//!
//! HTML components for picking and configuring plugins in a web page: the execution-mode badge,
//! the details card, the dropdown selector, the comparison table and a configuration form
//! generated from the plugin's JSON Schema.
//!
//! Status: being built (see the open issues). The shared types live in [`cjm_core`].

#![warn(missing_docs)]

pub use cjm_core as core;
