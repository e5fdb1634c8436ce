//! Figures through `cjm serve`: a sync call from a local HTTP client (its limit: twice the
//! in-process host's round trip, measured alternately with it) and a `/metrics` scrape with 100 plugins
//! loaded (goal: 5 ms).

use std::time::Instant;

use bytes::Bytes;
use cjm_host::{PluginError, PluginManager};
use cjm_serve::Service;
use cjm_ui::{Access, AppState};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;

use crate::{io, median};

/// Plugins loaded for the scrape figure.
pub(crate) const SCRAPED_PLUGINS: usize = 100;

/// The scrape goal, in seconds.
const SCRAPE_GOAL_S: f64 = 0.005;

fn fail(e: impl std::fmt::Display) -> PluginError {
    PluginError::fatal(e.to_string())
}

pub(crate) async fn measure(
    m: &PluginManager,
    configs: &std::path::Path,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    let app = AppState::from_manager(m.clone(), configs)
        .await
        .map_err(fail)?;
    let service = Service::new(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .serve_tcp(listener, Access::new(addr), async {
                    let _ = stopped.await;
                })
                .await
        })
    };

    let mut tx = connect(addr).await?;
    let mut post = async |path: &str, body: &Value| -> Result<Bytes, PluginError> {
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(fail)?;
        // The previous response's connection state settles first (else hyper cancels).
        tx.ready()
            .await
            .map_err(|e| fail(format!("POST {path}: {e}")))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| fail(format!("POST {path}: {e}")))?;
        let ok = resp.status().is_success();
        let bytes = resp.into_body().collect().await.map_err(fail)?.to_bytes();
        if !ok {
            return Err(fail(String::from_utf8_lossy(&bytes)));
        }
        Ok(bytes)
    };
    let body = |i: usize| json!({"args": ["echo"], "kwargs": {"i": i, "text": "hello"}});
    for i in 0..50 {
        post("/api/v1/plugins/echo0/call", &body(i)).await?;
    }
    // Each call through the service alternates with the same call made in-process, so that
    // the figure and its limit meet the same moments of a noisy machine.
    let mut rtt = Vec::with_capacity(300);
    let mut inproc = Vec::with_capacity(300);
    for i in 0..300 {
        let t = Instant::now();
        m.execute("echo0", crate::echo(json!({"i": i, "text": "hello"})))
            .await?;
        inproc.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        post("/api/v1/plugins/echo0/call", &body(i)).await?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    f.insert("serve_sync_rtt_p50_us".into(), json!(median(rtt)));

    // An 8 MiB string through the service, both ways (the worker's answer passes through as
    // JSON text: `PluginManager::execute_raw`).
    let big = json!({"args": ["echo"], "kwargs": {"text": "x".repeat(8 << 20)}});
    let mut mbps = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let answer = post("/api/v1/plugins/echo0/call", &big).await?;
        let secs = t.elapsed().as_secs_f64();
        if answer.len() < 8 << 20 {
            return Err(fail("the 8 MiB answer through the service came back short"));
        }
        mbps.push(2.0 * f64::from(8u32 << 20) / 1e6 / secs);
    }
    f.insert("serve_8MiB_roundtrip_MBps".into(), json!(median(mbps)));
    f.insert(
        "serve_sync_rtt_p50_us_limit".into(),
        json!(2.0 * median(inproc)),
    );

    // /metrics with 100 plugins loaded.
    let names: Vec<String> = (0..SCRAPED_PLUGINS).map(|i| format!("m{i}")).collect();
    for r in futures::future::join_all(names.iter().map(|n| m.load(n, None))).await {
        r?;
    }
    // A new connection: the service closes one left idle longer than its header timeout, and
    // starting 100 workers on a busy machine can take that long.
    let mut tx = connect(addr).await?;
    let mut scrape = async || -> Result<usize, PluginError> {
        let req = hyper::Request::get("/metrics")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(fail)?;
        tx.ready()
            .await
            .map_err(|e| fail(format!("GET /metrics: {e}")))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| fail(format!("GET /metrics: {e}")))?;
        let bytes = resp.into_body().collect().await.map_err(fail)?.to_bytes();
        Ok(bytes.len())
    };
    // The first scrape takes the worker samples.
    scrape().await?;
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let len = scrape().await?;
        times.push(t.elapsed().as_secs_f64());
        if len < 1000 {
            return Err(fail(format!("/metrics answered only {len} bytes")));
        }
    }
    f.insert("metrics_scrape_100_s".into(), json!(median(times)));
    f.insert("metrics_scrape_100_s_limit".into(), json!(SCRAPE_GOAL_S));

    let _ = stop.send(());
    server
        .await
        .map_err(|e| fail(format!("server task: {e}")))?
        .map_err(|e| fail(format!("server: {e}")))?;
    service.shutdown().await;
    Ok(())
}

/// A keep-alive HTTP/1.1 connection to the service.
async fn connect(
    addr: std::net::SocketAddr,
) -> Result<http1::SendRequest<Full<Bytes>>, PluginError> {
    let stream = TcpStream::connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let (tx, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(fail)?;
    tokio::spawn(conn);
    Ok(tx)
}
