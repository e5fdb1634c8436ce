//! Errors: [`ServeError`] for starting and running the service, and the API's error answers.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cjm_core::wire::ErrorBody;
use cjm_core::{ErrorCategory, PluginError};
use cjm_registry::RegistryError;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The settings page or the access rules refused (e.g. a non-loopback address without a
    /// token).
    #[error(transparent)]
    Ui(#[from] cjm_ui::UiError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The local socket could not be made.
    #[error("cannot listen on the local socket {}: {source}", path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the service failed: {0}")]
    Serve(std::io::Error),
}

/// An API error answer: the status of the error's category and the worker protocol's error
/// body (`{"detail": …, "cjm_error": {…}}`, PROTOCOL.md §5), so one decoder reads both.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) PluginError);

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        Self(e)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let fields = e.field_errors().to_vec();
        let mut err = match &e {
            RegistryError::Invalid { .. } | RegistryError::SavedInvalid { .. } => {
                PluginError::new(ErrorCategory::Config, e.to_string())
            }
            _ => PluginError::fatal(e.to_string()),
        };
        err.details.fields = fields;
        Self(err)
    }
}

impl ApiError {
    /// A bad request: `user_input` with `message`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self(PluginError::user_input(message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.category.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::from(&self.0))).into_response()
    }
}
