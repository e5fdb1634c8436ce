//! `cjm serve` with real workers: the CLI reuses the service's loaded worker, the JSON API,
//! `/metrics`, the guards, 200 concurrent clients, and a SIGTERM that leaves nothing behind.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cjm_tests::http::{send, Addr, Req};
use cjm_tests::process::{sigterm, wait_child, wait_exit_of};
use common::Scratch;
use serde_json::{json, Value};

fn base(s: &Scratch) -> Command {
    let mut c = Command::new(common::cjm_bin());
    c.arg("--search-path")
        .arg(s.manifests())
        .arg("--data-dir")
        .arg(s.data())
        .env_remove("CJM_HOST")
        .env_remove("CJM_TOKEN_FILE");
    c
}

fn cjm(s: &Scratch, args: &[&str]) -> Output {
    base(s).args(args).output().expect("run cjm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `cjm serve`; SIGKILLed (with its workers swept by the test) if a test fails
/// before it stops it.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cjm serve` and waits for its "serving … on http://ADDR/" line.
fn serve(s: &Scratch, extra: &[&str]) -> Served {
    let mut child = base(s)
        .args(["serve", "--addr"])
        .args(if extra.is_empty() {
            &["127.0.0.1:0"][..]
        } else {
            extra
        })
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start cjm serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" on http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("cjm serve printed its address");
    Served {
        child,
        addr: addr.parse().expect("an address"),
    }
}

fn call_json(s: &Scratch, args: &[&str]) -> Value {
    let out = cjm(s, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn metric(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok())?
    })
}

fn scratch() -> Scratch {
    let s = Scratch::new();
    s.worker_manifest(
        "t",
        json!({"config_schema": {"type": "object", "additionalProperties": false, "properties": {
            "greeting": {"type": "string", "default": "hello"},
            "level": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1}}}}),
    );
    s
}

#[test]
fn the_cli_reuses_the_services_worker_and_sigterm_unloads_it() {
    let s = scratch();
    let mut served = serve(&s, &[]);
    let addr = Addr::Tcp(served.addr);
    let socket = s.data().join("run/serve.sock");
    assert!(socket.exists(), "the local socket is there");

    // Through the local socket (found by itself), twice, then through --host: one worker.
    let pid = call_json(&s, &["call", "t", "--args", r#"["pid"]"#]);
    assert_eq!(call_json(&s, &["call", "t", "--args", r#"["pid"]"#]), pid);
    let host = format!("http://{}", served.addr);
    assert_eq!(
        call_json(&s, &["--host", &host, "call", "t", "--args", r#"["pid"]"#]),
        pid
    );
    let pid = pid.as_u64().expect("a pid") as u32;
    let listed = send(&addr, None, &Req::get("/api/v1/plugins/t"))
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(listed["pid"], pid);
    assert_eq!(listed["loaded"], true);

    // Streams: every chunk, and an error line becomes the exit code, never data.
    let out = cjm(&s, &["stream", "t", "--kwargs", r#"{"n": 3}"#]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n");
    let out = cjm(
        &s,
        &["stream", "t", "--kwargs", r#"{"n": 3, "fail_at": 1}"#],
    );
    assert_eq!(out.status.code(), Some(13), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"i\":0}\n");
    assert!(text(&out.stderr).contains("out of memory (simulated)"));
    // A typed failure keeps its category's exit code.
    let out = cjm(&s, &["call", "t", "--args", r#"["nope"]"#]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out.stderr));
    // --config reloads the plugin with it (a new worker).
    let greet = call_json(
        &s,
        &[
            "call",
            "t",
            "--config",
            r#"{"greeting": "hey"}"#,
            "--args",
            r#"["greet"]"#,
            "--kwargs",
            r#"{"name": "Ada"}"#,
        ],
    );
    assert_eq!(greet, "hey Ada");

    // The configuration API validates, saves and applies.
    let put = |v: &Value| {
        send(
            &addr,
            None,
            &Req::new("PUT", "/api/v1/plugins/t/config").json(v),
        )
        .unwrap()
    };
    let bad = put(&json!({"config": {"level": 99}}));
    assert_eq!(bad.status, 422, "{}", bad.text());
    let bad = bad.json().unwrap();
    assert_eq!(bad["cjm_error"]["category"], "config");
    assert_eq!(bad["cjm_error"]["details"]["fields"][0]["field"], "level");
    let ok = put(&json!({"config": {"greeting": "hi", "level": 2}}));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json().unwrap()["applied"], true);
    let saved = call_json(&s, &["config", "t"]);
    assert_eq!(saved["greeting"], "hi", "{saved}");
    let greet = call_json(
        &s,
        &[
            "call",
            "t",
            "--args",
            r#"["greet"]"#,
            "--kwargs",
            r#"{"name": "Bo"}"#,
        ],
    );
    assert_eq!(greet, "hi Bo");

    // Bad requests are named, unknown plugins are 404, foreign Hosts are refused.
    let garbled = send(
        &addr,
        None,
        &Req::post("/api/v1/plugins/t/call").raw("application/json", b"{\"args\": 5}".to_vec()),
    )
    .unwrap();
    assert_eq!(garbled.status, 400);
    assert!(garbled.text().contains("`args`"), "{}", garbled.text());
    let unknown = send(
        &addr,
        None,
        &Req::post("/api/v1/plugins/zz/call").json(&json!({})),
    )
    .unwrap();
    // A change without `Content-Type: application/json` could come from a cross-site form.
    let form = send(&addr, None, &Req::post("/api/v1/plugins/t/unload")).unwrap();
    assert_eq!(form.status, 415, "{}", form.text());
    assert!(served_pid_alive(&addr));
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert!(raw_status(served.addr, "evil.example").starts_with("HTTP/1.1 403"));
    assert!(raw_status(served.addr, "localhost").starts_with("HTTP/1.1 200"));

    // /metrics, parsed.
    let m = send(&addr, None, &Req::get("/metrics")).unwrap();
    assert_eq!(m.status, 200);
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    let calls = metric(&m, r#"cjm_calls_total{plugin="t"}"#).expect("calls counted");
    // pid ×3, two streams, one typed failure, greet ×2.
    assert_eq!(calls, 8.0, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"cjm_call_errors_total{plugin="t",category="user_input"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"cjm_call_errors_total{plugin="t",category="resource"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"cjm_call_duration_seconds_count{plugin="t"}"#),
        Some(calls)
    );
    assert_eq!(
        metric(&m, r#"cjm_plugin_state{plugin="t",state="ready"}"#),
        Some(1.0),
        "{m}"
    );
    assert!(metric(&m, r#"cjm_worker_rss_bytes{plugin="t"}"#).is_some_and(|b| b > 0.0));
    assert_eq!(metric(&m, "cjm_plugins_loaded"), Some(1.0));
    assert_eq!(send(&addr, None, &Req::get("/readyz")).unwrap().status, 200);

    // SIGTERM: the service stops, unloads the worker and removes its socket.
    let worker = send(&addr, None, &Req::get("/api/v1/plugins/t"))
        .unwrap()
        .ok_json()
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    sigterm(served.child.id()).unwrap();
    let status = wait_child(&mut served.child, Duration::from_secs(60))
        .unwrap()
        .expect("the service exited");
    assert!(status.success(), "{status:?}");
    assert!(
        wait_exit_of(worker, Duration::from_secs(10)),
        "the worker outlived the service"
    );
    assert!(!socket.exists(), "the socket was removed");
    // Without a service, the CLI works on its own again.
    assert_eq!(
        call_json(&s, &["call", "t", "--args", r#"["echo", 1]"#])["args"],
        json!([1])
    );
}

#[test]
fn off_loopback_the_service_needs_its_token() {
    let s = scratch();
    let out = cjm(&s, &["serve", "--addr", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("token"), "{}", text(&out.stderr));

    let token = "0123456789abcdef-token";
    let file = s.dir.path().join("token");
    std::fs::write(&file, token).unwrap();
    let served = serve(
        &s,
        &[
            "0.0.0.0:0",
            "--allow-host",
            "localhost",
            "--token-file",
            file.to_str().unwrap(),
        ],
    );
    let addr = Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], served.addr.port())));
    let no_token = send(&addr, None, &Req::get("/api/v1/plugins").header("X", "y")).unwrap();
    assert_eq!(no_token.status, 401);
    // Probes need no token.
    assert_eq!(
        send(&addr, None, &Req::get("/healthz")).unwrap().status,
        200
    );
    let listed = send(&addr, Some(token), &Req::get("/api/v1/plugins")).unwrap();
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json().unwrap()["plugins"][0]["name"], "t");
    // The CLI sends the token from $CJM_TOKEN_FILE.
    let host = format!("http://127.0.0.1:{}", served.addr.port());
    let out = base(&s)
        .env("CJM_HOST", &host)
        .args(["call", "t", "--args", r#"["echo", 2]"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(18), "no token: refused");
    let out = base(&s)
        .env("CJM_HOST", &host)
        .env("CJM_TOKEN_FILE", &file)
        .args(["call", "t", "--args", r#"["echo", 2]"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["args"],
        json!([2])
    );
    stop(served);
}

#[test]
fn two_hundred_concurrent_clients_get_their_own_answers() {
    let s = scratch();
    let served = serve(&s, &[]);
    let addr = Addr::Tcp(served.addr);
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let r = send(
                    &addr,
                    None,
                    &Req::post("/api/v1/plugins/t/call")
                        .json(&json!({"args": ["echo"], "kwargs": {"i": i}})),
                )
                .map_err(|e| format!("client {i}: {e}"))?;
                let v = r.ok_json()?;
                if v["value"]["kwargs"]["i"] != i {
                    return Err(format!("client {i} got {v}"));
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread").expect("answer");
    }
    let m = send(&addr, None, &Req::get("/metrics")).unwrap();
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert_eq!(
        metric(&m, r#"cjm_calls_total{plugin="t"}"#),
        Some(200.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"cjm_calls_in_flight{plugin="t"}"#),
        Some(0.0),
        "{m}"
    );
    stop(served);
}

/// True while plugin `t` is loaded in the service.
fn served_pid_alive(addr: &Addr) -> bool {
    let v = send(addr, None, &Req::get("/api/v1/plugins/t"))
        .unwrap()
        .ok_json()
        .unwrap();
    v["loaded"] == true
}

/// SIGTERM, and the service's exit.
fn stop(mut served: Served) {
    sigterm(served.child.id()).unwrap();
    let status = wait_child(&mut served.child, Duration::from_secs(60))
        .unwrap()
        .expect("the service exited");
    assert!(status.success(), "{status:?}");
}

/// The status line of `GET /api/v1/plugins` sent with `Host: host`.
fn raw_status(addr: SocketAddr, host: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "GET /api/v1/plugins HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_secret_set_while_serving_respawns_the_worker_that_uses_it() {
    let s = scratch();
    s.worker_manifest(
        "keyed",
        json!({"worker_env": [{"name": "API_KEY", "secret": true, "required": false}]}),
    );
    let served = serve(&s, &[]);
    let pid = call_json(&s, &["call", "keyed", "--args", r#"["pid"]"#]);
    let set = |value: &str| {
        let mut child = base(&s)
            .args(["secret", "set", "keyed", "API_KEY"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(value.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let said = set("first-value");
    assert!(said.contains("restarted keyed"), "{said}");
    let respawned = call_json(&s, &["call", "keyed", "--args", r#"["pid"]"#]);
    assert_ne!(respawned, pid, "a new worker with the secret");
    assert!(wait_exit_of(
        pid.as_u64().unwrap() as u32,
        Duration::from_secs(10)
    ));
    // The same value again changes nothing: the worker stays.
    let said = set("first-value");
    assert!(!said.contains("restarted"), "{said}");
    assert_eq!(
        call_json(&s, &["call", "keyed", "--args", r#"["pid"]"#]),
        respawned
    );
    // A plugin that does not use the secret is never restarted by it.
    let other = call_json(&s, &["call", "t", "--args", r#"["pid"]"#]);
    let out = base(&s)
        .args(["secret", "set", "t", "UNUSED"])
        .stdin(Stdio::piped())
        .output();
    assert!(out.is_ok());
    assert_eq!(call_json(&s, &["call", "t", "--args", r#"["pid"]"#]), other);
    stop(served);
}

#[test]
fn jobs_run_in_the_service_and_survive_its_restart() {
    let s = scratch();
    let served = serve(&s, &[]);
    let last_line = |out: &Output| -> String {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    // Submit prints the id on its last line; wait prints the result and exits 0.
    let id = last_line(&cjm(
        &s,
        &[
            "jobs",
            "submit",
            "t",
            "--args",
            r#"["sleep"]"#,
            "--kwargs",
            r#"{"ms": 50}"#,
        ],
    ));
    assert_eq!(id.len(), 20, "{id}");
    let out = cjm(&s, &["jobs", "wait", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"slept_ms": 50}));
    let shown = call_json(&s, &["jobs", "show", &id, "--json"]);
    assert_eq!(shown["state"], "succeeded");
    assert_eq!(shown["attempts"], 1);

    // A long job, cancelled: `wait` exits with the cancelled code (15); `watch` shows its
    // events up to the end.
    let long = last_line(&cjm(
        &s,
        &[
            "jobs",
            "submit",
            "t",
            "--args",
            r#"["sleep"]"#,
            "--kwargs",
            r#"{"ms": 60000}"#,
        ],
    ));
    let watch = base(&s)
        .args(["jobs", "watch", &long])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cancelled = call_json(&s, &["jobs", "cancel", &long, "--json"]);
    assert!(
        cancelled["state"] == "running" || cancelled["state"] == "cancelled",
        "{cancelled}"
    );
    let out = cjm(&s, &["jobs", "wait", &long]);
    assert_eq!(out.status.code(), Some(15), "{}", text(&out.stderr));
    let watched = watch.wait_with_output().unwrap();
    let lines: Vec<Value> = text(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // It starts with the job as it stands and ends with its end: a `cancelled` event, or, when
    // the watcher connected after the cancel, the snapshot of the cancelled job alone.
    assert_eq!(lines.first().unwrap()["type"], "snapshot");
    let last = lines.last().unwrap();
    assert!(
        last["type"] == "cancelled" || (lines.len() == 1 && last["job"]["state"] == "cancelled"),
        "{lines:?}"
    );

    // Errors are typed: an unknown job (16), an unknown plugin (16), a bad state filter (2).
    let out = cjm(&s, &["jobs", "show", "00000000000000000000"]);
    assert_eq!(out.status.code(), Some(16), "{}", text(&out.stderr));
    let out = cjm(&s, &["jobs", "submit", "nope"]);
    assert_eq!(out.status.code(), Some(16), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nope"));
    let out = cjm(&s, &["jobs", "list", "--state", "done"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("done"), "{}", text(&out.stderr));

    // A job's own log lines.
    let talker = last_line(&cjm(
        &s,
        &[
            "jobs",
            "submit",
            "t",
            "--args",
            r#"["log"]"#,
            "--kwargs",
            r#"{"word": "chatty", "n": 2, "ms": 1}"#,
        ],
    ));
    assert!(cjm(&s, &["jobs", "wait", &talker]).status.success());
    let logged = (0..200)
        .map(|_| {
            let out = cjm(&s, &["jobs", "logs", &talker]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout)
        })
        .find(|t| t.lines().count() == 2)
        .expect("the job's two lines");
    assert!(
        logged.lines().all(|l| l.contains("said chatty")),
        "{logged}"
    );

    // The history outlives the service: stopped and started again, it lists every job.
    drop(served);
    let _again = serve(&s, &[]);
    let listed = call_json(&s, &["jobs", "list", "--json"]);
    let states: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_str().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![
            (talker.as_str(), "succeeded"),
            (long.as_str(), "cancelled"),
            (id.as_str(), "succeeded")
        ]
    );
}

#[test]
fn instances_run_in_the_service_with_their_own_configuration() {
    let s = scratch();
    let _served = serve(&s, &[]);
    let out = cjm(
        &s,
        &[
            "instance",
            "add",
            "t",
            "--id",
            "loud",
            "--config",
            r#"{"greeting": "HEY"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "loud");
    let greet = ["--args", r#"["greet"]"#, "--kwargs", r#"{"name": "Ada"}"#];
    let mut args = vec!["call", "loud"];
    args.extend(greet);
    assert_eq!(call_json(&s, &args), json!("HEY Ada"));
    let mut args = vec!["call", "t"];
    args.extend(greet);
    assert_eq!(call_json(&s, &args), json!("hello Ada"));
    let listed = call_json(&s, &["instance", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "loud");
    assert_eq!(listed[0]["instance_of"], "t");
    assert_ne!(
        listed[0]["pid"],
        call_json(&s, &["call", "t", "--args", r#"["pid"]"#])
    );
    // A job on the instance.
    let out = cjm(&s, &["jobs", "submit", "loud", "--args", r#"["greet"]"#]);
    let id = text(&out.stdout).trim().to_owned();
    let out = cjm(&s, &["jobs", "wait", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!("HEY ?")
    );
    // A bad id is refused (user_input, exit 10); removing stops it.
    let out = cjm(&s, &["instance", "add", "t", "--id", "no.dots"]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out.stderr));
    let out = cjm(&s, &["instance", "remove", "loud"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(call_json(&s, &["instance", "list", "--json"]), json!([]));
}

#[test]
fn a_composition_runs_in_the_service() {
    let s = scratch();
    let _served = serve(&s, &[]);
    let file = s.dir.path().join("comp.json");
    let compose = |comp: Value| {
        std::fs::write(&file, comp.to_string()).unwrap();
        cjm(&s, &["jobs", "compose", file.to_str().unwrap()])
    };
    let out = compose(json!({"nodes": {
        "who":   {"target": "t", "call": {"args": ["pid"]}},
        "greet": {"target": "t", "call": {"args": ["echo"], "kwargs": {"pid": {"$ref": "who"}}}}
    }}));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = v["who"]["result"].clone();
    assert!(pid.is_u64(), "{v}");
    assert_eq!(
        v["greet"]["result"],
        json!({"args": [], "kwargs": {"pid": pid}})
    );
    // A node that fails: the others after it are not run, and the exit code is its error's.
    let out = compose(json!({"nodes": {
        "bad":  {"target": "t", "call": {"args": ["fail"]}},
        "next": {"target": "t", "call": {"args": ["echo", {"$ref": "bad"}]}}
    }}));
    assert_eq!(out.status.code(), Some(10), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["next"]["state"], "cancelled", "{v}");
    // A cycle is refused before anything runs (user_input, exit 10), naming it.
    let out = compose(json!({"nodes": {
        "a": {"target": "t", "call": {"args": [{"$ref": "b"}]}},
        "b": {"target": "t", "call": {"args": [{"$ref": "a"}]}}
    }}));
    assert_eq!(out.status.code(), Some(10), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cycle through a, b"),
        "{}",
        text(&out.stderr)
    );
}
