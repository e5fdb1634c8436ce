//! # cjm-worker-sdk
//!
//! The plugin author's half of cjm: implement a trait, add one macro, and the result is a worker
//! binary that the cjm host spawns and calls over protocol v1 (see `PROTOCOL.md`).
//!
//! Status: being built (see the open issues). The shared types live in [`cjm_core`].

#![warn(missing_docs)]

pub use cjm_core as core;
