//! One request's way in: auth, then the route table (path and method), then the endpoint.
//! Every answer carries `x-cjm-protocol: 1`.

use std::convert::Infallible;
use std::sync::Arc;

use cjm_core::wire::{self, headers as wire_headers, paths};
use cjm_core::PluginError;
use http::header::{HeaderName, HeaderValue, ALLOW, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::respond::error_with;
use super::state::State;
use super::stream::Body;
use super::{calls, config, control};

/// The known paths and the method each takes.
const ROUTES: [(&str, Method); 10] = [
    (paths::HEALTH, Method::GET),
    (paths::STATS, Method::GET),
    (paths::CONFIG_SCHEMA, Method::GET),
    (paths::CONFIG, Method::GET),
    (paths::PROGRESS, Method::GET),
    (paths::INITIALIZE, Method::POST),
    (paths::EXECUTE, Method::POST),
    (paths::EXECUTE_STREAM, Method::POST),
    (paths::CANCEL, Method::POST),
    (paths::CLEANUP, Method::POST),
];

const PROTOCOL_HEADER_VALUE: &str = "1";
const _: () = assert!(wire::PROTOCOL_VERSION == 1);
/// Built at compile time: a name parsed from a `&str` is copied into a new allocation on each
/// answer.
const PROTOCOL_HEADER: HeaderName = HeaderName::from_static(wire_headers::PROTOCOL);

/// The service of every connection: routes `req` and marks the answer with the protocol.
pub(super) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut resp = route(state, req).await;
    resp.headers_mut().insert(
        PROTOCOL_HEADER,
        HeaderValue::from_static(PROTOCOL_HEADER_VALUE),
    );
    Ok(resp)
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if let Some(auth) = &state.auth {
        if !auth.allows(req.headers()) {
            let mut r = error_with(
                StatusCode::UNAUTHORIZED,
                &PluginError::fatal("unauthorized: missing or wrong bearer token"),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let path = req.uri().path();
    let Some((path, method)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return error_with(StatusCode::NOT_FOUND, &PluginError::user_input("Not Found"));
    };
    if req.method() != method {
        let mut r = error_with(
            StatusCode::METHOD_NOT_ALLOWED,
            &PluginError::user_input("Method Not Allowed"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(method.as_str()));
        return r;
    }
    tracing::debug!(path, "request");
    match *path {
        paths::HEALTH => control::health(&state),
        paths::STATS => control::stats(&state),
        paths::CONFIG_SCHEMA => config::schema(&state).await,
        paths::CONFIG => config::current(&state).await,
        paths::PROGRESS => control::progress(&state),
        paths::INITIALIZE => config::initialize(state, req).await,
        paths::EXECUTE => calls::execute(state, req).await,
        paths::EXECUTE_STREAM => calls::execute_stream(state, req).await,
        paths::CANCEL => control::cancel(&state).await,
        _ => control::cleanup(&state).await,
    }
}
