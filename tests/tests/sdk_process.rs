//! The SDK's worker as a real process: socket inheritance, `--listen`, the missing-socket
//! message, SIGTERM's graceful shutdown with cleanup, and the host's death ending the worker.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const WORKER: &str = env!("CARGO_BIN_EXE_sdk-test-worker");

/// A child process that is killed and reaped when dropped, whatever the test's outcome.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A whole HTTP/1.1 answer, read from a `Connection: close` exchange.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Where a worker listens.
#[derive(Clone)]
enum Addr {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// One request over a fresh connection; the worker closes it after answering.
fn request(addr: &Addr, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        text.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let mut raw = Vec::new();
    match addr {
        Addr::Unix(p) => {
            let mut s = UnixStream::connect(p).expect("connect");
            s.write_all(text.as_bytes()).expect("write");
            s.read_to_end(&mut raw).expect("read");
        }
        Addr::Tcp(a) => {
            let mut s = std::net::TcpStream::connect(a).expect("connect");
            s.write_all(text.as_bytes()).expect("write");
            s.read_to_end(&mut raw).expect("read");
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

fn get(addr: &Addr, path: &str, token: Option<&str>) -> Answer {
    request(addr, "GET", path, token, "")
}

/// Makes `fd` the child's descriptor 3 (without close-on-exec).
fn inherit_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (dup2, fcntl) on descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A worker started as the host starts it: listening socket as fd 3, token, env.
fn spawn_inherited(listen_fd: RawFd, kind: &str, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(WORKER);
    cmd.env("CJM_LISTEN_FD", "3")
        .env("CJM_LISTEN_KIND", kind)
        .env("CJM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    inherit_as_fd3(&mut cmd, listen_fd);
    Proc(cmd.spawn().expect("spawn the worker"))
}

/// Waits (blocking, up to `limit`) for the exit of `pid`, which need not be our child.
fn wait_exit_of(pid: u32, limit: Duration) -> bool {
    // SAFETY: pidfd_open returns a new descriptor or -1; we own and close it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return true; // Already gone.
    }
    let fd = fd as RawFd;
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the timeout bounds the wait.
    let n = unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as libc::c_int) };
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(fd) };
    n == 1
}

/// True while `pid` runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let i = t.rfind(')')?;
            t[i + 1..]
                .split_whitespace()
                .next()
                .map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// Waits for an in-flight call to report progress `message` (a readiness signal: the call is
/// running inside the worker).
fn until_progress(addr: &Addr, token: Option<&str>, message: &str) {
    for _ in 0..10_000 {
        if get(addr, "/progress", token).json()["message"] == message {
            return;
        }
        std::thread::yield_now();
    }
    panic!("the call never reported {message:?}");
}

fn sigterm(pid: u32) {
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
}

fn marker_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn an_inherited_unix_socket_with_auth_and_a_concurrency_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let marker = dir.path().join("marker");
    let mut w = spawn_inherited(
        listener.as_raw_fd(),
        "unix",
        &[
            ("CJM_AUTH_TOKEN", "t0ken"),
            ("CJM_MAX_CONCURRENCY", "1"),
            ("SDK_TEST_MARKER", marker.to_str().unwrap()),
        ],
    );
    // The worker has its own copy; the socket already accepts, so there is nothing to wait for.
    drop(listener);
    let addr = Addr::Unix(path.clone());
    let a = get(&addr, "/health", Some("t0ken"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.head.to_ascii_lowercase().contains("x-cjm-protocol: 1"));
    let h = a.json();
    assert_eq!(h["pid"], w.0.id());
    assert_eq!(h["name"], "sdk-test-worker");
    assert_eq!(h["max_concurrency"], 1, "min(plugin's 4, host's 1)");
    assert!(h["features"].as_array().unwrap().contains(&json!("auth")));
    assert_eq!(get(&addr, "/health", None).status, 401);
    assert_eq!(get(&addr, "/health", Some("nope")).status, 401);
    let a = request(
        &addr,
        "POST",
        "/execute",
        Some("t0ken"),
        r#"{"args": ["echo"], "kwargs": {"k": "v"}}"#,
    );
    assert_eq!(a.json(), json!({"k": "v"}));
    // Programs the plugin starts inherit neither the token nor the listening socket.
    let a = request(
        &addr,
        "POST",
        "/execute",
        Some("t0ken"),
        r#"{"args": ["spawn_child"]}"#,
    );
    let child = a.json().as_u64().expect("child pid") as u32;
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("CJM_AUTH_TOKEN"), "{environ}");
    assert!(!environ.contains("CJM_LISTEN_FD"), "{environ}");
    assert!(!Path::new(&format!("/proc/{child}/fd/3")).exists());

    sigterm(w.0.id());
    let status = w.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(marker_text(&marker), "cleanup\n");
    // The worker ended its child on the way out.
    assert!(!running(child), "the plugin's child outlived the worker");
}

#[test]
fn an_inherited_tcp_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Addr::Tcp(listener.local_addr().unwrap());
    let mut w = spawn_inherited(listener.as_raw_fd(), "tcp", &[]);
    drop(listener);
    let h = get(&addr, "/health", None).json();
    assert_eq!(h["pid"], w.0.id());
    assert!(!h["features"].as_array().unwrap().contains(&json!("auth")));
    sigterm(w.0.id());
    assert_eq!(w.0.wait().unwrap().code(), Some(0));
}

#[test]
fn without_a_socket_the_worker_explains_and_exits_2() {
    let out = Command::new(WORKER)
        .env_remove("CJM_LISTEN_FD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen unix:"), "{err}");
    assert!(err.contains("CJM_LISTEN_FD"), "{err}");
    let out = Command::new(WORKER)
        .arg("--listen")
        .arg("ftp:x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn listen_flag_for_runs_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.sock");
    let mut w = Proc(
        Command::new(WORKER)
            .arg("--listen")
            .arg(format!("unix:{}", path.display()))
            .env("CJM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Readiness: the log line the worker writes once it listens.
    let mut err = BufReader::new(w.0.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the worker ended early"
        );
        if line.contains("listening on") {
            break;
        }
    }
    let addr = Addr::Unix(path.clone());
    assert_eq!(get(&addr, "/health", None).status, 200);
    sigterm(w.0.id());
    assert_eq!(w.0.wait().unwrap().code(), Some(0));
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn sigterm_lets_a_running_call_finish_then_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let marker = dir.path().join("marker");
    let mut w = spawn_inherited(
        listener.as_raw_fd(),
        "unix",
        &[
            ("SDK_TEST_MARKER", marker.to_str().unwrap()),
            ("SDK_TEST_GRACE_MS", "60000"),
        ],
    );
    drop(listener);
    let addr = Addr::Unix(path);
    let a2 = addr.clone();
    let call = std::thread::spawn(move || {
        request(
            &a2,
            "POST",
            "/execute",
            None,
            r#"{"args": ["sleep_ms"], "kwargs": {"ms": 300}}"#,
        )
    });
    until_progress(&addr, None, "sleeping");
    sigterm(w.0.id());
    let a = call.join().unwrap();
    assert_eq!((a.status, a.json()), (200, json!({"slept_ms": 300})));
    assert_eq!(w.0.wait().unwrap().code(), Some(0));
    assert_eq!(marker_text(&marker), "cleanup\n");
}

#[test]
fn sigterm_cancels_calls_still_running_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let marker = dir.path().join("marker");
    let mut w = spawn_inherited(
        listener.as_raw_fd(),
        "unix",
        &[
            ("SDK_TEST_MARKER", marker.to_str().unwrap()),
            ("SDK_TEST_GRACE_MS", "100"),
        ],
    );
    drop(listener);
    let addr = Addr::Unix(path);
    let a2 = addr.clone();
    let call = std::thread::spawn(move || {
        request(
            &a2,
            "POST",
            "/execute",
            None,
            r#"{"args": ["wait_cancel"]}"#,
        )
    });
    until_progress(&addr, None, "halfway");
    sigterm(w.0.id());
    let a = call.join().unwrap();
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.json()["cjm_error"]["category"], "cancelled");
    assert_eq!(w.0.wait().unwrap().code(), Some(0));
    assert_eq!(marker_text(&marker), "cleanup\n");
}

#[test]
fn the_death_of_the_host_ends_the_worker_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let marker = dir.path().join("marker");
    // A stand-in host: a shell that starts the worker (its child) with CJM_HOST_PID set to
    // itself, prints the worker's pid, then waits on its stdin.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"CJM_HOST_PID=$$ "$0" & echo $!; exec cat"#)
        .arg(WORKER)
        .env("CJM_LISTEN_FD", "3")
        .env("CJM_LISTEN_KIND", "unix")
        .env("SDK_TEST_MARKER", &marker)
        .env("CJM_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    inherit_as_fd3(&mut cmd, listener.as_raw_fd());
    let mut host = Proc(cmd.spawn().unwrap());
    drop(listener);
    let mut line = String::new();
    BufReader::new(host.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let worker: u32 = line.trim().parse().expect("the worker's pid");
    // Whatever happens below, do not leave the worker behind.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: a plain kill of a pid this test started (through the shell).
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
    let _guard = KillOnDrop(worker);

    let addr = Addr::Unix(path);
    assert_eq!(get(&addr, "/health", None).json()["pid"], worker);
    let child = request(
        &addr,
        "POST",
        "/execute",
        None,
        r#"{"args": ["spawn_child"]}"#,
    )
    .json();
    let child = child.as_u64().expect("child pid") as u32;
    let _child_guard = KillOnDrop(child);
    assert!(running(child));

    // The host dies without a word.
    host.0.kill().unwrap();
    host.0.wait().unwrap();
    assert!(
        wait_exit_of(worker, Duration::from_secs(20)),
        "the worker outlived its host"
    );
    assert_eq!(marker_text(&marker), "cleanup\n");
    assert!(wait_exit_of(child, Duration::from_secs(20)) || !running(child));
    assert!(!running(child), "the worker's child outlived it");
}
