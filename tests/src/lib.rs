//! Shared helpers for cjm's cross-crate integration tests.
