//! A remote worker over TLS on loopback (`execution_mode: remote`): its sync round trip p50,
//! whose limit is three times the Unix-socket round trip of the same run.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cjm_host::secrets::SecretStore;
use cjm_host::{PluginError, PluginManager};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{json, Map, Value};

use crate::{echo, io, median, Bench};

/// The plugin's name.
pub(crate) const NAME: &str = "remote-echo";
const TOKEN: &str = "bench-remote-token-0123456789";

fn fail(e: impl std::fmt::Display) -> PluginError {
    PluginError::fatal(e.to_string())
}

/// What `prepare` set up: the port and the files of the worker still to start.
pub(crate) struct Prepared {
    port: u16,
    dir: PathBuf,
}

/// Writes the CA, the worker's certificate and key, the token (file and secret) and the
/// manifest, before the manager discovers.
pub(crate) fn prepare(b: &Bench) -> Result<Prepared, PluginError> {
    let dir = b.scratch.path().join("tls");
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
        .map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .map_err(fail)?
        .signed_by(&key, &ca)
        .map_err(fail)?;
    std::fs::write(dir.join("ca.pem"), ca.pem()).map_err(io)?;
    std::fs::write(dir.join("cert.pem"), cert.pem()).map_err(io)?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).map_err(io)?;
    std::fs::write(dir.join("token"), TOKEN).map_err(io)?;
    SecretStore::for_data_dir(&b.scratch.path().join("data"))
        .set(NAME, "TOKEN", TOKEN)
        .map_err(fail)?;
    // A free port, taken again by the worker later (a bench, not a test: the race is benign).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io)?
        .port();
    let manifest = json!({"name": NAME, "execution_mode": "remote", "remote": {
        "url": format!("https://localhost:{port}"),
        "ca_file": dir.join("ca.pem"), "token_secret": "TOKEN"}});
    std::fs::write(
        b.scratch
            .path()
            .join("manifests")
            .join(format!("{NAME}.json")),
        manifest.to_string(),
    )
    .map_err(io)?;
    Ok(Prepared { port, dir })
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn measure(
    b: &Bench,
    p: Prepared,
    m: &PluginManager,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    let child = Command::new(b.bins.join("echo"))
        .arg("--listen")
        .arg(format!("tcp:127.0.0.1:{}", p.port))
        .arg("--tls-cert")
        .arg(p.dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(p.dir.join("key.pem"))
        .arg("--token-file")
        .arg(p.dir.join("token"))
        .env("CJM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io)?;
    let _child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(fail("the remote worker did not listen within 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    m.load(NAME, None).await?;
    for _ in 0..50 {
        m.execute(NAME, echo(json!({"x": 1}))).await?;
    }
    // Each remote call alternates with the same call to a local worker over its Unix socket
    // (when one is loaded), so that the figure and its limit meet the same moments.
    let local = m.is_loaded("echo0");
    let mut rtt = Vec::with_capacity(300);
    let mut unix = Vec::with_capacity(300);
    for i in 0..300 {
        if local {
            let t = Instant::now();
            m.execute("echo0", echo(json!({"i": i, "text": "hello"})))
                .await?;
            unix.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let t = Instant::now();
        m.execute(NAME, echo(json!({"i": i, "text": "hello"})))
            .await?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    f.insert("remote_tls_rtt_p50_us".into(), json!(median(rtt)));
    if local {
        f.insert(
            "remote_tls_rtt_p50_us_limit".into(),
            json!(3.0 * median(unix)),
        );
    } else if let Some(unix) = f.get("sync_rtt_p50_us").and_then(Value::as_f64) {
        f.insert("remote_tls_rtt_p50_us_limit".into(), json!(3.0 * unix));
    }
    m.unload(NAME).await?;
    Ok(())
}
