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
    /// The registry could not be built.
    #[error(transparent)]
    Registry(#[from] cjm_registry::RegistryError),
}
