//! The SDK's worker as a real process: socket inheritance, `--listen`, the missing-socket
//! message, SIGTERM's graceful shutdown with cleanup, and the host's death ending the worker.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cjm_tests::http::{send, Addr, Req, Resp};
use cjm_tests::process::{
    hand_over_listener, running, sigterm, wait_exit_of, worker_command, ChildGuard, KillOnDrop,
};
use cjm_tests::scratch_dir;
use serde_json::{json, Value};
use tempfile::TempDir;

const WORKER: &str = env!("CARGO_BIN_EXE_sdk-test-worker");

/// `GET path`, answered.
fn get(addr: &Addr, path: &str, token: Option<&str>) -> Resp {
    send(addr, token, &Req::get(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `POST /execute` with `body`, answered.
fn execute(addr: &Addr, token: Option<&str>, body: Value) -> Resp {
    send(addr, token, &Req::post("/execute").json(&body))
        .unwrap_or_else(|e| panic!("POST /execute: {e}"))
}

/// The JSON body, or a failed test.
fn json_of(r: &Resp) -> Value {
    r.json().unwrap_or_else(|e| panic!("{e}"))
}

/// A worker started as the host starts it: listening socket handed over, token, env.
fn spawn_inherited(listener: &impl AsRawFd, kind: &str, env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = worker_command(WORKER, listener, kind);
    cmd.env("CJM_LOG", "warn").stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().expect("spawn the worker"))
}

/// Waits for an in-flight call to report progress `message` (a readiness signal: the call is
/// running inside the worker).
fn until_progress(addr: &Addr, token: Option<&str>, message: &str) {
    for _ in 0..10_000 {
        if json_of(&get(addr, "/progress", token))["message"] == message {
            return;
        }
        std::thread::yield_now();
    }
    panic!("the call never reported {message:?}");
}

/// A worker on an inherited Unix socket in a scratch directory, told to write its marker file
/// there (`SDK_TEST_MARKER`).
struct UnixWorker {
    proc: ChildGuard,
    addr: Addr,
    marker: PathBuf,
    /// What `/proc/*/fd/*` shows for the listening socket (`socket:[inode]`).
    socket_link: PathBuf,
    // Last: removed after the process is gone.
    _dir: TempDir,
}

fn unix_worker(env: &[(&str, &str)]) -> UnixWorker {
    let dir = scratch_dir("sdk-process").unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let marker = dir.path().join("marker");
    let mut env = env.to_vec();
    env.push(("SDK_TEST_MARKER", marker.to_str().unwrap()));
    let socket_link =
        std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
    let proc = spawn_inherited(&listener, "unix", &env);
    // The worker has its own copy; the socket already accepts, so there is nothing to wait for.
    drop(listener);
    UnixWorker {
        proc,
        addr: Addr::Unix(path),
        marker,
        socket_link,
        _dir: dir,
    }
}

fn marker_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn an_inherited_unix_socket_with_auth_and_a_concurrency_cap() {
    let mut uw = unix_worker(&[("CJM_AUTH_TOKEN", "t0ken"), ("CJM_MAX_CONCURRENCY", "1")]);
    let (w, addr, marker) = (&mut uw.proc, uw.addr.clone(), uw.marker.clone());
    let a = get(&addr, "/health", Some("t0ken"));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-cjm-protocol"), Some("1"));
    let h = json_of(&a);
    assert_eq!(h["pid"], w.id());
    assert_eq!(h["name"], "sdk-test-worker");
    assert_eq!(h["max_concurrency"], 1, "min(plugin's 4, host's 1)");
    assert!(h["features"].as_array().unwrap().contains(&json!("auth")));
    assert_eq!(get(&addr, "/health", None).status, 401);
    assert_eq!(get(&addr, "/health", Some("nope")).status, 401);
    let a = execute(
        &addr,
        Some("t0ken"),
        json!({"args": ["echo"], "kwargs": {"k": "v"}}),
    );
    assert_eq!(json_of(&a), json!({"k": "v"}));
    // Programs the plugin starts inherit neither the token nor the listening socket.
    let a = execute(&addr, Some("t0ken"), json!({"args": ["spawn_child"]}));
    let child = json_of(&a).as_u64().expect("child pid") as u32;
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("CJM_AUTH_TOKEN"), "{environ}");
    assert!(!environ.contains("CJM_LISTEN_FD"), "{environ}");
    // Whatever descriptors the child has (its environment may open some), none is the socket.
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{child}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !fds.contains(&uw.socket_link),
        "{fds:?} holds {:?}",
        uw.socket_link
    );

    sigterm(w.id()).expect("SIGTERM");
    let status = w.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(marker_text(&marker), "cleanup\n");
    // The worker ended its child on the way out.
    assert!(!running(child), "the plugin's child outlived the worker");
}

#[test]
fn an_inherited_tcp_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Addr::Tcp(listener.local_addr().unwrap());
    let mut w = spawn_inherited(&listener, "tcp", &[]);
    drop(listener);
    let h = json_of(&get(&addr, "/health", None));
    assert_eq!(h["pid"], w.id());
    assert!(!h["features"].as_array().unwrap().contains(&json!("auth")));
    sigterm(w.id()).expect("SIGTERM");
    assert_eq!(w.wait().unwrap().code(), Some(0));
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
    let dir = scratch_dir("sdk-process").unwrap();
    let path = dir.path().join("hand.sock");
    let mut w = ChildGuard(
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
    let mut err = BufReader::new(w.stderr.take().unwrap());
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
    sigterm(w.id()).expect("SIGTERM");
    assert_eq!(w.wait().unwrap().code(), Some(0));
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn sigterm_lets_a_running_call_finish_then_cleans_up() {
    let mut uw = unix_worker(&[("SDK_TEST_GRACE_MS", "60000")]);
    let (w, addr, marker) = (&mut uw.proc, uw.addr.clone(), uw.marker.clone());
    let a2 = addr.clone();
    let call = std::thread::spawn(move || {
        execute(
            &a2,
            None,
            json!({"args": ["sleep_ms"], "kwargs": {"ms": 300}}),
        )
    });
    until_progress(&addr, None, "sleeping");
    sigterm(w.id()).expect("SIGTERM");
    let a = call.join().unwrap();
    assert_eq!((a.status, json_of(&a)), (200, json!({"slept_ms": 300})));
    assert_eq!(w.wait().unwrap().code(), Some(0));
    assert_eq!(marker_text(&marker), "cleanup\n");
}

#[test]
fn sigterm_cancels_calls_still_running_after_the_grace_period() {
    let mut uw = unix_worker(&[("SDK_TEST_GRACE_MS", "100")]);
    let (w, addr, marker) = (&mut uw.proc, uw.addr.clone(), uw.marker.clone());
    let a2 = addr.clone();
    let call = std::thread::spawn(move || execute(&a2, None, json!({"args": ["wait_cancel"]})));
    until_progress(&addr, None, "halfway");
    sigterm(w.id()).expect("SIGTERM");
    let a = call.join().unwrap();
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(json_of(&a)["cjm_error"]["category"], "cancelled");
    assert_eq!(w.wait().unwrap().code(), Some(0));
    assert_eq!(marker_text(&marker), "cleanup\n");
}

#[test]
fn the_death_of_the_host_ends_the_worker_and_its_children() {
    let dir = scratch_dir("sdk-process").unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let marker = dir.path().join("marker");
    // A stand-in host: a shell that starts the worker (its child) with CJM_HOST_PID set to
    // itself, prints the worker's pid, then waits on its stdin.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"CJM_HOST_PID=$$ "$0" & echo $!; exec cat"#)
        .arg(WORKER)
        .env("SDK_TEST_MARKER", &marker)
        .env("CJM_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    hand_over_listener(&mut cmd, &listener, "unix");
    let mut host = ChildGuard(cmd.spawn().unwrap());
    drop(listener);
    let mut line = String::new();
    BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let worker: u32 = line.trim().parse().expect("the worker's pid");
    // Whatever happens below, do not leave the worker behind.
    let _guard = KillOnDrop(worker);

    let addr = Addr::Unix(path);
    assert_eq!(json_of(&get(&addr, "/health", None))["pid"], worker);
    let child = json_of(&execute(&addr, None, json!({"args": ["spawn_child"]})));
    let child = child.as_u64().expect("child pid") as u32;
    let _child_guard = KillOnDrop(child);
    assert!(running(child));

    // The host dies without a word.
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(
        wait_exit_of(worker, Duration::from_secs(20)),
        "the worker outlived its host"
    );
    assert_eq!(marker_text(&marker), "cleanup\n");
    assert!(wait_exit_of(child, Duration::from_secs(20)) || !running(child));
    assert!(!running(child), "the worker's child outlived it");
}

/// `--describe` prints the description and exits 0 without binding a socket, even when
/// `--listen` is given too, and without the host's environment.
#[test]
fn describe_prints_json_and_binds_nothing() {
    let dir = scratch_dir("sdk-describe").unwrap();
    let path = dir.path().join("never.sock");
    let out = Command::new(WORKER)
        .arg("--describe")
        .arg("--listen")
        .arg(format!("unix:{}", path.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let d = cjm_core::describe::WorkerDescription::parse(&out.stdout).unwrap();
    assert_eq!(d.input, cjm_core::describe::InputKind::Command);
    assert!(d.operation("sleep_ms").is_some(), "{:?}", d.operations);
    assert!(!path.exists(), "no socket was bound");
}

#[test]
fn a_calls_socket_variable_that_names_no_socket_is_ignored() {
    // Not a number; a number that is not an open descriptor; the standard input (no socket).
    for bad in ["nope", "999", "0"] {
        let mut uw = unix_worker(&[("CJM_CALLS_FD", bad)]);
        let h = json_of(&get(&uw.addr, "/health", None));
        assert!(
            !h["features"]
                .as_array()
                .unwrap()
                .contains(&json!("calls_socket")),
            "{bad}: {h}"
        );
        // Calls go on on the main socket, and the plugin's programs do not see the variable.
        let a = execute(&uw.addr, None, json!({"args": ["spawn_child"]}));
        let child = json_of(&a).as_u64().expect("child pid") as u32;
        let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
        assert!(
            !String::from_utf8_lossy(&environ).contains("CJM_CALLS_FD"),
            "{bad}"
        );
        sigterm(uw.proc.id()).expect("SIGTERM");
        assert_eq!(uw.proc.wait().unwrap().code(), Some(0), "{bad}");
    }
}
