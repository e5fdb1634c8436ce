//! `conformance`: the protocol v1 conformance suite (`PROTOCOL.md`), run against every sample
//! plugin worker and against the original's Python worker. `cargo xtask test-plugins` builds
//! the workers and runs it.
//!
//! ```text
//! conformance [--bin-dir DIR] [--templates DIR] [--manifests-out DIR]
//!             [--python PATH] [--python-0046 PATH] [--python-substrate PATH]
//!             [--pythonpath DIR] [--no-python] [--only NAME[,NAME...]]
//! ```
//!
//! - `--bin-dir`: where the sample workers are (default: this program's directory).
//! - `--templates`: the manifest templates (default `examples/sample-plugins/manifests`); each
//!   `command` has `{bin_dir}` replaced. The generated manifests name the programs started.
//! - `--manifests-out`: also write the generated manifests there.
//! - `--python`: a Python with cjm-plugin-system 0.0.28 (default `$CJM_TEST_PYTHON`, else
//!   `target/py-venv/bin/python`); `--pythonpath`: the test plugins (default `tests/python`).
//! - `--python-0046`, `--python-substrate`: Pythons 3.12 with cjm-plugin-system 0.0.46 and with
//!   cjm-substrate (default `$CJM_TEST_PYTHON_0046` / `$CJM_TEST_PYTHON_SUBSTRATE`, else
//!   `target/py312-v0046` / `target/py312-substrate`). Their profiles (`py46-gen`, `sub-gen`)
//!   also run the checks of the 0.0.46 line: typed `_job_error` bodies and stream lines,
//!   `/reconfigure` with its release hook, `/task`, and the lifecycle hooks
//!   (PROTOCOL.md §9); those are `n/a` for every other worker. `--no-python` drops all three.
//!
//! The suite speaks raw HTTP/1.1 over the worker's socket, so it checks the wire, not a
//! client's reading of it. It starts each worker the way the host does: cjm workers get a
//! listening Unix socket as an inherited descriptor (`CJM_LISTEN_FD`, `CJM_LISTEN_KIND=unix`)
//! and a bearer token (`CJM_AUTH_TOKEN`); original workers get
//! `python -m cjm_plugin_system.core.worker --module M --class C --port P`. Checks an original
//! worker cannot pass by design (auth, typed errors, end lines, frames, …) are `n/a` for it.
//!
//! Prints a table (check × worker), the reasons of the failures, and a last line
//! `N passed, M failed`; exits 1 on any failure, 2 on a usage error.

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cjm_tests::http::{send, Addr, Req, Resp};
use cjm_tests::process::{
    own_session, sigterm, wait_child, wait_healthy, worker_command, ChildGuard,
};
use cjm_tests::scratch_dir;
use serde_json::{json, Map, Value};
use tempfile::TempDir;

/// The bound on a worker's start-up (first `/health` answer).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on a worker's exit after `SIGTERM`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The JSON body limit of cjm workers (the SDK's default).
const MAX_JSON_BODY: u64 = 64 << 20;
/// Every feature of protocol v1.
const FEATURES: [&str; 6] = [
    "auth",
    "typed_errors",
    "stream_end",
    "blob_frame",
    "cancel_on_disconnect",
    "deadline",
];

/// The checks, in the order they run and print.
const CHECKS: [&str; 29] = [
    "manifest",
    "health",
    "stats",
    "config_schema",
    "config",
    "initialize",
    "init-invalid",
    "config-kept",
    "execute",
    "bad-json",
    "content-type",
    "typed-errors",
    "not-found",
    "method",
    "ndjson",
    "stream-error",
    "stream-reject",
    "job-error",
    "reconfigure",
    "task",
    "hooks",
    "progress",
    "cancel-call",
    "deadline",
    "auth",
    "too-large",
    "frames",
    "cleanup",
    "shutdown",
];

// ---- outcomes ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Outcome {
    Pass,
    Fail(String),
    NotApplicable,
}

type Check = Result<(), String>;

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

// ---- frames ----------------------------------------------------------------------------------

fn encode_frame(json: &Value, blobs: &[&[u8]]) -> Vec<u8> {
    let header = json!({"json": json, "blobs": blobs.iter().map(|b| b.len()).collect::<Vec<_>>()})
        .to_string();
    let mut out =
        Vec::with_capacity(8 + header.len() + blobs.iter().map(|b| b.len()).sum::<usize>());
    out.extend_from_slice(b"CJMF");
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for b in blobs {
        out.extend_from_slice(b);
    }
    out
}

fn decode_frame(body: &[u8]) -> Result<(Value, Vec<Vec<u8>>), String> {
    ensure(body.len() >= 8 && &body[..4] == b"CJMF", || {
        "the answer is not a frame (no CJMF magic)".into()
    })?;
    let len = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) as usize;
    let header = body
        .get(8..8 + len)
        .ok_or("the frame's header is cut short")?;
    let header: Value =
        serde_json::from_slice(header).map_err(|e| format!("the frame's header: {e}"))?;
    let lens = header["blobs"]
        .as_array()
        .ok_or("the frame's header has no `blobs` array")?;
    let mut at = 8 + len;
    let mut blobs = Vec::new();
    for l in lens {
        let l = l.as_u64().ok_or("a blob length is not a number")? as usize;
        let b = body.get(at..at + l).ok_or("a blob is cut short")?;
        blobs.push(b.to_vec());
        at += l;
    }
    ensure(at == body.len(), || {
        format!("{} bytes after the declared blobs", body.len() - at)
    })?;
    Ok((header["json"].clone(), blobs))
}

// ---- workers ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Cjm,
    Original,
}

#[derive(Debug, Clone)]
enum Launch {
    /// A cjm worker named by a generated manifest.
    Native { manifest: PathBuf },
    /// The original's worker on one of the Python test plugins.
    Python {
        python: PathBuf,
        pythonpath: PathBuf,
        class: &'static str,
        generation: Generation,
    },
}

/// Which of the original's worker generations a Python profile runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    /// cjm-plugin-system 0.0.28.
    Seed,
    /// cjm-plugin-system 0.0.46.
    V0046,
    /// cjm-substrate.
    Substrate,
}

impl Generation {
    /// The worker module `-m` runs.
    fn worker_module(self) -> &'static str {
        match self {
            Self::Seed | Self::V0046 => "cjm_plugin_system.core.worker",
            Self::Substrate => "cjm_substrate.core.worker",
        }
    }

    /// The test plugins' module.
    fn plugins_module(self) -> &'static str {
        match self {
            Self::Seed => "cjm_test_plugins.plugins",
            Self::V0046 | Self::Substrate => "cjm_test_plugins_0046.plugins",
        }
    }
}

/// A long call that runs until cancelled (60 s otherwise).
#[derive(Debug, Clone)]
struct Long {
    body: Value,
    stream: bool,
}

/// A worker under test and the calls that suit it.
#[derive(Debug, Clone)]
struct Profile {
    name: String,
    launch: Launch,
    /// A manifest problem found while generating it.
    manifest_error: Option<String>,
    valid_config: Value,
    call: Value,
    expect: Option<Value>,
    stream: Value,
    /// How many data chunks `stream` yields.
    chunks: usize,
    /// A stream that fails after this many chunks.
    failing_stream: Option<(Value, usize)>,
    long: Option<Long>,
    /// `echo` returns the request's blobs.
    blob_echo: bool,
}

/// A running worker: killed (with its process group) and reaped on drop.
struct Worker {
    child: ChildGuard,
    pid: u32,
    addr: Addr,
    token: Option<String>,
    flavor: Flavor,
    /// Responses of a cjm worker without `x-cjm-protocol: 1`.
    unmarked: AtomicUsize,
    /// For original workers: which generation.
    generation: Option<Generation>,
    log: PathBuf,
    // Last: removed after the process is gone.
    _dir: TempDir,
}

/// A private directory for one worker (or the manifests), removed with what is in it.
fn run_dir(label: &str) -> Result<TempDir, String> {
    scratch_dir(&format!("conformance-{label}"))
        .map_err(|e| format!("cannot create a scratch dir: {e}"))
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if filled.is_err() {
        // Unique enough for a test run.
        let seed = format!("{:?}{}", Instant::now(), std::process::id());
        for (i, b) in seed.bytes().enumerate() {
            bytes[i % 32] ^= b;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn log_file(dir: &Path) -> Result<(PathBuf, Stdio, Stdio), String> {
    let path = dir.join("worker.log");
    let f = std::fs::File::create(&path).map_err(|e| format!("cannot create the log: {e}"))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("cannot create the log: {e}"))?;
    Ok((path, Stdio::from(f), Stdio::from(g)))
}

impl Worker {
    fn start(p: &Profile) -> Result<Worker, String> {
        match &p.launch {
            Launch::Native { manifest } => Self::start_native(&p.name, manifest),
            Launch::Python {
                python,
                pythonpath,
                class,
                generation,
            } => {
                let mut last = String::new();
                for _ in 0..3 {
                    match Self::start_python(&p.name, python, pythonpath, class, *generation) {
                        Ok(w) => return Ok(w),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    fn start_native(name: &str, manifest: &Path) -> Result<Worker, String> {
        let m: Value = std::fs::read(manifest)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("manifest {}: {e}", manifest.display()))?;
        let program = m["command"]
            .as_str()
            .ok_or_else(|| format!("manifest {}: no `command`", manifest.display()))?;
        let dir = run_dir(name)?;
        let sock = dir.path().join("w.sock");
        let listener = UnixListener::bind(&sock)
            .map_err(|e| format!("cannot bind {}: {e}", sock.display()))?;
        let token = random_token();
        let (log, out, err) = log_file(dir.path())?;
        let mut cmd = worker_command(program, &listener, "unix");
        cmd.env("CJM_AUTH_TOKEN", &token)
            .env("CJM_HOST_PID", std::process::id().to_string())
            .env("CJM_PLUGIN_NAME", name)
            .env("CJM_DATA_DIR", dir.path().join("data"))
            .env("CJM_PLUGIN_DATA_DIR", dir.path().join("data"))
            .env("CJM_LOG", "warn")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .stdout(out)
            .stderr(err);
        own_session(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        drop(listener);
        let mut w = Worker {
            pid: child.id(),
            child: ChildGuard(child),
            addr: Addr::Unix(sock),
            token: Some(token),
            flavor: Flavor::Cjm,
            unmarked: AtomicUsize::new(0),
            generation: None,
            log,
            _dir: dir,
        };
        w.wait_ready()?;
        Ok(w)
    }

    fn start_python(
        name: &str,
        python: &Path,
        pythonpath: &Path,
        class: &str,
        generation: Generation,
    ) -> Result<Worker, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir = run_dir(name)?;
        let (log, out, err) = log_file(dir.path())?;
        let mut cmd = Command::new(python);
        cmd.args(["-m", generation.worker_module(), "--module"])
            .arg(generation.plugins_module())
            .args(["--class", class, "--port", &port.to_string(), "--ppid"])
            .arg(std::process::id().to_string())
            .env("PYTHONPATH", pythonpath)
            .env("CJM_DATA_DIR", dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if generation != Generation::Seed {
            // The test adapter, bound as the original's host binds a matched one.
            cmd.args([
                "--adapters",
                "cjm_test_plugins_0046.plugins:TokenizeAdapter",
            ]);
        }
        own_session(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        let mut w = Worker {
            pid: child.id(),
            child: ChildGuard(child),
            addr: Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            token: None,
            flavor: Flavor::Original,
            unmarked: AtomicUsize::new(0),
            generation: Some(generation),
            log,
            _dir: dir,
        };
        w.wait_ready()?;
        Ok(w)
    }

    /// Waits for the first `200` from `/health`.
    fn wait_ready(&mut self) -> Result<(), String> {
        wait_healthy(
            &mut self.child,
            &self.addr,
            self.token.as_deref(),
            STARTUP_TIMEOUT,
        )
        .map_err(|e| format!("{e}; log: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(empty)".into()
        } else {
            tail
        }
    }

    fn request(&self, req: &Req) -> Result<Resp, String> {
        let r = send(&self.addr, self.token.as_deref(), req)?;
        if self.flavor == Flavor::Cjm && r.header("x-cjm-protocol") != Some("1") {
            self.unmarked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r)
    }

    fn get(&self, path: &str) -> Result<Resp, String> {
        self.request(&Req::get(path))
    }

    fn post(&self, path: &str, body: &Value) -> Result<Resp, String> {
        self.request(&Req::post(path).json(body))
    }

    fn is_cjm(&self) -> bool {
        self.flavor == Flavor::Cjm
    }

    /// A worker of the 0.0.46 line (0.0.46 or cjm-substrate).
    fn is_0046_line(&self) -> bool {
        matches!(
            self.generation,
            Some(Generation::V0046 | Generation::Substrate)
        )
    }
}

// ---- the checks ------------------------------------------------------------------------------

/// `detail` (a string) and, for cjm workers, a well-formed `cjm_error` of `category`.
fn error_body(w: &Worker, r: &Resp, category: Option<&str>) -> Check {
    let v = r.json()?;
    ensure(v["detail"].is_string(), || {
        format!("no string `detail` in {v}")
    })?;
    if !w.is_cjm() {
        return Ok(());
    }
    let e = &v["cjm_error"];
    ensure(
        e["category"].is_string() && e["message"].is_string() && e["retriable"].is_boolean(),
        || format!("no well-formed `cjm_error` (category, message, retriable) in {v}"),
    )?;
    if let Some(c) = category {
        ensure(e["category"] == c, || {
            format!("category {} (want {c}) in {v}", e["category"])
        })?;
    }
    Ok(())
}

fn is_number(v: &Value) -> bool {
    v.is_number()
}

fn check_health(w: &Worker) -> Check {
    let r = w.get("/health")?;
    let v = r.ok_json()?;
    ensure(v["status"] == "running", || {
        format!("status is not \"running\": {v}")
    })?;
    ensure(v["pid"].as_u64() == Some(u64::from(w.pid)), || {
        format!("pid {} is not the worker's {}", v["pid"], w.pid)
    })?;
    ensure(v["name"].is_string() && v["version"].is_string(), || {
        format!("no string name/version: {v}")
    })?;
    if w.is_cjm() {
        ensure(v["protocol"] == 1, || format!("protocol is not 1: {v}"))?;
        let features: Vec<&str> = v["features"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for f in FEATURES {
            ensure(features.contains(&f), || {
                format!("feature `{f}` missing: {v}")
            })?;
        }
        ensure(v["max_concurrency"].as_u64().is_some_and(|n| n > 0), || {
            format!("no max_concurrency: {v}")
        })?;
        ensure(r.header("x-cjm-protocol") == Some("1"), || {
            "no `x-cjm-protocol: 1` header".into()
        })?;
    } else {
        ensure(v.get("protocol").is_none(), || {
            format!("an original worker that claims a protocol: {v}")
        })?;
    }
    Ok(())
}

fn check_stats(w: &Worker) -> Check {
    let v = w.get("/stats")?.ok_json()?;
    ensure(v["pid"].as_u64() == Some(u64::from(w.pid)), || {
        format!("pid {} is not the worker's", v["pid"])
    })?;
    let mut fields = vec!["cpu_percent", "memory_rss_mb"];
    if w.is_cjm() {
        fields.extend(["threads", "uptime_s", "calls", "errors", "in_flight"]);
        let pids = v["descendants"].as_array();
        ensure(
            pids.is_some_and(|a| a.iter().all(|p| p.as_u64().is_some())),
            || format!("`descendants` is not an array of pids: {v}"),
        )?;
    }
    for f in fields {
        ensure(is_number(&v[f]), || format!("`{f}` is not a number: {v}"))?;
    }
    ensure(v["memory_rss_mb"].as_f64().is_some_and(|m| m > 0.0), || {
        format!("memory_rss_mb is not positive: {v}")
    })
}

fn check_schema(w: &Worker) -> Check {
    let v = w.get("/config_schema")?.ok_json()?;
    ensure(v.is_object(), || format!("not an object: {v}"))?;
    if w.is_cjm() {
        ensure(
            v.as_object().is_some_and(Map::is_empty) || v["type"] == "object",
            || format!("neither `{{}}` nor an object schema: {v}"),
        )?;
    }
    Ok(())
}

fn check_config(w: &Worker) -> Check {
    let v = w.get("/config")?.ok_json()?;
    ensure(v.is_object(), || format!("not an object: {v}"))
}

fn check_initialize(w: &Worker, p: &Profile) -> Check {
    let v = w.post("/initialize", &p.valid_config)?.ok_json()?;
    ensure(v == json!({"status": "ok"}), || format!("answer {v}"))
}

fn check_init_invalid(w: &Worker) -> Check {
    let r = w.post("/initialize", &json!("not a configuration"))?;
    if w.is_cjm() {
        r.expect(422)?;
        error_body(w, &r, Some("config"))
    } else {
        r.expect(400)?;
        error_body(w, &r, None)
    }
}

fn check_config_kept(w: &Worker, before: &Option<Value>) -> Result<Outcome, String> {
    if !w.is_cjm() {
        return Ok(Outcome::NotApplicable);
    }
    let before = before
        .as_ref()
        .ok_or("no /config before the rejected one")?;
    let after = w.get("/config")?.ok_json()?;
    ensure(&after == before, || {
        format!("the rejected configuration changed /config: {before} -> {after}")
    })?;
    Ok(Outcome::Pass)
}

fn check_execute(w: &Worker, p: &Profile) -> Check {
    let r = w.post("/execute", &p.call)?;
    let v = r.ok_json()?;
    if w.is_cjm() {
        ensure(r.content_type() == "application/json", || {
            format!("content type `{}`", r.content_type())
        })?;
    }
    if let Some(want) = &p.expect {
        ensure(&v == want, || format!("result {v} (want {want})"))?;
    }
    Ok(())
}

fn check_bad_json(w: &Worker) -> Check {
    let r = w.request(&Req::post("/execute").raw("application/json", b"{\"args\": [".to_vec()))?;
    r.expect(400)?;
    error_body(w, &r, Some("user_input"))
}

fn check_content_type(w: &Worker, p: &Profile) -> Check {
    let r = w.request(&Req::post("/execute").raw("text/plain", p.call.to_string().into_bytes()))?;
    r.expect(415)?;
    error_body(w, &r, Some("user_input"))
}

fn check_typed_errors(w: &Worker) -> Check {
    // A call the plugin refuses: not an operation name.
    let r = w.post("/execute", &json!({"args": [42], "kwargs": {}}))?;
    r.expect(400)?;
    error_body(w, &r, Some("user_input"))?;
    let v = r.json()?;
    ensure(v["cjm_error"]["retriable"] == false, || {
        format!("a user error marked retriable: {v}")
    })
}

fn check_not_found(w: &Worker) -> Check {
    let r = w.get("/no/such/path")?;
    r.expect(404)?;
    error_body(w, &r, None)?;
    let v = r.json()?;
    ensure(v["detail"] == "Not Found", || {
        format!("detail {}", v["detail"])
    })
}

fn check_method(w: &Worker) -> Check {
    let r = w.get("/execute")?;
    r.expect(405)?;
    error_body(w, &r, None)?;
    let v = r.json()?;
    ensure(v["detail"] == "Method Not Allowed", || {
        format!("detail {}", v["detail"])
    })?;
    let r = w.post("/health", &json!({}))?;
    r.expect(405)
}

/// The NDJSON lines of a stream answer: each ends with `\n` and parses.
fn ndjson_lines(r: &Resp) -> Result<Vec<Value>, String> {
    ensure(r.content_type() == "application/x-ndjson", || {
        format!("content type `{}`", r.content_type())
    })?;
    let text = std::str::from_utf8(&r.body).map_err(|_| "the stream is not UTF-8")?;
    ensure(text.is_empty() || text.ends_with('\n'), || {
        "the last line does not end with \\n".into()
    })?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<Value>(l)
                .map_err(|e| format!("line {} is not JSON ({e}): {l}", i + 1))
        })
        .collect()
}

fn is_control(v: &Value) -> bool {
    v.get("$cjm").is_some()
}

fn check_ndjson(w: &Worker, p: &Profile) -> Check {
    let r = w.post("/execute_stream", &p.stream)?;
    r.expect(200)?;
    let lines = ndjson_lines(&r)?;
    let data: Vec<&Value> = lines.iter().filter(|l| !is_control(l)).collect();
    if w.is_cjm() {
        let last = lines.last().ok_or("an empty stream (no end line)")?;
        let want = json!({"$cjm": {"end": {"chunks": data.len()}}});
        ensure(last == &want, || format!("last line {last} (want {want})"))?;
        ensure(lines.iter().filter(|l| is_control(l)).count() == 1, || {
            "control lines besides the end line".into()
        })?;
    } else {
        ensure(data.len() == lines.len(), || {
            "an original worker sent `$cjm` lines".into()
        })?;
    }
    ensure(data.len() == p.chunks, || {
        format!("{} chunks (want {})", data.len(), p.chunks)
    })?;
    ensure(data.iter().all(|d| d.get("error").is_none()), || {
        "a data chunk with `error`".into()
    })
}

/// The last line of a failed stream: the original's `{"error": msg}`, plus the typed error for
/// cjm workers; nothing after it.
fn check_error_line(w: &Worker, last: &Value, category: Option<&str>) -> Check {
    ensure(last["error"].is_string(), || {
        format!("the last line is no error line: {last}")
    })?;
    if w.is_cjm() {
        let e = &last["$cjm"]["error"];
        ensure(
            e["category"].is_string() && e["message"].is_string(),
            || format!("no typed error in the error line: {last}"),
        )?;
        if let Some(c) = category {
            ensure(e["category"] == c, || {
                format!("category {} (want {c})", e["category"])
            })?;
        }
    } else {
        ensure(last.as_object().is_some_and(|o| o.len() == 1), || {
            format!("not the original's error line: {last}")
        })?;
    }
    Ok(())
}

/// A 0.0.46-line worker's `{"_job_error": {...}}` (a 500 body or a stream's last line), with
/// the fields the host decodes.
fn check_job_error(v: &Value, category: &str) -> Check {
    ensure(v.as_object().is_some_and(|o| o.len() == 1), || {
        format!("not a lone `_job_error`: {v}")
    })?;
    let e = &v["_job_error"];
    ensure(e["category"] == category, || {
        format!("category {} (want {category}) in {v}", e["category"])
    })?;
    ensure(
        e["message"].is_string()
            && e["retriable"].is_boolean()
            && e["original_exc_repr"].is_string(),
        || format!("no message/retriable/original_exc_repr in {v}"),
    )?;
    ensure(
        e["traceback"]
            .as_str()
            .is_some_and(|t| t.contains("Traceback")),
        || format!("no traceback in {v}"),
    )
}

fn check_stream_error(w: &Worker, p: &Profile) -> Result<Outcome, String> {
    let Some((body, before)) = &p.failing_stream else {
        return Ok(Outcome::NotApplicable);
    };
    let r = w.post("/execute_stream", body)?;
    r.expect(200)?;
    let lines = ndjson_lines(&r)?;
    let (last, data) = lines.split_last().ok_or("an empty stream")?;
    if w.is_0046_line() {
        check_job_error(last, "user_input")?;
    } else {
        check_error_line(w, last, None)?;
    }
    ensure(data.len() == *before, || {
        format!("{} chunks before the error (want {before})", data.len())
    })?;
    ensure(
        data.iter()
            .all(|d| !is_control(d) && d.get("error").is_none()),
        || "a control or error line before the last".into(),
    )?;
    Ok(Outcome::Pass)
}

/// Runs `f` for workers of the 0.0.46 line; `n/a` for the others.
fn line_0046_only(w: &Worker, f: impl FnOnce() -> Check) -> Outcome {
    if w.is_0046_line() {
        outcome(f())
    } else {
        Outcome::NotApplicable
    }
}

/// `/execute` failures are typed `_job_error` 500 bodies; 409 is a cancellation.
fn check_job_error_bodies(w: &Worker) -> Check {
    let r = w.post("/execute", &json!({"kwargs": {"action": "bad_input"}}))?;
    r.expect(500)?;
    let v = r.json()?;
    check_job_error(&v, "user_input")?;
    ensure(v["_job_error"]["fields_invalid"] == json!(["lang"]), || {
        format!("fields_invalid in {v}")
    })?;
    let r = w.post("/execute", &json!({"kwargs": {"action": "oom"}}))?;
    r.expect(500)?;
    let v = r.json()?;
    check_job_error(&v, "resource")?;
    let s = &v["_job_error"]["resource_shortfall"];
    ensure(
        s["resource"] == "gpu_vram_mb" && s["needed"] == 4096.0 && s["available"] == 512.0,
        || format!("resource_shortfall in {v}"),
    )?;
    let r = w.post("/execute", &json!({"kwargs": {"action": "busy"}}))?;
    r.expect(500)?;
    let v = r.json()?;
    check_job_error(&v, "transient")?;
    ensure(v["_job_error"]["retry_after_seconds"] == 1.5, || {
        format!("retry_after_seconds in {v}")
    })
}

/// `/reconfigure {old_config, new_config}` fires the release hook of a changed
/// `RELOAD_TRIGGER` field, then applies the new configuration.
fn check_reconfigure(w: &Worker) -> Check {
    let before = w
        .post("/execute", &json!({"kwargs": {"action": "state"}}))?
        .ok_json()?;
    let body = json!({"old_config": {"lang": "en"}, "new_config": {"lang": "de"}});
    let v = w.post("/reconfigure", &body)?.ok_json()?;
    ensure(v == json!({"status": "reconfigured"}), || {
        format!("answer {v}")
    })?;
    let after = w
        .post("/execute", &json!({"kwargs": {"action": "state"}}))?
        .ok_json()?;
    let released =
        after["releases"].as_u64().unwrap_or(0) == before["releases"].as_u64().unwrap_or(0) + 1;
    ensure(released && after["tokenizer"] == "tokenizer-de", || {
        format!("no release hook fired or not applied: {before} -> {after}")
    })
}

/// `/task {task, method, kwargs}`: a bound adapter's method answers its result, its failure
/// a typed `_job_error` 500; an unbound task is a 404 naming it.
fn check_task(w: &Worker) -> Check {
    let body = json!({"task": "text.tokenize", "method": "tokenize", "kwargs": {"text": "a b"}});
    let v = w.post("/task", &body)?.ok_json()?;
    ensure(v["tokens"] == json!(["a", "b"]), || format!("result {v}"))?;
    let body = json!({"task": "text.tokenize", "method": "refuse", "kwargs": {}});
    let r = w.post("/task", &body)?;
    r.expect(500)?;
    check_job_error(&r.json()?, "user_input")?;
    let r = w.post(
        "/task",
        &json!({"task": "text.summarize", "method": "run", "kwargs": {}}),
    )?;
    r.expect(404)?;
    let v = r.json()?;
    ensure(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("text.summarize")),
        || format!("detail {v}"),
    )
}

/// `/on_disable`, `/on_enable`, `/config_options`, `/structural_surface`, `/prefetch`.
fn check_hooks(w: &Worker) -> Check {
    let v = w.post("/on_disable", &json!({}))?.ok_json()?;
    ensure(v == json!({"status": "disabled"}), || {
        format!("/on_disable: {v}")
    })?;
    let v = w.post("/on_enable", &json!({}))?.ok_json()?;
    ensure(v == json!({"status": "enabled"}), || {
        format!("/on_enable: {v}")
    })?;
    let v = w.get("/config_options")?.ok_json()?;
    // The test plugin answers as the original's FieldOptions serialise: value, label, metadata.
    let values: Vec<&Value> = v["lang"]["options"]
        .as_array()
        .map(|o| o.iter().map(|e| &e["value"]).collect())
        .unwrap_or_default();
    ensure(
        values == [&json!("en"), &json!("de"), &json!("fr")]
            && v["lang"]["options"][1]["label"] == "German",
        || format!("/config_options: {v}"),
    )?;
    let v = w.get("/structural_surface")?.ok_json()?;
    ensure(v.is_object(), || format!("/structural_surface: {v}"))?;
    let v = w.post("/prefetch", &json!({}))?.ok_json()?;
    ensure(v == json!({"status": "prefetched"}), || {
        format!("/prefetch: {v}")
    })?;
    let v = w.get("/progress")?.ok_json()?;
    ensure(v["progress"] == 1.0, || {
        format!("/progress after prefetch: {v}")
    })
}

fn check_stream_reject(w: &Worker) -> Check {
    let r = w.post("/execute_stream", &json!({"args": [42]}))?;
    r.expect(400)?;
    error_body(w, &r, Some("user_input"))
}

fn check_progress(w: &Worker) -> Check {
    let v = w.get("/progress")?.ok_json()?;
    let p = v["progress"]
        .as_f64()
        .ok_or_else(|| format!("no number `progress`: {v}"))?;
    ensure((0.0..=1.0).contains(&p) || p == -1.0, || {
        format!("progress {p} out of range")
    })?;
    ensure(v["message"].is_string(), || {
        format!("no string `message`: {v}")
    })?;
    let v = w.request(&Req::post("/cancel"))?.ok_json()?;
    ensure(
        ["cancelled", "not_supported", "error"]
            .iter()
            .any(|s| v["status"] == *s),
        || format!("/cancel answered {v}"),
    )
}

/// Starts the long call on a thread; the answer comes back through the handle.
fn start_long(
    w: &Worker,
    long: &Long,
    extra: &[(&str, &str)],
) -> std::thread::JoinHandle<Result<Resp, String>> {
    let path = if long.stream {
        "/execute_stream"
    } else {
        "/execute"
    };
    let mut req = Req::post(path).json(&long.body);
    for (k, v) in extra {
        req = req.header(k, v);
    }
    req.timeout = Duration::from_secs(90);
    let (addr, token) = (w.addr.clone(), w.token.clone());
    std::thread::spawn(move || send(&addr, token.as_deref(), &req))
}

fn join(h: std::thread::JoinHandle<Result<Resp, String>>) -> Result<Resp, String> {
    h.join()
        .map_err(|_| "the request thread panicked".to_string())?
}

fn check_cancel_call(w: &Worker, p: &Profile) -> Result<Outcome, String> {
    let Some(long) = &p.long else {
        return Ok(Outcome::NotApplicable);
    };
    let idle = w.get("/progress")?.ok_json()?;
    let call = start_long(w, long, &[]);
    // Wait for the call to report progress: then it runs in the plugin.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = w.get("/progress")?.ok_json()?;
        // Not the idle reading (a previous call's last progress): this call's own.
        let moved = v["progress"] != idle["progress"] || v["message"] != idle["message"];
        if moved && v["message"].as_str().is_some_and(|m| !m.is_empty()) {
            break;
        }
        if Instant::now() > end || call.is_finished() {
            let _ = w.request(&Req::post("/cancel"));
            let ended = join(call).map(|r| r.text()).unwrap_or_else(|e| e);
            return Err(format!(
                "no progress while the call ran (last {v}); the call: {ended}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if w.is_cjm() {
        // Control endpoints are served while a call runs.
        w.get("/health")?.expect(200)?;
    }
    let cancelled_at = Instant::now();
    let v = w.request(&Req::post("/cancel"))?.ok_json()?;
    ensure(v == json!({"status": "cancelled"}), || {
        format!("/cancel answered {v}")
    })?;
    let r = join(call)?;
    let took = cancelled_at.elapsed();
    ensure(took < Duration::from_secs(10), || {
        format!("the call ended {took:?} after /cancel")
    })?;
    match (w.is_cjm(), long.stream) {
        (true, false) => {
            r.expect(409)?;
            error_body(w, &r, Some("cancelled"))?;
        }
        (true, true) => {
            r.expect(200)?;
            let lines = ndjson_lines(&r)?;
            let last = lines.last().ok_or("an empty stream")?;
            check_error_line(w, last, Some("cancelled"))?;
        }
        (false, _) => {
            r.expect(200)?;
            ndjson_lines(&r)?;
        }
    }
    Ok(Outcome::Pass)
}

fn check_deadline(w: &Worker, p: &Profile) -> Result<Outcome, String> {
    let Some(long) = p.long.as_ref().filter(|l| !l.stream && w.is_cjm()) else {
        return Ok(Outcome::NotApplicable);
    };
    let started = Instant::now();
    let r = join(start_long(w, long, &[("x-cjm-timeout-ms", "300")]))?;
    r.expect(504)?;
    error_body(w, &r, Some("timeout"))?;
    let took = started.elapsed();
    ensure(took < Duration::from_secs(10), || {
        format!("answered after {took:?}")
    })?;
    Ok(Outcome::Pass)
}

fn check_auth(w: &Worker) -> Check {
    let mut req = Req::get("/health");
    req.no_auth = true;
    let r = w.request(&req)?;
    r.expect(401)?;
    error_body(w, &r, None)?;
    let mut req = Req::get("/health").header("Authorization", "Bearer wrong-token");
    req.no_auth = true;
    w.request(&req)?.expect(401)?;
    let mut req = Req::post("/execute").json(&json!({"args": ["no-such-op"]}));
    req.no_auth = true;
    w.request(&req)?.expect(401)?;
    w.get("/health")?.expect(200)
}

fn check_too_large(w: &Worker) -> Check {
    let mut req = Req::post("/execute").raw("application/json", Vec::new());
    req.declared_len = Some(MAX_JSON_BODY + 1);
    let r = w.request(&req)?;
    r.expect(413)?;
    error_body(w, &r, Some("user_input"))
}

fn check_frames(w: &Worker, p: &Profile) -> Check {
    let frame_type = "application/vnd.cjm.frame";
    if p.blob_echo {
        let big: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let kwargs = json!({"file": {"$cjm_blob": 0}, "tail": {"$cjm_blob": 1}});
        let body = encode_frame(
            &json!({"args": ["echo"], "kwargs": kwargs}),
            &[&big, b"tail"],
        );
        let r = w.request(&Req::post("/execute").raw(frame_type, body))?;
        r.expect(200)?;
        ensure(r.content_type() == frame_type, || {
            format!("answer content type `{}`", r.content_type())
        })?;
        let (value, blobs) = decode_frame(&r.body)?;
        ensure(value == kwargs, || format!("value {value} (want {kwargs})"))?;
        ensure(
            blobs.len() == 2 && blobs[0] == big && blobs[1] == b"tail",
            || format!("{} blobs came back, not the ones sent", blobs.len()),
        )?;
    } else {
        // A frame without blobs is the JSON call in another envelope.
        let r = w.request(&Req::post("/execute").raw(frame_type, encode_frame(&p.call, &[])))?;
        let v = r.ok_json()?;
        if let Some(want) = &p.expect {
            ensure(&v == want, || format!("result {v} (want {want})"))?;
        }
    }
    // Declared lengths that do not add up are refused.
    let mut bad = encode_frame(&p.call, &[b"abc"]);
    bad.truncate(bad.len() - 1);
    let r = w.request(&Req::post("/execute").raw(frame_type, bad))?;
    r.expect(400)?;
    error_body(w, &r, Some("user_input"))
}

fn check_cleanup(w: &Worker) -> Check {
    let v = w.request(&Req::post("/cleanup"))?.ok_json()?;
    ensure(v == json!({"status": "cleaned"}), || format!("answer {v}"))?;
    w.get("/health")?.expect(200)
}

fn check_shutdown(w: &mut Worker) -> Check {
    sigterm(w.pid).map_err(|e| format!("cannot signal the worker: {e}"))?;
    let status = wait_child(&mut w.child, EXIT_TIMEOUT)
        .map_err(|e| format!("cannot wait for the worker: {e}"))?
        .ok_or_else(|| format!("still running {EXIT_TIMEOUT:?} after SIGTERM"))?;
    ensure(!Path::new(&format!("/proc/{}", w.pid)).exists(), || {
        "the process is still there after exiting".into()
    })?;
    if w.is_cjm() {
        ensure(status.code() == Some(0), || {
            format!("{status} (want exit status 0); log: {}", w.log_tail())
        })?;
    }
    Ok(())
}

fn outcome(r: Check) -> Outcome {
    match r {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

fn cjm_only(w: &Worker, f: impl FnOnce() -> Check) -> Outcome {
    if w.is_cjm() {
        outcome(f())
    } else {
        Outcome::NotApplicable
    }
}

/// Runs every check against one worker, in `CHECKS` order.
fn run_suite(p: &Profile) -> Vec<Outcome> {
    let manifest = match (&p.manifest_error, &p.launch) {
        (Some(e), _) => Outcome::Fail(e.clone()),
        (None, Launch::Native { .. }) => Outcome::Pass,
        (None, Launch::Python { .. }) => Outcome::NotApplicable,
    };
    let mut w = match Worker::start(p) {
        Ok(w) => w,
        Err(e) => {
            let mut out = vec![manifest];
            out.extend(
                CHECKS[1..]
                    .iter()
                    .map(|_| Outcome::Fail(format!("the worker did not start: {e}"))),
            );
            return out;
        }
    };
    let w_ref = &w;
    let mut out = vec![
        manifest,
        outcome(check_health(w_ref)),
        outcome(check_stats(w_ref)),
        outcome(check_schema(w_ref)),
        outcome(check_config(w_ref)),
        outcome(check_initialize(w_ref, p)),
    ];
    let before = w_ref.get("/config").and_then(|r| r.ok_json()).ok();
    out.push(outcome(check_init_invalid(w_ref)));
    out.push(check_config_kept(w_ref, &before).unwrap_or_else(Outcome::Fail));
    out.push(outcome(check_execute(w_ref, p)));
    out.push(cjm_only(w_ref, || check_bad_json(w_ref)));
    out.push(cjm_only(w_ref, || check_content_type(w_ref, p)));
    out.push(cjm_only(w_ref, || check_typed_errors(w_ref)));
    out.push(outcome(check_not_found(w_ref)));
    out.push(outcome(check_method(w_ref)));
    out.push(outcome(check_ndjson(w_ref, p)));
    out.push(check_stream_error(w_ref, p).unwrap_or_else(Outcome::Fail));
    out.push(cjm_only(w_ref, || check_stream_reject(w_ref)));
    out.push(line_0046_only(w_ref, || check_job_error_bodies(w_ref)));
    out.push(line_0046_only(w_ref, || check_reconfigure(w_ref)));
    out.push(line_0046_only(w_ref, || check_task(w_ref)));
    out.push(line_0046_only(w_ref, || check_hooks(w_ref)));
    out.push(outcome(check_progress(w_ref)));
    out.push(check_cancel_call(w_ref, p).unwrap_or_else(Outcome::Fail));
    out.push(check_deadline(w_ref, p).unwrap_or_else(Outcome::Fail));
    out.push(cjm_only(w_ref, || check_auth(w_ref)));
    out.push(cjm_only(w_ref, || check_too_large(w_ref)));
    out.push(cjm_only(w_ref, || check_frames(w_ref, p)));
    out.push(outcome(check_cleanup(w_ref)));
    // Every answer of a cjm worker so far carried `x-cjm-protocol: 1`.
    let unmarked = w.unmarked.load(Ordering::Relaxed);
    if unmarked > 0 {
        if let Some(Outcome::Pass) = out.get(1) {
            out[1] = Outcome::Fail(format!("{unmarked} answer(s) without `x-cjm-protocol: 1`"));
        }
    }
    out.push(outcome(check_shutdown(&mut w)));
    debug_assert_eq!(out.len(), CHECKS.len());
    out
}

// ---- profiles and manifests ------------------------------------------------------------------

struct Options {
    bin_dir: PathBuf,
    templates: PathBuf,
    manifests_out: Option<PathBuf>,
    python: Option<PathBuf>,
    /// A Python 3.12 with cjm-plugin-system 0.0.46.
    python_0046: Option<PathBuf>,
    /// A Python 3.12 with cjm-substrate.
    python_substrate: Option<PathBuf>,
    pythonpath: PathBuf,
    only: Option<Vec<String>>,
}

const USAGE: &str = "usage: conformance [--bin-dir DIR] [--templates DIR] [--manifests-out DIR] \
                     [--python PATH] [--python-0046 PATH] [--python-substrate PATH] [--pythonpath DIR] \
                     [--no-python] [--only NAME[,NAME...]]";

fn workspace_root() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

fn parse_args() -> Result<Options, String> {
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let root = workspace_root();
    let default_python = std::env::var_os("CJM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/py-venv/bin/python"));
    let mut o = Options {
        bin_dir,
        templates: root.join("examples/sample-plugins/manifests"),
        manifests_out: None,
        python: Some(default_python),
        python_0046: Some(
            std::env::var_os("CJM_TEST_PYTHON_0046")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/py312-v0046/bin/python")),
        ),
        python_substrate: Some(
            std::env::var_os("CJM_TEST_PYTHON_SUBSTRATE")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/py312-substrate/bin/python")),
        ),
        pythonpath: Path::new(env!("CARGO_MANIFEST_DIR")).join("python"),
        only: None,
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--bin-dir" => o.bin_dir = value()?,
            "--templates" => o.templates = value()?,
            "--manifests-out" => o.manifests_out = Some(value()?),
            "--python" => o.python = Some(value()?),
            "--python-0046" => o.python_0046 = Some(value()?),
            "--python-substrate" => o.python_substrate = Some(value()?),
            "--pythonpath" => o.pythonpath = value()?,
            "--no-python" => {
                o.python = None;
                o.python_0046 = None;
                o.python_substrate = None;
            }
            "--only" => {
                let v = value()?;
                o.only = Some(
                    v.to_string_lossy()
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                );
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

/// The manifest of sample `name`: its template with `{bin_dir}` replaced in `command`.
/// Checks that it is an object naming `name` and an executable program.
fn generate_manifest(o: &Options, name: &str) -> Result<Value, String> {
    let template = o.templates.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&template)
        .map_err(|e| format!("cannot read {}: {e}", template.display()))?;
    let mut m: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not JSON: {e}", template.display()))?;
    ensure(m["name"] == name, || {
        format!("{}: `name` is not \"{name}\"", template.display())
    })?;
    let command = m["command"]
        .as_str()
        .ok_or_else(|| format!("{}: no string `command`", template.display()))?
        .replace("{bin_dir}", &o.bin_dir.to_string_lossy());
    let exe = std::fs::metadata(&command)
        .is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0);
    ensure(exe, || {
        format!("{command} is not an executable file: run `cargo build -p cjm-sample-plugins`")
    })?;
    m["command"] = Value::String(command);
    Ok(m)
}

fn profiles(o: &Options, manifest_dir: &Path) -> Vec<Profile> {
    let native = |name: &str| -> (Launch, Option<String>) {
        let path = manifest_dir.join(format!("{name}.json"));
        let written = generate_manifest(o, name).and_then(|m| {
            let text = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
            std::fs::write(&path, text + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if let Some(out) = &o.manifests_out {
                std::fs::create_dir_all(out)
                    .and_then(|()| std::fs::copy(&path, out.join(format!("{name}.json"))))
                    .map_err(|e| format!("cannot write to {}: {e}", out.display()))?;
            }
            Ok(())
        });
        (Launch::Native { manifest: path }, written.err())
    };
    let base = |name: &str, (launch, manifest_error): (Launch, Option<String>)| Profile {
        name: name.to_owned(),
        launch,
        manifest_error,
        valid_config: json!({}),
        call: json!({}),
        expect: None,
        stream: json!({}),
        chunks: 1,
        failing_stream: None,
        long: None,
        blob_echo: false,
    };
    let mut all = Vec::new();

    let mut p = base("echo", native("echo"));
    p.call = json!({"args": ["echo"], "kwargs": {"text": "héllo", "n": [1, 2]}});
    p.expect = Some(json!({"text": "héllo", "n": [1, 2]}));
    p.stream = p.call.clone();
    p.long = Some(Long {
        body: json!({"args": ["sleep"], "kwargs": {"seconds": 60}}),
        stream: false,
    });
    p.blob_echo = true;
    all.push(p);

    let mut p = base("transcriber", native("transcriber"));
    p.valid_config = json!({"language": "de", "word_delay_ms": 1});
    p.call = json!({"args": ["transcribe"], "kwargs": {"text": "guten tag"}});
    p.expect = Some(json!({"text": "guten tag", "language": "de"}));
    p.stream = json!({"args": ["transcribe"], "kwargs": {"text": "eins zwei drei"}});
    p.chunks = 3;
    p.long = Some(Long {
        body: json!({"args": ["transcribe"], "kwargs": {"text": "wort ".repeat(60_000)}}),
        stream: true,
    });
    all.push(p);

    let mut p = base("config-rich", native("config-rich"));
    p.valid_config = json!({"name": "conformance", "beam_size": 2, "tags": ["a", "b"], "seed": 7});
    p.call = json!({"args": ["show"]});
    p.expect = Some(json!({
        "name": "conformance", "temperature": 0.7, "beam_size": 2, "verbose": false,
        "model": "small", "tags": ["a", "b"], "seed": 7
    }));
    p.stream = p.call.clone();
    all.push(p);

    let mut p = base("slow", native("slow"));
    p.call = json!({"args": ["work"], "kwargs": {"seconds": 0.05, "steps": 5}});
    p.expect = Some(json!({"seconds": 0.05, "steps": 5}));
    p.stream = json!({"args": ["work"], "kwargs": {"seconds": 0.03, "steps": 3}});
    p.chunks = 4;
    p.failing_stream = Some((
        json!({"args": ["work"], "kwargs": {"seconds": 0.03, "steps": 3, "fail_at": 2}}),
        2,
    ));
    p.long = Some(Long {
        body: json!({"args": ["work"], "kwargs": {"seconds": 60, "steps": 600}}),
        stream: false,
    });
    all.push(p);

    let mut p = base("crashy", native("crashy"));
    p.call = json!({"args": ["pid"]});
    p.stream = p.call.clone();
    all.push(p);

    let mut p = base("resources", native("resources"));
    p.call = json!({"args": ["info"]});
    p.stream = p.call.clone();
    all.push(p);

    if let Some(python) = &o.python {
        let py = |name: &str, class: &'static str| {
            let manifest_error = (!python.is_file()).then(|| {
                format!(
                    "no Python at {}: run `cargo xtask test-plugins` (it creates the venv), \
                     pass --python, or --no-python",
                    python.display()
                )
            });
            Profile {
                launch: Launch::Python {
                    python: python.clone(),
                    pythonpath: o.pythonpath.clone(),
                    class,
                    generation: Generation::Seed,
                },
                ..base(
                    name,
                    (
                        Launch::Native {
                            manifest: PathBuf::new(),
                        },
                        manifest_error,
                    ),
                )
            }
        };
        let mut p = py("py-echo", "EchoPlugin");
        p.call = json!({"args": [1, "two"], "kwargs": {"k": [3]}});
        p.expect = Some(json!({"args": [1, "two"], "kwargs": {"k": [3]}}));
        p.stream = p.call.clone();
        all.push(p);

        let mut p = py("py-stream", "StreamPlugin");
        p.call = json!({"args": ["x"], "kwargs": {}});
        p.expect = Some(json!({"args": ["x"], "kwargs": {}}));
        p.stream = json!({"kwargs": {"text": "a b c"}});
        p.chunks = 3;
        p.failing_stream = Some((json!({"kwargs": {"text": "a b c d", "fail_at": 2}}), 2));
        all.push(p);

        let mut p = py("py-slow", "SlowPlugin");
        p.call = json!({"kwargs": {"seconds": 0.05}});
        p.expect = Some(json!({"slept": 0.05}));
        p.stream = p.call.clone();
        p.chunks = 2;
        p.long = Some(Long {
            body: json!({"kwargs": {"seconds": 60}}),
            stream: true,
        });
        all.push(p);
    }
    // The 0.0.46 line: the same test plugin on cjm-plugin-system 0.0.46 and on cjm-substrate.
    for (name, python, generation) in [
        ("py46-gen", &o.python_0046, Generation::V0046),
        ("sub-gen", &o.python_substrate, Generation::Substrate),
    ] {
        let Some(python) = python else { continue };
        let manifest_error = (!python.is_file()).then(|| {
            format!(
                "no Python 3.12 venv at {}: run `cargo xtask test-plugins` (it creates it), \
                 pass --python-0046/--python-substrate, or --no-python",
                python.display()
            )
        });
        let mut p = Profile {
            launch: Launch::Python {
                python: python.clone(),
                pythonpath: o.pythonpath.clone(),
                class: "Gen46Plugin",
                generation,
            },
            ..base(
                name,
                (
                    Launch::Native {
                        manifest: PathBuf::new(),
                    },
                    manifest_error,
                ),
            )
        };
        p.valid_config = json!({"lang": "en"});
        p.call = json!({"kwargs": {"action": "state"}});
        p.expect = Some(json!({
            "lang": "en", "suffix": "", "tokenizer": "tokenizer-en", "releases": 0, "hooks": []
        }));
        p.stream = json!({"kwargs": {"count": 2, "fail": false}});
        p.chunks = 2;
        p.failing_stream = Some((json!({"kwargs": {"count": 2}}), 2));
        all.push(p);
    }
    if let Some(only) = &o.only {
        all.retain(|p| only.contains(&p.name));
    }
    all
}

// ---- the table -------------------------------------------------------------------------------

fn cell(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail(_) => "FAIL",
        Outcome::NotApplicable => "n/a",
    }
}

fn print_table(profiles: &[Profile], results: &[Vec<Outcome>]) -> (usize, usize) {
    let first = CHECKS.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    let widths: Vec<usize> = profiles.iter().map(|p| p.name.len().max(4)).collect();
    let mut out = String::new();
    let _ = write!(out, "{:first$}", "check");
    for (p, w) in profiles.iter().zip(&widths) {
        let _ = write!(out, "  {:w$}", p.name);
    }
    out.push('\n');
    let _ = write!(out, "{}", "-".repeat(first));
    for w in &widths {
        let _ = write!(out, "  {}", "-".repeat(*w));
    }
    out.push('\n');
    for (i, check) in CHECKS.iter().enumerate() {
        let _ = write!(out, "{check:first$}");
        for (r, w) in results.iter().zip(&widths) {
            let c = r.get(i).map_or("?", cell);
            let _ = write!(out, "  {c:w$}");
        }
        out.push('\n');
    }
    let (mut passed, mut failed) = (0, 0);
    let mut reasons = String::new();
    for (p, r) in profiles.iter().zip(results) {
        // A reason shared by several checks (a worker that did not start) is told once.
        let mut told: Vec<(&str, Vec<&str>)> = Vec::new();
        for (check, o) in CHECKS.iter().zip(r) {
            match o {
                Outcome::Pass => passed += 1,
                Outcome::Fail(why) => {
                    failed += 1;
                    match told.iter_mut().find(|(w, _)| *w == why.as_str()) {
                        Some((_, checks)) => checks.push(check),
                        None => told.push((why.as_str(), vec![check])),
                    }
                }
                Outcome::NotApplicable => {}
            }
        }
        for (why, checks) in told {
            let _ = writeln!(reasons, "  {} / {}: {why}", p.name, checks.join(", "));
        }
    }
    if !reasons.is_empty() {
        out.push_str("\nfailures:\n");
        out.push_str(&reasons);
    }
    print!("{out}");
    (passed, failed)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let manifests = match run_dir("manifests") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let profiles = profiles(&o, manifests.path());
    if profiles.is_empty() {
        eprintln!("conformance: no worker selected\n{USAGE}");
        return ExitCode::from(2);
    }
    println!(
        "protocol v1 conformance: {} workers, {} checks each (workers from {})\n",
        profiles.len(),
        CHECKS.len(),
        o.bin_dir.display()
    );
    // Workers run side by side, each in its own directory and process group.
    let results: Vec<Vec<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = profiles
            .iter()
            .map(|p| s.spawn(move || run_suite(p)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    CHECKS
                        .iter()
                        .map(|_| Outcome::Fail("the suite's thread panicked".into()))
                        .collect()
                })
            })
            .collect()
    });
    let (passed, failed) = print_table(&profiles, &results);
    println!("\n{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
