//! The host's one-shot registration endpoint for a worker placed on a cluster (see
//! `cjm_core::wire::register`). It serves HTTPS with a certificate made for this one launch
//! (the worker pins its SHA-256), accepts one `POST` carrying the one-time token, and answers
//! with a certificate for the worker's address (from a CA made for this worker alone), the
//! bearer token calls will carry and the plugin's environment. Then it closes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cjm_core::wire::register::{RegisterGrant, RegisterRequest};
use cjm_core::{ErrorCategory, PluginError};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// The path workers `POST` to.
const PATH: &str = "/cjm/register";

/// How long one connection to the endpoint may take (TLS, request, answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest registration body read.
const MAX_BODY: usize = 64 * 1024;

/// Where a registered worker serves, and how to trust and call it.
#[derive(Clone)]
pub(crate) struct Registered {
    /// The host name or IP the worker is reached at.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The PEM certificate of the CA that issued the worker's certificate (trust only it).
    pub ca_pem: String,
    /// The bearer token the worker requires.
    pub auth_token: String,
    /// The worker's pid on its node.
    pub pid: u32,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// One launch's registration endpoint, listening.
pub(crate) struct Registrar {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    url: String,
    pin: String,
    token: String,
}

impl Registrar {
    /// Listens on `bind`; workers reach it as `https://{public_host}:PORT`.
    pub(crate) async fn open(bind: SocketAddr, public_host: &str) -> Result<Self, PluginError> {
        let fatal = |what: &str, e: &dyn std::fmt::Display| {
            PluginError::fatal(format!("the registration endpoint: {what}: {e}"))
        };
        let listener = TcpListener::bind(bind).await.map_err(|e| {
            PluginError::new(
                ErrorCategory::Config,
                format!("cannot listen for Ray workers' registration on {bind}: {e}"),
            )
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| fatal("its address", &e))?
            .port();
        let own = rcgen::generate_simple_self_signed(vec![public_host.to_owned()])
            .map_err(|e| fatal("its certificate", &e))?;
        let pin = hex(&Sha256::digest(own.cert.der()));
        let key = PrivateKeyDer::from_pem_slice(own.signing_key.serialize_pem().as_bytes())
            .map_err(|e| fatal("its key", &e))?;
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(vec![own.cert.der().clone()], key)
            })
            .map_err(|e| fatal("TLS set-up", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = if public_host.contains(':') {
            format!("[{public_host}]")
        } else {
            public_host.to_owned()
        };
        Ok(Self {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            url: format!("https://{host}:{port}{PATH}"),
            pin,
            token: crate::spawn::new_token()?,
        })
    }

    /// The URL workers register at.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The hex SHA-256 of the endpoint's certificate.
    pub(crate) fn pin(&self) -> &str {
        &self.pin
    }

    /// The one-time token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Serves until one worker registers with the token, granting it `env`. Wrong tokens and
    /// malformed requests are answered (401, 400) and waited past. Cancel-safe: dropping the
    /// future closes the endpoint.
    pub(crate) async fn accept(
        self,
        env: BTreeMap<String, String>,
    ) -> Result<Registered, PluginError> {
        let state = Arc::new(State {
            token: self.token,
            env,
            registered: Mutex::new(None),
        });
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "registration: accept failed");
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let state2 = Arc::clone(&state);
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                let tls = acceptor.accept(tcp).await?;
                let service = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state2);
                    async move { Ok::<_, std::convert::Infallible>(state.answer(req, peer).await) }
                });
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
                    .map_err(std::io::Error::other)
            })
            .await;
            if let Ok(Err(e)) = served {
                tracing::debug!(%peer, error = %e, "registration: a connection failed");
            }
            if let Some(r) = state.registered.lock().ok().and_then(|mut g| g.take()) {
                return Ok(r);
            }
        }
    }
}

struct State {
    token: String,
    env: BTreeMap<String, String>,
    registered: Mutex<Option<Registered>>,
}

impl State {
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, text: String| {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            *r.status_mut() = status;
            r
        };
        if req.method() != http::Method::POST || req.uri().path() != PATH {
            return reply(StatusCode::NOT_FOUND, format!("POST {PATH} only"));
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("the body: {e}")),
        };
        let request: RegisterRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("the body: {e}")),
        };
        let already = self.registered.lock().map(|g| g.is_some()).unwrap_or(true);
        if already || !same(request.token.as_bytes(), self.token.as_bytes()) {
            tracing::warn!(%peer, "a registration with a wrong or used token was refused");
            return reply(StatusCode::UNAUTHORIZED, "wrong registration token".into());
        }
        let host = match request.host {
            Some(h) if !h.trim().is_empty() => h,
            _ => peer_host(peer.ip()),
        };
        match grant(&host, self.env.clone()) {
            Ok((grant, ca_pem)) => {
                let body = match serde_json::to_vec(&grant) {
                    Ok(b) => b,
                    Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                };
                if let Ok(mut g) = self.registered.lock() {
                    *g = Some(Registered {
                        host,
                        port: request.port,
                        ca_pem,
                        auth_token: grant.auth_token,
                        pid: request.pid,
                    });
                }
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The address a worker is reached at when it did not name one: the one it registered from
/// (an IPv4 address mapped into IPv6 is given as IPv4).
fn peer_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// A CA for this worker alone, a certificate it issues for `host`, and a bearer token.
fn grant(
    host: &str,
    env: BTreeMap<String, String>,
) -> Result<(RegisterGrant, String), PluginError> {
    let fail =
        |e: rcgen::Error| PluginError::fatal(format!("making the worker's certificate: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
        .map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let cert = CertificateParams::new(vec![host.to_owned()])
        .map_err(fail)?
        .signed_by(&key, &ca)
        .map_err(fail)?;
    // The CA's key is dropped here: nothing else can ever be issued under it.
    let ca_pem = ca.pem();
    Ok((
        RegisterGrant {
            auth_token: crate::spawn::new_token()?,
            tls_cert_pem: cert.pem(),
            tls_key_pem: key.serialize_pem(),
            env,
        },
        ca_pem,
    ))
}

/// Compares two secrets in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_and_peers_print() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert_eq!(peer_host("::ffff:10.0.0.7".parse().unwrap()), "10.0.0.7");
        assert_eq!(peer_host("::1".parse().unwrap()), "::1");
    }

    #[test]
    fn a_grant_is_a_certificate_its_ca_signed_for_the_host() {
        let (g, ca) = grant("127.0.0.1", BTreeMap::new()).unwrap();
        assert!(ca.contains("BEGIN CERTIFICATE"));
        assert!(g.tls_cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(g.tls_key_pem.contains("PRIVATE KEY"));
        assert_eq!(g.auth_token.len(), 64);
    }
}
