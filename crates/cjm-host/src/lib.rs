//! # cjm-host
//!
//! The host side of cjm: the `PluginManager` that discovers plugins from manifests, spawns each
//! worker in its own process group, talks to it over protocol v1 through a pooled HTTP client,
//! supervises it (restart policy, crash-loop cap), schedules calls against resources and tears
//! everything down cleanly.
//!
//! Status: being built (see the open issues). The shared types live in [`cjm_core`].

#![warn(missing_docs)]

pub use cjm_core as core;
