//! Each figure's limit, measured in the same run as the figure: what the machine does with no
//! plugin system in the way. A figure is printed as `cjm / limit`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::{UnixListener, UnixStream};

use crate::{io, median, percentile, WORKERS};
use cjm_host::PluginError;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Adds `<key>_limit` for every figure that has a limit.
pub(crate) async fn measure(f: &mut Map<String, Value>) -> Result<(), PluginError> {
    calls(f, crate::PAR_CALLS).await?;
    let chunks = tokio::task::spawn_blocking(ndjson_pipe)
        .await
        .map_err(|e| PluginError::fatal(format!("the NDJSON limit task failed: {e}")))??;
    f.insert("stream_chunks_per_s_limit".into(), json!(chunks));

    let copy = memcpy_mbps();
    f.insert("payload_8MiB_roundtrip_MBps_limit".into(), json!(copy));
    f.insert("payload_256MiB_blob_MBps_limit".into(), json!(copy));
    f.insert("payload_256MiB_frame_MBps_limit".into(), json!(copy));

    let spawn = bare_spawn()?;
    f.insert("cold_start_one_s_limit".into(), json!(spawn));
    f.insert("cold_start_spaced_s_limit".into(), json!(spawn));
    f.insert("cold_start_big_host_s_limit".into(), json!(spawn));
    if let Some(rss) = idle_rss()? {
        f.insert("idle_worker_rss_mb_limit".into(), json!(rss));
    }
    Ok(())
}

/// The limits of the round trips and of the calls/s (`par_total` calls, 32 in flight), and the
/// same figures to servers in processes of their own (`*_bare_proc*`).
pub(crate) async fn calls(f: &mut Map<String, Value>, par_total: usize) -> Result<(), PluginError> {
    let dir = tempfile::tempdir().map_err(io)?;
    let sock = dir.path().join("ping.sock");
    let listener = UnixListener::bind(&sock).map_err(io)?;
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = server_http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(echo_body))
                    .await;
            });
        }
    });

    // Round trip: one connection, sequential requests with an echo-sized body.
    let mut rtt = round_trips(&sock).await?;
    rtt.sort_by(f64::total_cmp);
    f.insert("sync_rtt_p50_us_limit".into(), json!(percentile(&rtt, 0.5)));
    f.insert(
        "sync_rtt_p99_us_limit".into(),
        json!(percentile(&rtt, 0.99)),
    );

    // Round trip made from a task on the runtime, to a server on a thread and runtime of its
    // own: as a worker in another process, it cannot run on the caller's thread.
    let (path, thread) = own_thread_server(dir.path())?;
    let task = tokio::spawn(async move { round_trips(&path).await });
    let rtt = task
        .await
        .map_err(|e| PluginError::fatal(format!("the ping-pong task failed: {e}")))??;
    f.insert("sync_rtt_task_p50_us_limit".into(), json!(median(rtt)));
    // Its listener is gone with the connection closed: the thread ends.
    drop(thread);

    // Calls/s: 32 in flight over 32 connections.
    let mut conns = Vec::new();
    for _ in 0..32 {
        conns.push(connect(&sock).await?);
    }
    f.insert(
        "async_calls_per_s_par32_limit".into(),
        json!(pings_per_s(conns, par_total).await?.0),
    );
    server.abort();

    // The same two figures with the echo servers in processes of their own, as workers are:
    // not limits (the issue's limits are the in-process ones above), but what the process
    // boundary alone costs on this machine.
    let bare = BareServers::start(dir.path(), WORKERS)?;
    let mut rtt = round_trips(&bare.socks[0]).await?;
    rtt.sort_by(f64::total_cmp);
    f.insert(
        "sync_rtt_p50_us_bare_proc".into(),
        json!(percentile(&rtt, 0.5)),
    );
    let mut conns = Vec::new();
    for i in 0..32 {
        conns.push(connect(&bare.socks[i % bare.socks.len()]).await?);
    }
    let pids: Vec<u32> = bare.children.iter().map(std::process::Child::id).collect();
    let cpu = CpuSplit::start(&pids);
    let (rate, done) = pings_per_s(conns, par_total).await?;
    let keys = (
        "async_calls_par32_bare_client_cpu_us",
        "async_calls_par32_bare_servers_cpu_us",
    );
    cpu.finish(f, keys, done);
    f.insert("async_calls_per_s_par32_bare_procs".into(), json!(rate));

    // The same again, multiplexed on one connection per process instead of HTTP/1.1: what
    // the wire's shape costs (`bare_mux`).
    let mut clients = Vec::new();
    for s in &bare.socks {
        clients.push(crate::bare_mux::Client::connect(&mux_sock(s)).await?);
    }
    let cpu = CpuSplit::start(&pids);
    let rate = crate::bare_mux::calls_per_s(&clients, par_total).await?;
    let keys = (
        "async_calls_par32_bare_mux_client_cpu_us",
        "async_calls_par32_bare_mux_servers_cpu_us",
    );
    cpu.finish(f, keys, par_total);
    f.insert("async_calls_per_s_par32_bare_mux".into(), json!(rate));
    drop(clients);
    drop(bare);
    Ok(())
}

/// The CPU time a stretch of calls costs, split between this process (the caller: the host,
/// or the bare client) and the processes that serve them: per call, in µs, which unlike the
/// calls' rate does not count the time the cores sit idle waiting for one another. Read from
/// every thread's `schedstat` (`cjm_sys::proc::cpu_time_ns`); not recorded where the kernel
/// keeps no such figures.
pub(crate) struct CpuSplit {
    pids: Vec<u32>,
    caller: Option<u64>,
    servers: Option<u64>,
}

impl CpuSplit {
    /// Starts counting for this process and `pids`.
    pub(crate) fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            caller: cjm_sys::proc::cpu_time_ns(std::process::id()),
            servers: servers_ns(pids),
        }
    }

    /// Records the CPU per one of `calls`, in µs: this process's under `keys.0`, the served
    /// processes' under `keys.1`.
    pub(crate) fn finish(self, f: &mut Map<String, Value>, keys: (&str, &str), calls: usize) {
        let per_call = |before: Option<u64>, after: Option<u64>| {
            let spent = after?.checked_sub(before?)?;
            (calls > 0).then(|| spent as f64 / 1e3 / calls as f64)
        };
        let now = cjm_sys::proc::cpu_time_ns(std::process::id());
        if let Some(us) = per_call(self.caller, now) {
            f.insert(keys.0.into(), json!(us));
        }
        if let Some(us) = per_call(self.servers, servers_ns(&self.pids)) {
            f.insert(keys.1.into(), json!(us));
        }
    }
}

/// The CPU time of `pids` together, in ns; `None` unless every one was read.
fn servers_ns(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|&p| cjm_sys::proc::cpu_time_ns(p))
        .sum::<Option<u64>>()
}

/// `total` pings spread over `conns`, each connection sequential, all at once: pings per
/// second, and how many were made (`total` rounded down to a multiple of the connections).
async fn pings_per_s(conns: Vec<Sender>, total: usize) -> Result<(f64, usize), PluginError> {
    let per_conn = total / conns.len().max(1);
    let calls = per_conn * conns.len();
    let t = Instant::now();
    let results: Vec<Result<(), PluginError>> = futures::stream::iter(conns)
        .map(|mut c| async move {
            for _ in 0..per_conn {
                ping(&mut c).await?;
            }
            Ok(())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok((calls as f64 / t.elapsed().as_secs_f64(), calls))
}

/// Bare echo servers, each in a process of its own (this program run with
/// [`BARE_SERVER_ARG`]); killed and reaped when dropped. A server also exits when its stdin
/// closes, so none outlives a bench that dies.
struct BareServers {
    children: Vec<std::process::Child>,
    socks: Vec<std::path::PathBuf>,
}

impl BareServers {
    /// `n` servers with their sockets in `dir`, each ready (it has said so on its stdout).
    fn start(dir: &std::path::Path, n: usize) -> Result<Self, PluginError> {
        let exe = std::env::current_exe().map_err(io)?;
        let mut servers = Self {
            children: Vec::new(),
            socks: Vec::new(),
        };
        for i in 0..n {
            let sock = dir.join(format!("bare{i}.sock"));
            let mut child = std::process::Command::new(&exe)
                .arg(BARE_SERVER_ARG)
                .arg(&sock)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(io)?;
            let out = child.stdout.take();
            servers.children.push(child);
            let mut line = String::new();
            if let Some(out) = out {
                BufReader::new(out).read_line(&mut line).map_err(io)?;
            }
            if line.trim() != "ready" {
                return Err(PluginError::fatal(format!(
                    "bare echo server {i} did not start (it said {line:?})"
                )));
            }
            servers.socks.push(sock);
        }
        Ok(servers)
    }
}

impl Drop for BareServers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The argument that makes this program a bare echo server (see [`bare_echo_server`]).
pub(crate) const BARE_SERVER_ARG: &str = "--bare-echo-server";

/// Where the bare server at `sock` serves the multiplexed echo of [`crate::bare_mux`].
fn mux_sock(sock: &std::path::Path) -> std::path::PathBuf {
    sock.with_extension("mux")
}

/// Serves the ping-pong's echo at `path` on a single-threaded runtime: the least a server
/// process can do per request; and the same echo multiplexed ([`crate::bare_mux`]) beside it.
/// Says `ready` on stdout once it listens; exits when its stdin closes (the bench is gone) or
/// when it is killed.
pub(crate) fn bare_echo_server(path: &std::path::Path) -> std::io::Result<()> {
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let mux = std::os::unix::net::UnixListener::bind(mux_sock(path))?;
    mux.set_nonblocking(true)?;
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = UnixListener::from_std(listener)?;
        let mux = UnixListener::from_std(mux)?;
        tokio::spawn(async move {
            while let Ok((s, _)) = mux.accept().await {
                tokio::spawn(crate::bare_mux::serve(s));
            }
        });
        let mut out = std::io::stdout();
        writeln!(out, "ready")?;
        out.flush()?;
        loop {
            let (s, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = server_http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(echo_body))
                    .await;
            });
        }
    })
}

/// 300 sequential pings on one new connection to `sock`, after 50 to warm up: each round trip
/// in µs.
async fn round_trips(sock: &std::path::Path) -> Result<Vec<f64>, PluginError> {
    let mut c = connect(sock).await?;
    for _ in 0..50 {
        ping(&mut c).await?;
    }
    let mut rtt = Vec::with_capacity(300);
    for _ in 0..300 {
        let t = Instant::now();
        ping(&mut c).await?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtt)
}

/// An echo server on a thread of its own with a single-threaded runtime, serving one
/// connection at `dir/own.sock`.
fn own_thread_server(
    dir: &std::path::Path,
) -> Result<(std::path::PathBuf, std::thread::JoinHandle<()>), PluginError> {
    let path = dir.join("own.sock");
    let std_listener = std::os::unix::net::UnixListener::bind(&path).map_err(io)?;
    std_listener.set_nonblocking(true).map_err(io)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io)?;
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = UnixListener::from_std(std_listener) else {
                return;
            };
            if let Ok((s, _)) = listener.accept().await {
                let _ = server_http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(echo_body))
                    .await;
            }
        });
    });
    Ok((path, thread))
}

/// The ping-pong server's answer: the request's body.
async fn echo_body(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    Ok(hyper::Response::new(Full::new(body)))
}

async fn connect(sock: &std::path::Path) -> Result<Sender, PluginError> {
    let s = UnixStream::connect(sock).await.map_err(io)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(hyper_err)?;
    tokio::spawn(conn);
    Ok(sender)
}

fn hyper_err(e: hyper::Error) -> PluginError {
    PluginError::fatal(format!("bare ping-pong: {e}"))
}

/// The body of the bare references' requests: the size of the bench's echo call.
pub(crate) const ECHO_BODY: &[u8] = br#"{"args":["echo"],"kwargs":{"i":1,"text":"hello"}}"#;

/// Checks a bare reference's answer as a caller would: parsed, and not `null`.
pub(crate) fn check_echo(answer: &[u8], what: &str) -> Result<(), PluginError> {
    let v: Value = serde_json::from_slice(answer)
        .map_err(|e| PluginError::fatal(format!("{what} answer: {e}")))?;
    if v.is_null() {
        return Err(PluginError::fatal(format!("{what} answered null")));
    }
    Ok(())
}

/// One request with a body the size of the bench's echo call, read back whole.
async fn ping(s: &mut Sender) -> Result<(), PluginError> {
    let body = Bytes::from_static(ECHO_BODY);
    let req = hyper::Request::post("/execute")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| PluginError::fatal(format!("bare ping-pong request: {e}")))?;
    s.ready().await.map_err(hyper_err)?;
    let res = s.send_request(req).await.map_err(hyper_err)?;
    let body = res.into_body().collect().await.map_err(hyper_err)?;
    check_echo(&body.to_bytes(), "bare ping-pong")
}

/// 20 000 JSON lines written by a thread into a socket pair, read and parsed one by one.
fn ndjson_pipe() -> Result<f64, PluginError> {
    const N: usize = 20_000;
    let (mut w, r) = StdUnixStream::pair().map_err(io)?;
    let t = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(&mut w);
        for i in 0..N {
            writeln!(out, r#"{{"text":"word ","index":{i}}}"#)?;
        }
        out.flush()
    });
    let mut n = 0usize;
    for line in BufReader::new(r).lines() {
        let line = line.map_err(io)?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| PluginError::fatal(format!("bare NDJSON pipe: {e}")))?;
        if v.is_object() {
            n += 1;
        }
        if n == N {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| PluginError::fatal("the NDJSON writer thread panicked"))?
        .map_err(io)?;
    Ok(n as f64 / secs)
}

/// Bandwidth of one 256 MiB copy, median of 3, in MB/s.
fn memcpy_mbps() -> f64 {
    let src = vec![7u8; 256 << 20];
    let mut dst = vec![0u8; 256 << 20];
    let mut v = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        v.push(src.len() as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    median(v)
}

/// The smallest program this machine has (`true`), spawned (posix_spawn, through std) until it
/// exits, median of 5, in seconds.
fn bare_spawn() -> Result<f64, PluginError> {
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let st = std::process::Command::new("true").status().map_err(io)?;
        v.push(t.elapsed().as_secs_f64());
        if !st.success() {
            return Err(PluginError::fatal("`true` failed"));
        }
    }
    Ok(median(v))
}

/// RSS of an idle process with no plugin system in it (`sleep`), in MB.
fn idle_rss() -> Result<Option<f64>, PluginError> {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .map_err(io)?;
    // Wait until it sleeps (state `S` in /proc/<pid>/stat): exec is done and its pages are in.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let path = format!("/proc/{}/stat", child.id());
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(&path).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.id()));
        if state == Some('S') && exe.is_ok_and(|p| p.ends_with("sleep")) {
            break;
        }
        std::thread::yield_now();
    }
    let rss = crate::rss_mb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Ok(rss)
}
