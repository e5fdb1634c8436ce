//! `cargo xtask bench [--json]`: the project's performance figures on this machine, with the
//! workload the original system was measured with (the echo plugin). Sample worker binaries
//! are found next to this program. Timing goals live here, never in tests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cjm_host::{Call, PluginError, PluginManager};
use futures::StreamExt;
use serde_json::{json, Map, Value};

mod bare_mux;
mod jobs;
mod limits;
mod remote;
mod serve;

const WORKERS: usize = 10;

struct Bench {
    bins: PathBuf,
    scratch: tempfile::TempDir,
}

impl Bench {
    fn manifest(&self, name: &str, bin: &str, extra: Value) -> Result<(), PluginError> {
        let dir = self.scratch.path().join("manifests");
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut m = json!({"name": name, "command": self.bins.join(bin)});
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        std::fs::write(dir.join(format!("{name}.json")), m.to_string()).map_err(io)
    }

    fn manager(&self) -> Result<PluginManager, PluginError> {
        PluginManager::builder()
            .search_paths([self.scratch.path().join("manifests")])
            .data_dir(self.scratch.path().join("data"))
            // `CJM_BENCH_CALLS_MUX=off`: calls as HTTP requests on the calls socket, to set
            // beside the multiplexed wire in the same build.
            .calls_mux(std::env::var("CJM_BENCH_CALLS_MUX").as_deref() != Ok("off"))
            .build()
    }
}

fn io(e: std::io::Error) -> PluginError {
    PluginError::fatal(e.to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn echo(kwargs: Value) -> Call {
    let kw: Map<String, Value> = kwargs.as_object().cloned().unwrap_or_default();
    Call::new(vec![json!("echo")]).with_kwargs(kw)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> ExitCode {
    // This program is also the bare echo server of the calls' reference figures.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, path] = args.as_slice() {
        if flag == limits::BARE_SERVER_ARG {
            return match limits::bare_echo_server(Path::new(path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bare echo server: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    // What `#[tokio::main]` builds.
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(bench_main()),
        Err(e) => {
            eprintln!("bench failed: no runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench_main() -> ExitCode {
    let json_out = std::env::args().any(|a| a == "--json");
    if let Some(bad) = std::env::args().skip(1).find(|a| a != "--json") {
        eprintln!("unknown argument `{bad}`; usage: cjm-bench [--json]");
        return ExitCode::from(2);
    }
    match run().await {
        Ok(figures) => {
            if json_out {
                println!("{}", Value::Object(figures));
            } else {
                print_table(&figures);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            for l in &e.details.last_log_lines {
                eprintln!("    {l}");
            }
            ExitCode::FAILURE
        }
    }
}

fn print_table(f: &Map<String, Value>) {
    let rows = [
        (
            "cold_start_one_s",
            "cold start, one worker (load → ready)",
            1e3,
            "ms",
        ),
        (
            "cold_start_spaced_s",
            "cold start, each after 200 ms without one",
            1e3,
            "ms",
        ),
        (
            "cold_start_big_host_s",
            "cold start, in a host holding 1 GiB",
            1e3,
            "ms",
        ),
        ("load10_s", "load 10 workers", 1e3, "ms"),
        ("sync_rtt_p50_us", "sync round trip p50", 1.0, "µs"),
        ("sync_rtt_p99_us", "sync round trip p99", 1.0, "µs"),
        (
            "sync_rtt_task_p50_us",
            "sync round trip p50, called from a task",
            1.0,
            "µs",
        ),
        (
            "async_calls_per_s_par32",
            "async calls, 32 in flight / 10 workers",
            1.0,
            "calls/s",
        ),
        (
            "async_calls_par32_host_cpu_us",
            "  CPU per call: the host",
            1.0,
            "µs",
        ),
        (
            "async_calls_par32_workers_cpu_us",
            "  CPU per call: the workers",
            1.0,
            "µs",
        ),
        (
            "sync_rtt_p50_us_bare_proc",
            "  reference: bare ping-pong to another process p50",
            1.0,
            "µs",
        ),
        (
            "async_calls_per_s_par32_bare_procs",
            "  reference: bare, 32 in flight / 10 processes",
            1.0,
            "calls/s",
        ),
        (
            "async_calls_par32_bare_client_cpu_us",
            "    CPU per call: its client",
            1.0,
            "µs",
        ),
        (
            "async_calls_par32_bare_servers_cpu_us",
            "    CPU per call: its servers",
            1.0,
            "µs",
        ),
        (
            "async_calls_per_s_par32_bare_mux",
            "  reference: the same, multiplexed per process",
            1.0,
            "calls/s",
        ),
        (
            "async_calls_par32_bare_mux_client_cpu_us",
            "    CPU per call: its client",
            1.0,
            "µs",
        ),
        (
            "async_calls_par32_bare_mux_servers_cpu_us",
            "    CPU per call: its servers",
            1.0,
            "µs",
        ),
        (
            "stream_chunks_per_s",
            "one 20 000-chunk stream",
            1.0,
            "chunks/s",
        ),
        (
            "stream_chunk_host_cpu_us",
            "  CPU per chunk: the host",
            1e3,
            "ns",
        ),
        (
            "stream_chunk_workers_cpu_us",
            "  CPU per chunk: the worker",
            1e3,
            "ns",
        ),
        (
            "payload_8MiB_roundtrip_MBps",
            "8 MiB string echoed (both ways)",
            1.0,
            "MB/s",
        ),
        (
            "payload_8MiB_first_MBps",
            "  the first echo, buffers cold (not in it)",
            1.0,
            "MB/s",
        ),
        (
            "payload_256MiB_memfd_MBps",
            "256 MiB memfd blob echoed, effective (goal 10 000)",
            1.0,
            "MB/s",
        ),
        (
            "payload_256MiB_blob_MBps",
            "256 MiB heap blob echoed, via one memfd copy",
            1.0,
            "MB/s",
        ),
        (
            "payload_256MiB_frame_MBps",
            "256 MiB blob echoed in frames (goal 2 000)",
            1.0,
            "MB/s",
        ),
        (
            "stream_first_chunk_p50_us",
            "stream's first chunk p50 (limit 1.2× its sync call)",
            1.0,
            "µs",
        ),
        (
            "worker_rss_after_calls_mb",
            "worker RSS right after its calls",
            1.0,
            "MB",
        ),
        (
            "idle_worker_rss_mb",
            "idle worker RSS (after its idle release)",
            1.0,
            "MB",
        ),
        (
            "call_after_idle_us",
            "first call to a worker after its idle release",
            1.0,
            "µs",
        ),
        (
            "serve_sync_rtt_p50_us",
            "sync call through cjm serve p50 (limit 2× host)",
            1.0,
            "µs",
        ),
        (
            "serve_8MiB_roundtrip_MBps",
            "8 MiB string echoed through cjm serve",
            1.0,
            "MB/s",
        ),
        (
            "remote_tls_rtt_p50_us",
            "remote TLS worker round trip p50 (limit 3× unix)",
            1.0,
            "µs",
        ),
        (
            "metrics_scrape_100_s",
            "/metrics scrape, 100 plugins (goal 5 ms)",
            1e3,
            "ms",
        ),
        ("unload_all_s", "unload all 10 workers", 1e3, "ms"),
        (
            "jobs_submit_ack_p50_us",
            "job submission journaled, queued, p50 (goal 50 µs)",
            1.0,
            "µs",
        ),
        (
            "jobs_submit_to_running_p50_us",
            "job submit → running, idle lane (goal 200 µs)",
            1.0,
            "µs",
        ),
        (
            "jobs_noop_per_s",
            "no-op jobs (in-process) via the journal (goal 10 000/s)",
            1.0,
            "jobs/s",
        ),
        (
            "jobs_echo_per_s",
            "echo jobs (10 worker processes) via the journal",
            1.0,
            "jobs/s",
        ),
        (
            "jobs_many_rss_growth_mb",
            "host RSS growth over 1 000 000 jobs, retention on",
            1.0,
            "MB",
        ),
        ("jobs_many_per_s", "  … at this rate", 1.0, "jobs/s"),
        (
            "py_worker_sync_rtt_p50_us",
            "original Python worker round trip p50",
            1.0,
            "µs",
        ),
    ];
    println!(
        "cjm bench ({} cores); figure / its limit measured in the same run",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (key, label, scale, unit) in rows {
        let limit = f.get(&format!("{key}_limit")).and_then(Value::as_f64);
        match (f.get(key).and_then(Value::as_f64), limit) {
            (Some(v), Some(l)) => println!(
                "  {label:<46} {:>12.1} / {:<12.1} {unit}  ({:.2}× the limit)",
                v * scale,
                l * scale,
                v / l
            ),
            (Some(v), None) => println!("  {label:<46} {:>12.1} {unit}", v * scale),
            (None, _) => println!("  {label:<46} {:>12} (not measured)", "-"),
        }
    }
}

/// Cold start of one worker (load until ready), median of 5: back to back
/// (`cold_start_one_s`), and each after 200 ms with no start (`cold_start_spaced_s`). They
/// differ where the kernel makes joining a cgroup wait for an RCU grace period, which starts
/// in quick succession share. Then back to back in a host holding 1 GiB
/// (`cold_start_big_host_s`), which a start that copies the host's page tables feels.
async fn cold_start(m: &PluginManager, f: &mut Map<String, Value>) -> Result<(), PluginError> {
    for (key, pause) in [
        ("cold_start_one_s", Duration::ZERO),
        ("cold_start_spaced_s", Duration::from_millis(200)),
    ] {
        let mut cold = Vec::new();
        for _ in 0..5 {
            tokio::time::sleep(pause).await;
            let t = Instant::now();
            m.load("echo0", None).await?;
            cold.push(t.elapsed().as_secs_f64());
            m.unload("echo0").await?;
        }
        f.insert(key.into(), json!(median(cold)));
    }
    // A host that holds much memory (an application with a model loaded): a start that copied
    // the host's page tables (`fork`) would grow with it.
    let held = vec![1u8; 1 << 30];
    let mut cold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        m.load("echo0", None).await?;
        cold.push(t.elapsed().as_secs_f64());
        m.unload("echo0").await?;
    }
    f.insert("cold_start_big_host_s".into(), json!(median(cold)));
    drop(std::hint::black_box(held));
    Ok(())
}

/// RSS of `echo1` (`pid`) once it has idled past its idle release
/// (the SDK's `DEFAULT_IDLE_RELEASE`, 1 s after its last call, which ended at `calls_ended`;
/// half a second more here), then the time of its next call, which maps the code it runs
/// again.
async fn idle_rss(
    m: &PluginManager,
    pid: u32,
    calls_ended: Instant,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    let idle = Duration::from_millis(1500);
    tokio::time::sleep_until((calls_ended + idle).into()).await;
    if let Some(rss) = rss_mb(pid) {
        f.insert("idle_worker_rss_mb".into(), json!(rss));
    }
    let t = Instant::now();
    m.execute("echo1", echo(json!({"x": 1}))).await?;
    f.insert(
        "call_after_idle_us".into(),
        json!(t.elapsed().as_secs_f64() * 1e6),
    );
    Ok(())
}

/// `n` sequential small calls to `echo0`: the round trip's p50 and p99, made from the thread
/// that runs `main` (outside the runtime's threads), then its p50 made from a task on the
/// runtime, as a server's handler makes them (`sync_rtt_task_p50_us`).
async fn sync_rtt(
    m: &PluginManager,
    n: usize,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    let mut rtt = sequential_calls(m, n).await?;
    rtt.sort_by(f64::total_cmp);
    f.insert("sync_rtt_p50_us".into(), json!(percentile(&rtt, 0.5)));
    f.insert("sync_rtt_p99_us".into(), json!(percentile(&rtt, 0.99)));
    let m = m.clone();
    let task = tokio::spawn(async move { sequential_calls(&m, n).await });
    let rtt = task
        .await
        .map_err(|e| PluginError::fatal(format!("the round-trip task failed: {e}")))??;
    f.insert("sync_rtt_task_p50_us".into(), json!(median(rtt)));
    Ok(())
}

/// The round trips of `n` sequential small calls to `echo0`, in µs.
async fn sequential_calls(m: &PluginManager, n: usize) -> Result<Vec<f64>, PluginError> {
    let mut rtt = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        m.execute("echo0", echo(json!({"i": i, "text": "hello"})))
            .await?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtt)
}

/// How many calls the calls/s figure and its limits make in a full run
/// (`CJM_BENCH_PAR_CALLS` in a `par` run): 5 000 calls took 50 ms on the multiplexed wire, too
/// short a window on a shared machine (the same build's figure moved by half from run to run).
const PAR_CALLS: usize = 20_000;

/// Calls made, 32 in flight, before the calls/s clock starts: enough for the host to open the
/// connections that 32 calls in flight need, as the limit's ping-pong opens its 32 before its
/// clock starts.
const PAR_WARM_UP: usize = 320;

/// `total` calls, 32 in flight, spread over the workers `names`, after [`PAR_WARM_UP`]
/// untimed ones: calls per second.
async fn par_calls(
    m: &PluginManager,
    names: &[String],
    total: usize,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    calls_in_flight(m, names, PAR_WARM_UP).await?;
    let pids: Vec<u32> = names.iter().filter_map(|n| m.pid(n)).collect();
    let cpu = limits::CpuSplit::start(&pids);
    let t = Instant::now();
    let made = calls_in_flight(m, names, total).await;
    let secs = t.elapsed().as_secs_f64();
    let keys = (
        "async_calls_par32_host_cpu_us",
        "async_calls_par32_workers_cpu_us",
    );
    cpu.finish(f, keys, total);
    made?;
    f.insert("async_calls_per_s_par32".into(), json!(total as f64 / secs));
    Ok(())
}

/// `total` echo calls, 32 in flight, spread over the workers `names` in turn.
async fn calls_in_flight(
    m: &PluginManager,
    names: &[String],
    total: usize,
) -> Result<(), PluginError> {
    let results: Vec<Result<_, PluginError>> = futures::stream::iter(0..total)
        .map(|i| {
            let m = m.clone();
            let name = names[i % names.len()].clone();
            async move { m.execute(&name, echo(json!({"i": i}))).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// An 8 MiB string argument echoed back (the call is built before the clock starts: making
/// the caller's copy of its argument is not the host's work), then the blobs.
///
/// Like the blob figures, the figure is the steady state of a host that moves large payloads:
/// the median of `CJM_BENCH_PAYLOAD_RUNS` (default 7) echoes after a first one, which maps
/// and faults in the pooled body buffers of both sides and is reported on its own
/// (`payload_8MiB_first_MBps`).
async fn payloads(
    b: &Bench,
    m: &PluginManager,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    let text = "x".repeat(8 << 20);
    let runs: usize = std::env::var("CJM_BENCH_PAYLOAD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut mbps = Vec::new();
    for i in 0..=runs.max(1) {
        // One copy of the argument, as a caller that hands its data to a call makes. Built
        // through `echo(json!(..))` it was two, one freed before the call; with the bench's
        // heap in that pattern, glibc handed the host's parse of every other answer 8 MiB of
        // fresh pages to fault in (the caller's allocator at work, not the host).
        let call = Call::new(vec![json!("echo")]).kwarg("text", Value::String(text.clone()));
        let t = Instant::now();
        let out = m.execute("echo0", call).await?;
        let secs = t.elapsed().as_secs_f64();
        if out.value["text"].as_str().map(str::len) != Some(text.len()) {
            return Err(PluginError::fatal("the 8 MiB echo came back wrong"));
        }
        let rate = 2.0 * text.len() as f64 / 1e6 / secs;
        if i == 0 {
            f.insert("payload_8MiB_first_MBps".into(), json!(rate));
        } else {
            mbps.push(rate);
        }
    }
    f.insert("payload_8MiB_roundtrip_MBps".into(), json!(median(mbps)));
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("string") {
        return Ok(());
    }
    blobs(b, m, f).await
}

/// 2 × 256 MiB over the median seconds of three echoes of `blob` by `plugin`, after one
/// unmeasured echo (the steady state of a host that moves large payloads: its receive buffers
/// are warm); `check` is run on each answer.
async fn echo_mbps(
    m: &PluginManager,
    plugin: &str,
    blob: &Bytes,
    check: impl Fn(&Bytes) -> bool,
) -> Result<f64, PluginError> {
    let mut mbps = Vec::new();
    m.execute(plugin, echo(json!({})).with_blob(blob.clone()))
        .await?;
    for _ in 0..3 {
        let t = Instant::now();
        let out = m
            .execute(plugin, echo(json!({})).with_blob(blob.clone()))
            .await?;
        let secs = t.elapsed().as_secs_f64();
        match out.blobs.first() {
            Some(b) if b.len() == blob.len() && b[0] == blob[0] && check(b) => {}
            _ => return Err(PluginError::fatal("the 256 MiB blob came back wrong")),
        }
        mbps.push(2.0 * blob.len() as f64 / 1e6 / secs);
    }
    Ok(median(mbps))
}

/// A 256 MiB blob echoed three ways: built in place in a memfd (no copy at all), from the
/// heap (copied once into a memfd), and in frames (a host without the blob channel).
async fn blobs(
    b: &Bench,
    m: &PluginManager,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    const LEN: usize = 256 << 20;
    let in_memfd = |x: &Bytes| cjm_host::shared_blob::memfd_of(x).is_some();
    let mut buf = cjm_host::BlobBuf::new(LEN).map_err(io)?;
    buf.fill(7);
    let built = buf.freeze().map_err(io)?;
    let v = echo_mbps(m, "echo0", &built, in_memfd).await?;
    f.insert("payload_256MiB_memfd_MBps".into(), json!(v));
    drop(built);

    let heap = Bytes::from(vec![7u8; LEN]);
    let v = echo_mbps(m, "echo0", &heap, in_memfd).await?;
    f.insert("payload_256MiB_blob_MBps".into(), json!(v));

    let frames = PluginManager::builder()
        .search_paths([b.scratch.path().join("manifests")])
        .data_dir(b.scratch.path().join("data"))
        .blob_memfd(false)
        .build()?;
    frames.load("echo0", None).await?;
    let v = echo_mbps(&frames, "echo0", &heap, |x| !in_memfd(x)).await;
    frames.unload_all().await;
    f.insert("payload_256MiB_frame_MBps".into(), json!(v?));
    Ok(())
}

/// One 20 000-chunk stream from the transcriber sample, if it is built.
async fn stream(
    b: &Bench,
    m: &PluginManager,
    f: &mut Map<String, Value>,
) -> Result<(), PluginError> {
    if b.bins.join("transcriber").is_file() {
        m.load("transcriber", Some(json!({"word_delay_ms": 0})))
            .await?;
        // CJM_BENCH_STREAM_CHUNKS: a longer stream, for profiling.
        let chunks: u64 = std::env::var("CJM_BENCH_STREAM_CHUNKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let call = Call::new(vec![json!("transcribe")])
            .kwarg("text", json!("word ".repeat(chunks as usize)));
        // The median of five streams: one alone could measure half of the next on this
        // machine.
        let mut rates = Vec::with_capacity(5);
        let pids: Vec<u32> = m.pid("transcriber").into_iter().collect();
        let cpu = limits::CpuSplit::start(&pids);
        for _ in 0..5 {
            let t = Instant::now();
            let mut stream = m.execute_stream("transcriber", call.clone()).await?;
            let mut n = 0u64;
            while let Some(c) = stream.next().await {
                c?;
                n += 1;
            }
            let secs = t.elapsed().as_secs_f64();
            if n != chunks {
                return Err(PluginError::fatal(format!(
                    "the stream gave {n} chunks, not {chunks}"
                )));
            }
            rates.push(n as f64 / secs);
        }
        let keys = ("stream_chunk_host_cpu_us", "stream_chunk_workers_cpu_us");
        cpu.finish(f, keys, 5 * chunks as usize);
        f.insert("stream_chunks_per_s".into(), json!(median(rates)));

        // Time to the first chunk of a short stream, beside a sync call of the same operation
        // on the same worker, the two alternating (so that both meet the same moment of a
        // noisy machine).
        let mut first = Vec::with_capacity(200);
        let mut sync = Vec::with_capacity(200);
        for i in 0..250 {
            let call = Call::new(vec![json!("transcribe")]).kwarg("text", json!("one two"));
            let t = Instant::now();
            m.execute("transcriber", call.clone()).await?;
            if i >= 50 {
                sync.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let t = Instant::now();
            let mut stream = m.execute_stream("transcriber", call).await?;
            if stream.next().await.transpose()?.is_none() {
                return Err(PluginError::fatal("a short stream gave no chunk"));
            }
            let took = t.elapsed().as_secs_f64() * 1e6;
            while stream.next().await.transpose()?.is_some() {}
            if i >= 50 {
                first.push(took);
            }
        }
        f.insert("stream_first_chunk_p50_us".into(), json!(median(first)));
        f.insert(
            "stream_first_chunk_p50_us_limit".into(),
            json!(1.2 * median(sync)),
        );
        m.unload("transcriber").await?;
    }
    Ok(())
}

async fn run() -> Result<Map<String, Value>, PluginError> {
    let bins = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    if !bins.join("echo").is_file() {
        return Err(PluginError::fatal(format!(
            "the echo sample is not built in {}; run `cargo xtask bench`",
            bins.display()
        )));
    }
    let b = Bench {
        bins,
        scratch: tempfile::tempdir().map_err(io)?,
    };
    let mut f = Map::new();
    for i in 0..WORKERS {
        b.manifest(&format!("echo{i}"), "echo", json!({}))?;
    }
    b.manifest("transcriber", "transcriber", json!({}))?;
    for i in 0..serve::SCRAPED_PLUGINS {
        b.manifest(&format!("m{i}"), "echo", json!({}))?;
    }
    let remote = remote::prepare(&b)?;
    let m = b.manager()?;
    let names: Vec<String> = (0..WORKERS).map(|i| format!("echo{i}")).collect();
    // `CJM_BENCH_ONLY=stream`: the stream figure alone; `jobs`: the jobs figures alone (for
    // work on the jobs layer); `calls` stops after the calls, streams and payloads.
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("stream") {
        stream(&b, &m, &mut f).await?;
        return Ok(f);
    }
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("jobs") {
        jobs::measure(&m, &names, b.scratch.path(), &mut f).await?;
        m.unload_all().await;
        return Ok(f);
    }

    // `CJM_BENCH_ONLY=serve`: the figures through `cjm serve` alone.
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("serve") {
        serve::measure(&m, &b.scratch.path().join("configs"), &mut f).await?;
        m.unload_all().await;
        return Ok(f);
    }

    // `CJM_BENCH_ONLY=rtt`: sequential round trips alone (CJM_BENCH_RTT_CALLS of them), and
    // the calls' limits.
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("rtt") {
        m.load("echo0", None).await?;
        let n: usize = std::env::var("CJM_BENCH_RTT_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        sync_rtt(&m, n, &mut f).await?;
        m.unload_all().await;
        limits::calls(&mut f, PAR_CALLS).await?;
        return Ok(f);
    }

    // `CJM_BENCH_ONLY=py`: the round trips to the original's Python worker alone.
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("py") {
        if let Some(rtt) = python_rtt(&b).await? {
            f.insert("py_worker_sync_rtt_p50_us".into(), json!(rtt));
        }
        return Ok(f);
    }

    // `CJM_BENCH_ONLY=par`: calls with 32 in flight over the ten workers alone
    // (CJM_BENCH_PAR_CALLS of them), and the calls' limits.
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("par") {
        for n in &names {
            m.load(n, None).await?;
        }
        let n: usize = std::env::var("CJM_BENCH_PAR_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PAR_CALLS);
        par_calls(&m, &names, n, &mut f).await?;
        m.unload_all().await;
        limits::calls(&mut f, n).await?;
        return Ok(f);
    }

    // `CJM_BENCH_ONLY=payload`: the payload figures alone; `string`: the 8 MiB string alone.
    if matches!(
        std::env::var("CJM_BENCH_ONLY").as_deref(),
        Ok("payload" | "string")
    ) {
        m.load("echo0", None).await?;
        payloads(&b, &m, &mut f).await?;
        m.unload_all().await;
        return Ok(f);
    }

    cold_start(&m, &mut f).await?;
    // `CJM_BENCH_ONLY=cold`: the cold-start figures alone.
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("cold") {
        return Ok(f);
    }

    // Ten workers at once.
    let t = Instant::now();
    let jobs = names.iter().map(|n| m.load(n, None));
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    f.insert("load10_s".into(), json!(t.elapsed().as_secs_f64()));

    // Sequential round trips.
    for _ in 0..50 {
        m.execute("echo0", echo(json!({"x": 1}))).await?;
    }
    sync_rtt(&m, 300, &mut f).await?;

    par_calls(&m, &names, PAR_CALLS, &mut f).await?;

    // RSS of a worker right after its calls; `echo1` gets none from here until `idle_rss`.
    let calls_ended = Instant::now();
    let pid = m.stats("echo1").await?.pid.unwrap_or(0);
    if let Some(rss) = rss_mb(pid) {
        f.insert("worker_rss_after_calls_mb".into(), json!(rss));
    }

    payloads(&b, &m, &mut f).await?;

    stream(&b, &m, &mut f).await?;

    idle_rss(&m, pid, calls_ended, &mut f).await?;

    // Unload all ten.
    let t = Instant::now();
    m.unload_all().await;
    f.insert("unload_all_s".into(), json!(t.elapsed().as_secs_f64()));

    // `CJM_BENCH_ONLY=calls`: the figures above alone (for work on calls, streams, payloads).
    if std::env::var("CJM_BENCH_ONLY").as_deref() == Ok("calls") {
        return Ok(f);
    }
    jobs::measure(&m, &names, b.scratch.path(), &mut f).await?;
    m.unload_all().await;

    serve::measure(&m, &b.scratch.path().join("configs"), &mut f).await?;
    remote::measure(&b, remote, &m, &mut f).await?;

    limits::measure(&mut f).await?;

    if let Some(rtt) = python_rtt(&b).await? {
        f.insert("py_worker_sync_rtt_p50_us".into(), json!(rtt));
    }
    Ok(f)
}

/// The repository this bench was built from: found from its source directory, not from the
/// binary's path, which moves with `CARGO_TARGET_DIR`.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Round trips to the original's Python worker, when the test venv exists (see
/// `cargo xtask test`).
async fn python_rtt(b: &Bench) -> Result<Option<f64>, PluginError> {
    let root = repo_root();
    // `CJM_TEST_PYTHON` (as the tests take it), else the venv `cargo xtask test` makes.
    let python = std::env::var_os("CJM_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/py-venv/bin/python"));
    let plugins = root.join("tests/python");
    if !python.is_file() || !plugins.is_dir() {
        eprintln!(
            "bench: no Python figure: {} or {} is missing (set CJM_TEST_PYTHON or run \
             `cargo xtask test-plugins` to make the venv)",
            python.display(),
            plugins.display()
        );
        return Ok(None);
    }
    let dir = b.scratch.path().join("py");
    std::fs::create_dir_all(&dir).map_err(io)?;
    let m = json!({"name": "py-echo", "python_path": python, "module": "cjm_test_plugins.plugins",
                   "class": "EchoPlugin", "env_vars": {"PYTHONPATH": plugins}});
    std::fs::write(dir.join("py-echo.json"), m.to_string()).map_err(io)?;
    let manager = PluginManager::builder()
        .search_paths([&dir])
        .data_dir(b.scratch.path().join("pydata"))
        .build()?;
    manager.load("py-echo", None).await?;
    for _ in 0..20 {
        manager
            .execute("py-echo", Call::new(vec![json!("hi")]))
            .await?;
    }
    let mut rtt = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        manager
            .execute("py-echo", Call::new(vec![json!(i)]))
            .await?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    manager.unload_all().await;
    Ok(Some(median(rtt)))
}
