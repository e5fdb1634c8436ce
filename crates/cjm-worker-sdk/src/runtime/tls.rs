//! TLS for a worker served over the network: `--tls-cert FILE --tls-key FILE` (PEM), with the
//! bearer token from `--token-file FILE`. The host trusts the certificate through the CA file
//! its manifest names (`remote.ca_file`).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use super::listener::ListenError;

/// A certificate chain and its private key, ready to serve TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(<certificate and key>)")
    }
}

impl TlsIdentity {
    /// Reads the PEM certificate chain in `cert` and the PEM private key in `key`; errors name
    /// the file and what is wrong with it.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ListenError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| ListenError::Invalid(format!("--tls-cert {}: {e}", cert.display())))?;
        if certs.is_empty() {
            return Err(ListenError::Invalid(format!(
                "--tls-cert {}: no PEM certificate in the file",
                cert.display()
            )));
        }
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| ListenError::Invalid(format!("--tls-key {}: {e}", key.display())))?;
        Self::from_parts(certs, private).map_err(|e| {
            ListenError::Invalid(format!(
                "--tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })
    }

    /// The PEM certificate chain `cert` and PEM private key `key`, from memory (what a worker
    /// placed on a cluster receives when it registers).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, ListenError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| ListenError::Invalid(format!("TLS certificate: {e}")))?;
        if certs.is_empty() {
            return Err(ListenError::Invalid(
                "TLS certificate: no PEM certificate".into(),
            ));
        }
        let private = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| ListenError::Invalid(format!("TLS key: {e}")))?;
        Self::from_parts(certs, private)
            .map_err(|e| ListenError::Invalid(format!("TLS certificate and key: {e}")))
    }

    fn from_parts(
        certs: Vec<CertificateDer<'static>>,
        private: PrivateKeyDer<'static>,
    ) -> Result<Self, rustls::Error> {
        // ring, not aws-lc-rs: no cmake or large C build for every user of the SDK. rustls
        // deprecates ring's provider only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}
