//! # cjm-registry
//!
//! A registry of several plugin systems, each under a category, with configuration persisted
//! per plugin: atomic, validated, lock-protected and never silently lost.
//!
//! Status: being built (see the open issues). The shared types live in [`cjm_core`].

#![warn(missing_docs)]

pub use cjm_core as core;
