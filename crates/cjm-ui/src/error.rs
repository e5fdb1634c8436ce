//! [`UiError`]: why the settings app could not start or stopped.

use std::net::SocketAddr;

/// A failure of the settings app as a whole (request failures are answered as HTML).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UiError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the settings server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// A non-loopback address was asked for without an access token.
    #[error(
        "refusing to serve the settings page on {addr} without an access token: any machine that \
         can reach it could change configurations and load plugins. Give a token \
         (`cjm ui --token-file FILE`), or listen on a loopback address such as 127.0.0.1"
    )]
    TokenRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The access token is unusable.
    #[error("unusable access token: {reason}")]
    BadToken {
        /// Why.
        reason: String,
    },
    /// The registry could not be built.
    #[error(transparent)]
    Registry(#[from] cjm_registry::RegistryError),
}
