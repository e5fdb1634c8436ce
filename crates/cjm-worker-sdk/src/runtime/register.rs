//! Registering with the host that placed this worker on a cluster (`--register URL
//! --register-pin SHA256 --register-token T`; see `cjm_core::wire::register`): after binding
//! its TCP port, the worker tells the host where it is and receives the certificate, bearer
//! token and secrets it serves with. The host's endpoint is trusted only if its certificate
//! has the pinned SHA-256.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cjm_core::wire::register::{RegisterGrant, RegisterRequest, FLAG_PIN, FLAG_URL};
use http_body_util::{BodyExt, Full, Limited};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};

use super::listener::ListenError;

/// The whole exchange (connect, TLS, request, answer) must finish in this time.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read from the host.
const MAX_GRANT: usize = 1 << 20;

/// Where and how to register, from the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    /// `https://HOST:PORT/PATH` of the host's registration endpoint.
    pub url: String,
    /// SHA-256 of the endpoint's certificate (DER).
    pub pin: [u8; 32],
    /// The one-time token.
    pub token: String,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Parses the hex pin of [`FLAG_PIN`].
    pub fn parse_pin(hex: &str) -> Result<[u8; 32], ListenError> {
        let bad = || ListenError::Invalid(format!("{FLAG_PIN} {hex:?} is not 64 hex digits"));
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(out)
    }

    /// Registers a worker listening on `port`; the host's grant on success.
    pub(crate) fn register(&self, port: u16) -> Result<RegisterGrant, ListenError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ListenError::io("starting the registration runtime", e))?;
        let out = rt.block_on(async {
            tokio::time::timeout(REGISTER_TIMEOUT, self.exchange(port))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("no answer within {}s", REGISTER_TIMEOUT.as_secs()))
                })
        });
        out.map_err(|why| {
            ListenError::Invalid(format!("registering with {} failed: {why}", self.url))
        })
    }

    async fn exchange(&self, port: u16) -> Result<RegisterGrant, String> {
        let (host, host_port, path) = split_url(&self.url)
            .ok_or_else(|| format!("{FLAG_URL} {:?} is not https://HOST:PORT/PATH", self.url))?;
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned {
            sha256: self.pin,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))?;
        let tcp = tokio::net::TcpStream::connect((host, host_port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        let body = RegisterRequest {
            token: self.token.clone(),
            port,
            host: None,
            pid: std::process::id(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let req = http::Request::post(path)
            .header(http::header::HOST, format!("{host}:{host_port}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_GRANT)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the host answered {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("the host's answer: {e}"))
    }
}

/// `https://HOST:PORT/PATH` → (host, port, path).
fn split_url(url: &str) -> Option<(&str, u16, &str)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?, path))
}

/// Trusts exactly one certificate, by its SHA-256; the handshake signatures are still
/// checked against it.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the registration endpoint's certificate is not the one {FLAG_PIN} names"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_pins_parse() {
        assert_eq!(
            split_url("https://127.0.0.1:9000/cjm/register"),
            Some(("127.0.0.1", 9000, "/cjm/register"))
        );
        assert_eq!(split_url("https://[::1]:9/"), Some(("::1", 9, "/")));
        assert_eq!(split_url("http://h:1/"), None);
        assert_eq!(split_url("https://h/"), None);
        let pin = "ab".repeat(32);
        assert_eq!(Registration::parse_pin(&pin).unwrap(), [0xab; 32]);
        for bad in ["", "ab", &"zz".repeat(32), &"é".repeat(32)] {
            let e = Registration::parse_pin(bad).unwrap_err().to_string();
            assert!(e.contains(FLAG_PIN), "{e}");
        }
    }
}
