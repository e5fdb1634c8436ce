//! Remote workers (`execution_mode: remote`): a cjm worker that runs elsewhere and serves HTTPS
//! with a bearer token. The host connects to `remote.url`, trusting only the CA in
//! `remote.ca_file`, with the token stored as the plugin's secret `remote.token_secret`. It
//! never starts or stops the worker: "starting" is connecting and checking `/health`, the
//! worker "exits" when it stops answering, and a restart is a reconnect.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cjm_core::wire::paths;
use cjm_core::{PluginError, RemoteWorker};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::oneshot;
use tokio_rustls::rustls;

use async_trait::async_trait;

use super::{Gone, Killer, Launched, Launcher, WorkerControl};
use crate::client::WorkerClient;
use crate::secrets::SecretStore;
use crate::spawn::LaunchSpec;
use crate::transport::{Endpoint, ReqBody, Transport};

fn config_error(why: String) -> PluginError {
    PluginError::new(cjm_core::ErrorCategory::Config, why)
}

/// Connects to remote workers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RemoteLauncher;

#[async_trait]
impl Launcher for RemoteLauncher {
    fn kind(&self) -> &'static str {
        "remote"
    }

    async fn launch(&self, spec: &LaunchSpec, _seq: u64) -> Result<Launched, PluginError> {
        let cjm_core::WorkerSpec::Remote(remote) = spec.manifest.worker() else {
            return Err(PluginError::fatal("not a remote worker's manifest"));
        };
        connect(spec, remote)
            .await
            .map_err(|e| e.with_plugin(&spec.manifest.name))
    }
}

/// A remote worker is never stopped, killed or cleaned up by this host: other hosts may use
/// it. Stopping only forgets it.
struct RemoteControl;

#[async_trait]
impl WorkerControl for RemoteControl {
    async fn stop(&mut self, _grace: Duration, _gone: &mut Gone) {}

    fn killer(&self) -> Option<Killer> {
        None
    }

    async fn release(&mut self) {}
}

/// How often a connected remote worker is asked for `/health`.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// How long one health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach a remote worker over TLS.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({self})")
    }
}

impl std::fmt::Display for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

impl PartialEq for TlsTarget {
    fn eq(&self, other: &Self) -> bool {
        self.host == other.host && self.port == other.port
    }
}

impl Eq for TlsTarget {}

impl TlsTarget {
    /// The worker of `remote`, trusting only the certificates in the PEM file `ca`.
    pub(crate) fn new(remote: &RemoteWorker, ca: &std::path::Path) -> Result<Self, PluginError> {
        let (host, port) = remote.authority().ok_or_else(|| {
            config_error(format!(
                "remote.url {:?} is not https://HOST:PORT",
                remote.url
            ))
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| config_error(format!("remote.ca_file {}: {e}", ca.display())))?;
        Self::trusting(host, port, certs)
            .map_err(|e| config_error(format!("remote.ca_file {}: {e}", ca.display())))
    }

    /// The worker at `host:port`, trusting only the certificates in `ca_pem` (the CA a Ray
    /// worker's certificate was issued by at its registration).
    pub(crate) fn with_ca_pem(host: &str, port: u16, ca_pem: &[u8]) -> Result<Self, PluginError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| PluginError::fatal(format!("the worker's CA certificate: {e}")))?;
        Self::trusting(host, port, certs)
            .map_err(|e| PluginError::fatal(format!("the worker's CA certificate: {e}")))
    }

    fn trusting(
        host: &str,
        port: u16,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        if roots.is_empty() {
            return Err("no PEM certificate in it".into());
        }
        // ring, as in the SDK: rustls deprecates its provider only for lacking post-quantum
        // key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("the worker's host {host:?}: {e}"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
            server_name,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// A TLS connection to the worker.
    pub(crate) async fn connect(
        &self,
    ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

/// "Starts" a remote worker: builds the TLS client, checks `/health` within the manifest's
/// start-up timeout, and watches it. Its `pid` is 0 (there is no local process); its `exit`
/// resolves when it stops answering `/health`.
pub(crate) async fn connect(
    spec: &LaunchSpec,
    remote: &RemoteWorker,
) -> Result<Launched, PluginError> {
    let m = &spec.manifest;
    let ca = {
        let p = PathBuf::from(&remote.ca_file);
        match (p.is_relative(), m.path.as_ref().and_then(|f| f.parent())) {
            (true, Some(dir)) => dir.join(p),
            _ => p,
        }
    };
    let target = TlsTarget::new(remote, &ca)?;
    let token = SecretStore::for_data_dir(&spec.data_dir)
        .get(m.plugin_name(), &remote.token_secret)
        .map_err(|e| PluginError::fatal(e.to_string()))?
        .ok_or_else(|| {
            PluginError::new(
                cjm_core::ErrorCategory::Config,
                format!(
                    "the token of the remote worker is not set: `cjm secret set {} {}` \
                     (remote.token_secret)",
                    m.plugin_name(),
                    remote.token_secret
                ),
            )
        })?;
    let endpoint = Endpoint::Tls(Arc::new(target));
    let transport = Transport::new(endpoint.clone(), Some(&token));
    let deadline = Instant::now() + m.startup_timeout();
    let client = WorkerClient::handshake(transport, Some(deadline), spec.generation())
        .await
        .map_err(|e| unreachable_error(&endpoint, e))?;
    let client = Arc::new(client);
    let (tx, gone) = oneshot::channel();
    tokio::spawn(watch(Arc::clone(&client), tx));
    tracing::info!(plugin = %m.name, %endpoint, "connected to the remote worker");
    Ok(Launched {
        client,
        pid: None,
        gone,
        control: Box::new(RemoteControl),
    })
}

/// A failed connection is `transient` (the worker may come back); an answer that says no is
/// the worker's own error (`401` for a wrong token, say).
fn unreachable_error(endpoint: &Endpoint, e: PluginError) -> PluginError {
    if crate::transport::is_connection_failure(&e) {
        PluginError::transient(format!(
            "the remote worker at {endpoint} is unreachable: {}",
            e.message
        ))
    } else {
        e
    }
}

/// Asks `/health` every [`HEALTH_EVERY`] until it fails twice in a row, then reports the
/// worker gone through `tx`; ends quietly when nobody listens any more (unloaded).
async fn watch(
    client: Arc<WorkerClient>,
    mut tx: oneshot::Sender<io::Result<std::process::ExitStatus>>,
) {
    let mut failures = 0;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(HEALTH_EVERY) => {}
        }
        let transport = client.transport();
        let check = async {
            let req = transport
                .request(http::Method::GET, paths::HEALTH)
                .body(ReqBody::Empty)
                .map_err(|e| PluginError::fatal(e.to_string()))?;
            let resp = transport
                .call(req, Some(Instant::now() + HEALTH_TIMEOUT))
                .await?;
            if resp.status.is_success() {
                Ok(())
            } else {
                Err(PluginError::transient(format!(
                    "/health answered {}",
                    resp.status
                )))
            }
        };
        let result = tokio::select! {
            () = tx.closed() => return,
            r = check => r,
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= 2 {
                    transport.clear();
                    let _ = tx.send(Err(io::Error::other(format!(
                        "the remote worker at {} stopped answering: {}",
                        transport.endpoint(),
                        e.message
                    ))));
                    return;
                }
            }
        }
    }
}
