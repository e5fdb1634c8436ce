//! Shared helpers for cjm's cross-crate integration tests (`tests/`) and the protocol
//! conformance suite (`src/bin/conformance.rs`):
//!
//! - [`http`]: raw HTTP/1.1 over a worker's Unix socket or TCP port, so that checks see the
//!   wire rather than a client's reading of it;
//! - [`process`]: starting a worker the way the host does (an inherited listening socket),
//!   waiting for it to answer `/health`, signalling it, waiting for processes to end, and
//!   ending what a test started;
//! - [`scratch_dir`]: a private temporary directory, removed when dropped.

pub mod http;
pub mod process;

/// A private (`0700`) temporary directory named after `label`, removed with everything in it
/// when dropped.
pub fn scratch_dir(label: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("cjm-{label}-"))
        .tempdir()
}
