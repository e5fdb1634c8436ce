//! The `cjm` command against real workers: exit codes, output and persisted configuration.

mod common;

use std::process::{Command, Output};

use common::Scratch;
use serde_json::{json, Value};

fn cjm(s: &Scratch, args: &[&str]) -> Output {
    Command::new(common::cjm_bin())
        .arg("--search-path")
        .arg(s.manifests())
        .arg("--data-dir")
        .arg(s.data())
        .args(args)
        .output()
        .expect("run cjm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch() -> Scratch {
    let s = Scratch::new();
    s.worker_manifest(
        "t",
        json!({"config_schema": {"type": "object", "additionalProperties": false, "properties": {
            "greeting": {"type": "string", "default": "hello"},
            "level": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1}}}}),
    );
    s.write("bad.json", r#"{"name": "bad name", "command": "x"}"#);
    s
}

#[test]
fn list_shows_plugins_and_invalid_manifests() {
    let s = scratch();
    let out = cjm(&s, &["list", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plugins"][0]["name"], "t");
    assert_eq!(v["plugins"][0]["execution_mode"], "subprocess");
    assert_eq!(v["invalid"][0]["problems"][0]["field"], "name");
    let plain = cjm(&s, &["list"]);
    assert!(text(&plain.stdout).contains("bad.json: name: \"bad name\" is not a safe identifier"));
}

#[test]
fn validate_exits_1_with_one_line_per_problem() {
    let s = scratch();
    let out = cjm(&s, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].ends_with("bad.json: name: \"bad name\" is not a safe identifier: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"));
    let good = cjm(
        &s,
        &[
            "validate",
            &s.manifests().join("t.json").display().to_string(),
        ],
    );
    assert_eq!(good.status.code(), Some(0));
    let missing = cjm(&s, &["validate", "/no/such/file.json"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stdout).contains("/no/such/file.json: cannot read the file"));
}

#[test]
fn call_stream_and_exit_codes_per_category() {
    let s = scratch();
    let out = cjm(
        &s,
        &[
            "call",
            "t",
            "--args",
            r#"["greet"]"#,
            "--kwargs",
            r#"{"name":"Ada"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!("hello Ada")
    );

    let out = cjm(&s, &["stream", "t", "--kwargs", r#"{"n":3}"#]);
    assert!(out.status.success());
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]
    );

    let failing = cjm(&s, &["stream", "t", "--kwargs", r#"{"n":3,"fail_at":1}"#]);
    assert_eq!(failing.status.code(), Some(13), "resource");
    assert_eq!(text(&failing.stdout).lines().count(), 1);
    assert!(text(&failing.stderr).contains("resource error: out of memory"));

    let user = cjm(&s, &["call", "t", "--args", r#"["fail"]"#]);
    assert_eq!(user.status.code(), Some(10));
    assert!(text(&user.stderr).contains("user_input error: you asked for a failure"));
    let timeout = cjm(
        &s,
        &["call", "t", "--args", r#"["sleep"]"#, "--timeout", "0.2"],
    );
    assert_eq!(timeout.status.code(), Some(14));
    let config = cjm(&s, &["call", "t", "--config", r#"{"level": 0}"#]);
    assert_eq!(config.status.code(), Some(11));
    assert!(text(&config.stderr).contains("field level"));
    let unknown = cjm(&s, &["call", "nope"]);
    assert_eq!(unknown.status.code(), Some(16));
    let bad_json = cjm(&s, &["call", "t", "--kwargs", "[1]"]);
    assert_eq!(bad_json.status.code(), Some(2));
    assert!(text(&bad_json.stderr).contains("--kwargs: expected a JSON object"));
    let bad_flag = cjm(&s, &["call"]);
    assert_eq!(bad_flag.status.code(), Some(2));
}

#[test]
fn config_is_persisted_validated_and_used_by_call() {
    let s = scratch();
    let bad = cjm(&s, &["config", "t", "--set", r#"{"level": 99}"#]);
    assert_eq!(bad.status.code(), Some(11));
    assert!(text(&bad.stderr).contains("field level"));
    let ok = cjm(
        &s,
        &["config", "t", "--set", r#"{"greeting": "yo", "level": 2}"#],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let file = s.data().join("configs").join("test.t.json");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved, json!({"greeting": "yo", "level": 2}));
    let unset = cjm(&s, &["config", "t", "--unset", "level"]);
    assert!(unset.status.success());
    let shown = cjm(&s, &["config", "t"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&shown.stdout).unwrap(),
        json!({"greeting": "yo"})
    );
    let out = cjm(
        &s,
        &[
            "call",
            "t",
            "--args",
            r#"["greet"]"#,
            "--kwargs",
            r#"{"name":"Bo"}"#,
        ],
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!("yo Bo")
    );
    // Without --live: the saved configuration over the defaults, and no worker started.
    let info = cjm(&s, &["info", "t", "--json"]);
    assert!(info.status.success());
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["config"], json!({"greeting": "yo", "level": 1}));
    assert_eq!(info["config_saved"], true);
    assert!(info.get("stats").is_none());
    let info = cjm(&s, &["info", "t", "--json", "--live"]);
    assert!(info.status.success());
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["config"], json!({"greeting": "yo", "level": 1}));
    assert_eq!(info["config_saved"], true);
    assert!(info["stats"]["worker"]["memory_rss_mb"].as_f64().unwrap() > 0.0);
    let logs = cjm(&s, &["logs", "t", "--lines", "100"]);
    assert!(text(&logs.stdout).contains("--- Starting t"));
}

/// Issue 13 point 12: huge, NaN or negative timeouts are usage errors naming the flag (1e300 and
/// 1e19 used to panic with exit 101), and a call stopped by the user's own `--timeout` does not
/// suggest retrying it.
#[test]
fn timeout_flag_is_checked_and_own_timeout_is_not_retriable() {
    let s = scratch();
    for bad in ["1e300", "1e19", "NaN", "-1", "0", "inf", "4e9"] {
        let out = cjm(&s, &["call", "t", &format!("--timeout={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.starts_with("cjm: --timeout: "), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{bad}: {err}");
    }
    let out = cjm(
        &s,
        &["call", "t", "--args", r#"["sleep"]"#, "--timeout", "0.2"],
    );
    assert_eq!(out.status.code(), Some(14));
    let err = text(&out.stderr);
    assert!(!err.contains("retrying may succeed"), "{err}");
    assert!(err.contains("--timeout given passed"), "{err}");
}

/// Issue 13 point 4: text from manifests, file names and logs reaches the terminal with its
/// control characters escaped, never raw.
#[test]
fn terminal_escapes_in_plugin_text_are_printed_escaped() {
    const EVIL: &str = "\x1b]0;pwned\x07\x1b[2J";
    let s = scratch();
    s.worker_manifest("t", json!({"description": format!("desc {EVIL}")}));
    s.write(
        &format!("z{EVIL}.json"),
        r#"{"name": "bad name", "command": "x"}"#,
    );
    let raw = |o: &Output| {
        let all = [o.stdout.as_slice(), o.stderr.as_slice()].concat();
        all.contains(&0x1b) || all.contains(&0x07)
    };

    let list = cjm(&s, &["list"]);
    assert!(list.status.success());
    assert!(!raw(&list), "{:?}", text(&list.stdout));
    assert!(text(&list.stdout).contains("z\\x1b]0;pwned\\x07\\x1b[2J.json"));

    let list_json = cjm(&s, &["list", "--json"]);
    assert!(!raw(&list_json));
    let v: Value = serde_json::from_slice(&list_json.stdout).unwrap();
    assert_eq!(v["plugins"][0]["description"], format!("desc {EVIL}"));

    let validate = cjm(&s, &["validate"]);
    assert!(!raw(&validate), "{:?}", text(&validate.stdout));

    let info = cjm(&s, &["info", "t"]);
    assert!(info.status.success(), "{}", text(&info.stderr));
    assert!(!raw(&info), "{:?}", text(&info.stdout));
    assert!(text(&info.stdout).contains("desc \\x1b]0;pwned\\x07\\x1b[2J"));

    let log = s.data().join("logs").join("t.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, format!("line {EVIL}\n")).unwrap();
    let logs = cjm(&s, &["logs", "t"]);
    assert!(logs.status.success());
    assert!(!raw(&logs), "{:?}", text(&logs.stdout));
    assert!(text(&logs.stdout).contains("line \\x1b]0;pwned"));
}

/// Issue 13 point 13 (part): a saved configuration that fails validation is reported with its
/// file, the field and the way out, and the way out works.
#[test]
fn invalid_saved_config_names_its_file_field_and_fix() {
    let s = scratch();
    let file = s.data().join("configs").join("test.t.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, r#"{"greeting": "hi", "level": 99}"#).unwrap();
    let out = cjm(&s, &["call", "t", "--args", r#"["greet"]"#]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("field level"), "{err}");
    assert!(err.contains("`cjm config t --unset level`"), "{err}");
    let fix = cjm(&s, &["config", "t", "--unset", "level"]);
    assert!(fix.status.success(), "{}", text(&fix.stderr));
    let out = cjm(
        &s,
        &[
            "call",
            "t",
            "--args",
            r#"["greet"]"#,
            "--kwargs",
            r#"{"name":"Al"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!("hi Al")
    );
}

/// Issue 13 point 10: a call only reads configurations, so it creates no `configs/` directory
/// (which made every call fail in a read-only data dir).
#[test]
fn a_call_creates_no_config_directory() {
    let s = scratch();
    std::fs::create_dir_all(s.data()).unwrap();
    let out = cjm(&s, &["call", "t", "--args", r#"["greet"]"#]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = cjm(&s, &["config", "t"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert!(
        !s.data().join("configs").exists(),
        "a read-only command created configs/"
    );
    let saved = cjm(&s, &["config", "t", "--set", r#"{"level": 2}"#]);
    assert!(saved.status.success(), "{}", text(&saved.stderr));
    assert!(s.data().join("configs").join("test.t.json").is_file());
}

/// `cjm args`, killed (and the test failed) if it runs past a minute: for commands that used to
/// hang.
fn cjm_bounded(s: &Scratch, args: &[String]) -> Output {
    let child = Command::new(common::cjm_bin())
        .arg("--search-path")
        .arg(s.manifests())
        .arg("--data-dir")
        .arg(s.data())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: `pid` is our own child, not yet reaped (its waiter has not returned).
            cjm_sys::signal::kill(pid, cjm_sys::signal::SIGKILL);
            panic!("cjm {args:?} hung");
        }
    }
}

/// Issue 13 point 8: `cjm validate` used to hang on a FIFO named `x.json` and take gigabytes on
/// a link to `/dev/zero`; as arguments and in a search path they are now errors naming the path.
#[test]
fn validate_refuses_fifos_and_devices_by_name() {
    let s = scratch();
    let fifo = s.manifests().join("x.json");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let zero = s.manifests().join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let run = |args: Vec<String>| cjm_bounded(&s, &args);
    for args in [
        vec!["validate".to_owned()],
        vec!["validate".to_owned(), common::path_str(&fifo)],
        vec!["validate".to_owned(), common::path_str(&zero)],
    ] {
        let out = run(args.clone());
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        if args.len() == 1 || args[1].ends_with("x.json") {
            assert!(
                stdout.contains(&format!(
                    "{}: cannot read the file: it is not a regular file",
                    fifo.display()
                )),
                "{args:?}: {stdout}"
            );
        }
        if args.len() == 1 || args[1].ends_with("zero.json") {
            assert!(
                stdout.contains(&format!(
                    "{}: cannot read the file: it is not a regular file",
                    zero.display()
                )),
                "{args:?}: {stdout}"
            );
        }
    }
    let list = cjm(&s, &["list"]);
    assert!(list.status.success());
    assert!(text(&list.stdout).contains(&format!("{}: cannot read the file", fifo.display())));
}

/// The status code of `GET path` sent to `addr` with the given headers.
fn http_status(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Issue 13 point 1: `cjm ui` on a non-loopback address refuses to start without a token, and
/// with one keeps the Host guard and asks every request for the token.
#[test]
fn ui_off_loopback_needs_a_token_and_keeps_the_host_guard() {
    use std::io::BufRead;
    let s = scratch();
    let refused = cjm_bounded(&s, &["ui".into(), "--addr".into(), "0.0.0.0:0".into()]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("--token-file"),
        "{}",
        text(&refused.stderr)
    );

    let token = "t0ken-for-the-test-0123456789";
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(common::cjm_bin())
        .arg("--search-path")
        .arg(s.manifests())
        .arg("--data-dir")
        .arg(s.data())
        .args([
            "-v",
            "ui",
            "--addr",
            &format!("0.0.0.0:{port}"),
            "--token-file",
        ])
        .arg(&token_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Ready once it logs that it listens (the socket is bound by then).
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("settings page listening")));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let results = ready.then(|| {
        let host = format!("127.0.0.1:{port}");
        let bearer = format!("Bearer {token}");
        [
            http_status(
                addr,
                "/",
                &[("Host", "evil.com"), ("Authorization", &bearer)],
            ),
            http_status(addr, "/", &[("Host", &host)]),
            http_status(addr, "/", &[("Host", &host), ("Authorization", &bearer)]),
            http_status(addr, &format!("/?token={token}"), &[("Host", &host)]),
        ]
    });
    // SAFETY: our own child, not yet waited for.
    cjm_sys::signal::kill(child.id(), libc::SIGINT);
    let status = child.wait().unwrap();
    assert!(ready, "cjm ui never said it was listening");
    assert_eq!(results, Some([403, 401, 200, 303]));
    assert!(status.success(), "{status:?}");
}

/// Issue 13 point 10 with a truly read-only data dir (0555, no `configs/`): as root, permissions
/// are ignored, so the command runs as `nobody` through `setpriv` where that exists.
#[test]
fn a_call_works_in_a_read_only_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let root = cjm_sys::proc::uid() == 0;
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file());
    let Some(setpriv) = setpriv.filter(|_| root) else {
        eprintln!("skipped: needs root and setpriv to drop to an unprivileged user");
        return;
    };
    let s = scratch();
    std::fs::create_dir_all(s.data()).unwrap();
    for dir in [s.dir.path().to_path_buf(), s.manifests(), s.data()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    for f in std::fs::read_dir(s.manifests()).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o444))
            .unwrap();
    }
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::cjm_bin())
        .arg("--search-path")
        .arg(s.manifests())
        .arg("--data-dir")
        .arg(s.data())
        .args([
            "call",
            "t",
            "--args",
            r#"["greet"]"#,
            "--kwargs",
            r#"{"name":"Ro"}"#,
        ])
        .output()
        .unwrap();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!("hello Ro")
    );
    assert!(!s.data().join("configs").exists());
}

// ---- issue 14: polish, progress, completions, `cjm new` ------------------------------------

#[test]
fn list_has_a_header() {
    let s = scratch();
    let out = cjm(&s, &["list"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    for col in ["NAME", "VERSION", "CATEGORY", "MODE", "MANIFEST"] {
        assert!(first.contains(col), "{first:?}");
    }
    assert!(stdout.lines().nth(1).unwrap_or_default().starts_with("t "));
}

#[test]
fn info_prints_the_schema_indented() {
    let s = scratch();
    let out = cjm(&s, &["info", "t"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "schema:")
        .unwrap_or_else(|| panic!("no schema: line in {stdout}"));
    assert_eq!(lines[at + 1], "    {");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("      \"properties\": {")),
        "{stdout}"
    );
}

#[test]
fn a_misspelt_plugin_gets_a_suggestion() {
    let s = scratch();
    s.worker_manifest("transcriber", json!({}));
    let out = cjm(&s, &["call", "transcribr", "--args", r#"["pid"]"#]);
    assert_eq!(out.status.code(), Some(16));
    let err = text(&out.stderr);
    assert!(err.contains("did you mean `transcriber`?"), "{err}");
    let none = cjm(&s, &["info", "zzzzzzzz"]);
    assert!(!text(&none.stderr).contains("did you mean"));
}

#[test]
fn ui_on_a_busy_port_fails_before_printing_its_url() {
    let s = scratch();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = cjm_bounded(&s, &["ui".into(), "--addr".into(), addr.clone()]);
    assert_eq!(out.status.code(), Some(18));
    let err = text(&out.stderr);
    assert!(!err.contains("http://"), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    drop(taken);
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    let s = scratch();
    for shell in ["bash", "zsh", "fish"] {
        let out = cjm(&s, &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for sub in ["list", "call", "stream", "config", "completions", "new"] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
    }
    assert_eq!(cjm(&s, &["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn progress_is_silent_when_stderr_is_not_a_terminal() {
    let s = scratch();
    // `sleep` reports 0.25 "sleeping" and then waits, so a bar would have had time to draw.
    let out = cjm(
        &s,
        &[
            "call",
            "t",
            "--args",
            r#"["sleep"]"#,
            "--kwargs",
            r#"{"ms": 400}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"slept_ms": 400})
    );
    let err = text(&out.stderr);
    assert!(err.is_empty(), "stderr not empty when piped: {err:?}");
}

#[test]
fn new_scaffolds_a_worker_that_builds_and_answers() {
    let s = scratch();
    let dir = s.data().join("w");
    let out = cjm(&s, &["new", "greeter", "--dir", &dir.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join(".cjm/manifests/greeter.json").is_file());
    // Build it offline into the workspace's target dir (shared, so only the crate compiles).
    let target = common::cjm_bin()
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .to_path_buf();
    let build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build.stderr));
    // The manifest names target/debug/greeter relative to the crate, as a plain build puts it.
    std::os::unix::fs::symlink(&target, dir.join("target")).unwrap();
    let run = |args: &[&str]| {
        Command::new(common::cjm_bin())
            .current_dir(&dir)
            .arg("--data-dir")
            .arg(s.data())
            .args(args)
            .output()
            .unwrap()
    };
    let list = run(&["list"]);
    assert!(
        text(&list.stdout).contains("greeter"),
        "{}",
        text(&list.stdout)
    );
    let call = run(&["call", "greeter", "--kwargs", r#"{"name": "Ada"}"#]);
    assert!(call.status.success(), "{}", text(&call.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&call.stdout).unwrap(),
        json!({"greeting": "Hello, Ada!"})
    );
    let again = cjm(&s, &["new", "greeter", "--dir", &dir.display().to_string()]);
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn config_errors_say_each_problem_once() {
    let s = scratch();
    let out = cjm(&s, &["config", "t", "--set", r#"{"level": "x"}"#]);
    assert_eq!(out.status.code(), Some(11));
    let err = text(&out.stderr);
    assert_eq!(err.matches("is not of type").count(), 1, "{err}");
    assert_eq!(err.matches("config error").count(), 1, "{err}");
    assert!(
        err.contains("field level: \"x\" is not of type \"integer\""),
        "{err}"
    );
    // A saved file that no longer validates: named once, with its fix, each field once.
    std::fs::create_dir_all(s.data().join("configs")).unwrap();
    std::fs::write(s.data().join("configs/demo.t.json"), r#"{"level": 50}"#).unwrap();
    let list = cjm(&s, &["list", "--json"]);
    let category = serde_json::from_slice::<Value>(&list.stdout).unwrap()["plugins"][0]["category"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::rename(
        s.data().join("configs/demo.t.json"),
        s.data().join(format!("configs/{category}.t.json")),
    )
    .unwrap();
    let call = cjm(&s, &["call", "t", "--args", r#"["pid"]"#]);
    assert_eq!(call.status.code(), Some(11));
    let err = text(&call.stderr);
    assert_eq!(err.matches("greater than the maximum").count(), 1, "{err}");
    assert!(err.contains("--unset level"), "{err}");
}

#[test]
fn worker_logs_have_rfc3339_headers_and_no_colour_codes() {
    let s = scratch();
    let out = cjm(&s, &["-vv", "call", "t", "--args", r#"["pid"]"#]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(s.data().join("logs/t.log")).unwrap();
    assert!(
        !log.contains('\x1b'),
        "colour codes in the log file: {log:?}"
    );
    let header = log
        .lines()
        .find(|l| l.starts_with("--- Starting t at "))
        .unwrap_or_else(|| panic!("no header in {log}"));
    // e.g. `--- Starting t at 2026-12-04T23:24:29Z ---`
    let stamp = header
        .trim_start_matches("--- Starting t at ")
        .trim_end_matches(" ---");
    assert_eq!(stamp.len(), 20, "{header}");
    let b = stamp.as_bytes();
    assert!(
        b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[19] == b'Z',
        "{header}"
    );
    assert!(
        !out.stderr.contains(&0x1b),
        "colour codes on a piped stderr"
    );
}
