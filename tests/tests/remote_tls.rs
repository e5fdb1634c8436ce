//! Remote workers (`execution_mode: remote`): a real worker process serving HTTPS with a bearer
//! token, reached through `PluginManager` with a manifest that names its URL, its CA and the
//! secret holding its token. Wrong token, wrong CA, missing secret, a dropped connection, and
//! an unload that leaves the remote process alone.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cjm_core::ErrorCategory;
use cjm_host::secrets::SecretStore;
use cjm_host::{Call, PluginState};
use cjm_tests::process::{running, worker_command, ChildGuard};
use common::Scratch;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{json, Value};

const WORKER: &str = env!("CARGO_BIN_EXE_host-test-worker");
const TOKEN: &str = "remote-token-0123456789";

/// A CA and a certificate it signed for `localhost`, written as PEM files into `dir`
/// (`<prefix>ca.pem`, `<prefix>cert.pem`, `<prefix>key.pem`).
fn certificates(dir: &Path, prefix: &str) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join(format!("{prefix}ca.pem")), ca.pem()).unwrap();
    std::fs::write(dir.join(format!("{prefix}cert.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{prefix}key.pem")), key.serialize_pem()).unwrap();
}

/// The remote worker: the test worker on an inherited TCP listener, serving TLS with the
/// token. It is not the host's child in any sense the host knows of.
fn start_worker(dir: &Path, listener: &TcpListener) -> ChildGuard {
    let mut cmd = worker_command(WORKER, listener, "tcp");
    cmd.arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .env("CJM_LOG", "warn")
        .stdout(Stdio::null());
    ChildGuard(cmd.spawn().expect("start the remote worker"))
}

fn pid_call() -> Call {
    Call::new(vec![json!("pid")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_tls_worker_is_called_reconnected_and_never_stopped() {
    let s = Scratch::new();
    let dir = s.dir.path();
    certificates(dir, "");
    certificates(dir, "other-");
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut worker = start_worker(dir, &listener);
    drop(listener);

    let url = format!("https://localhost:{port}");
    let manifest = |name: &str, ca: &str, secret: &str| {
        std::fs::copy(dir.join(ca), {
            std::fs::create_dir_all(s.manifests()).unwrap();
            s.manifests().join(format!("{name}-{ca}"))
        })
        .unwrap();
        s.write(
            &format!("{name}.json"),
            &json!({"name": name, "version": "1.0.0", "category": "test",
                    "execution_mode": "remote",
                    "remote": {"url": url, "ca_file": format!("{name}-{ca}"), "token_secret": secret}})
            .to_string(),
        );
    };
    manifest("far", "ca.pem", "TOKEN");
    manifest("wrongtoken", "ca.pem", "BAD");
    manifest("wrongca", "other-ca.pem", "TOKEN");
    manifest("nosecret", "ca.pem", "MISSING");
    let secrets = SecretStore::for_data_dir(&s.data());
    for name in ["far", "wrongca", "nosecret"] {
        secrets.set(name, "TOKEN", TOKEN).unwrap();
    }
    secrets
        .set("wrongtoken", "BAD", "not-the-token-at-all")
        .unwrap();
    let m = s.manager();
    assert_eq!(m.discover(), 4, "{:?}", m.invalid_manifests());

    // Loaded (connected), called and streamed over TLS; the host knows no pid for it.
    m.load("far", None).await.expect("load the remote plugin");
    let out = m.execute("far", pid_call()).await.unwrap();
    assert_eq!(out.value, json!(worker.id()));
    assert_eq!(m.pid("far"), None);
    common::streams_three(&m, "far").await;

    // A wrong token is the worker's refusal; a wrong CA names the TLS failure; a missing
    // secret says how to set it.
    let e = m.load("wrongtoken", None).await.unwrap_err();
    assert_ne!(e.category, ErrorCategory::Transient, "{e}");
    assert!(
        e.message.contains("401") || e.message.to_lowercase().contains("token"),
        "{e}"
    );
    let e = m.load("wrongca", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Transient, "{e}");
    assert!(e.message.contains("certificate"), "{e}");
    let e = m.load("nosecret", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Config, "{e}");
    assert!(e.message.contains("cjm secret set nosecret MISSING"), "{e}");
    // The other plugin was not disturbed.
    assert_eq!(
        m.execute("far", pid_call()).await.unwrap().value,
        json!(worker.id())
    );

    // The connection drops: calls fail as `transient`; the worker comes back on the same port
    // and the host reconnects by itself.
    worker.kill().unwrap();
    worker.wait().unwrap();
    let e = m.execute("far", pid_call()).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Transient, "{e}");
    m.wait_for_state("far", Duration::from_secs(30), |st| {
        st != PluginState::Ready
    })
    .await
    .expect("the host noticed the worker is gone");
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut again = start_worker(dir, &listener);
    drop(listener);
    m.wait_for_state("far", Duration::from_secs(60), |st| {
        st == PluginState::Ready
    })
    .await
    .expect("reconnected");
    let out: Value = m.execute("far", pid_call()).await.unwrap().value;
    assert_eq!(out, json!(again.id()));
    assert!(m.stats("far").await.unwrap().restarts >= 1);

    // Unloading forgets it; the remote process keeps running.
    m.unload("far").await.unwrap();
    assert!(running(again.id()), "the host stopped a remote worker");
    again.kill().unwrap();
    again.wait().unwrap();
}
