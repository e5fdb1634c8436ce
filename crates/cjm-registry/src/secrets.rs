//! Per-plugin secrets, shared with the original's host: the store lives in
//! [`cjm_host::secrets`] (the host reads it at every worker start) and is re-exported here for
//! applications that manage settings through the registry.

pub use cjm_host::secrets::{SecretError, SecretStore, DEFAULT_SCOPE, SECRETS_FILE};
