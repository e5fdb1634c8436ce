//! Registration of a worker placed on a cluster (`execution_mode: ray`): the worker binds a
//! TCP port on its node, then tells the host where it is, over TLS to the host's one-shot
//! registration endpoint (the worker pins the endpoint's certificate by its SHA-256), with a
//! one-time token. The host answers with what the worker serves with: a TLS certificate for
//! its address, the bearer token every call will carry, and the plugin's secrets. None of
//! these travel through the cluster's job API. PROTOCOL.md §1 ("Workers placed on a Ray cluster") is
//! the contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The worker's flag naming the host's registration URL (`https://HOST:PORT/PATH`).
pub const FLAG_URL: &str = "--register";
/// The worker's flag with the hex SHA-256 of the registration endpoint's certificate.
pub const FLAG_PIN: &str = "--register-pin";
/// The worker's flag with the one-time token (useless once the worker has registered).
pub const FLAG_TOKEN: &str = "--register-token";

/// `POST` body from the worker to the registration URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The one-time token from [`FLAG_TOKEN`].
    pub token: String,
    /// The TCP port the worker listens on.
    pub port: u16,
    /// The host name or IP the worker is reached at; absent: the address the registration
    /// came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The worker's pid on its node (for logs).
    pub pid: u32,
}

/// The host's `200` answer: what the worker serves with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterGrant {
    /// The bearer token every call carries (`Authorization: Bearer`).
    pub auth_token: String,
    /// PEM certificate chain for the worker's address, issued by a CA the host made for this
    /// worker alone.
    pub tls_cert_pem: String,
    /// PEM private key of [`tls_cert_pem`](Self::tls_cert_pem).
    pub tls_key_pem: String,
    /// Environment variables the worker sets before the plugin starts (the plugin's secrets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for RegisterGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterGrant")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
