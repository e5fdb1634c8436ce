//! The settings page in a real browser: headless Chromium driven by chromedriver over the W3C
//! WebDriver protocol, against `cjm_ui` serving real test workers on localhost.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`cargo xtask test` installs them); fails with
//! a clear message when they are missing. The window is 1280×800: choosing a plugin must show its
//! settings form without scrolling. Writes screenshots to the target directory:
//! `ui-e2e.png` (one screen: selector, details, settings), `ui-e2e-compare.png` (the comparison)
//! and `ui-e2e-overview.png` (the live overview of all plugins).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cjm_host::{Call, PluginManager};
use cjm_ui::AppState;
use common::Scratch;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn require_tools() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).is_file(),
            "{tool} is missing: the browser test needs Debian's `chromium` and `chromium-driver` \
             packages (`cargo xtask test` installs them; or `apt-get install chromium chromium-driver`)"
        );
    }
}

/// chromedriver in its own process group; dropping it kills the group (chromedriver and any
/// browser it started) and reaps chromedriver.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(profile: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready when /status says so.
        let end = Instant::now() + WAIT;
        loop {
            let ready = http("GET", &format!("{}/status", driver.url), None)
                .is_ok_and(|(_, v)| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(
                Instant::now() < end,
                "chromedriver did not become ready within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = self.child.id();
        cjm_sys::signal::kill_group(pgid, cjm_sys::signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cjm_sys::signal::kill_group(pgid, cjm_sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client for the WebDriver's JSON API on localhost: one request per
/// connection, `Connection: close`, body read to the end (chunked or not).
fn http(method: &str, url: &str, body: Option<&Value>) -> std::io::Result<(u16, Value)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n");
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    stream.write_all(req.as_bytes())?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    // Read until the body is complete: Content-Length bytes, the last chunk, or the end of the
    // connection (chromedriver keeps connections open, so EOF alone is not enough).
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let (head, mut body) = loop {
        let n = stream.read(&mut buf)?;
        raw.extend_from_slice(&buf[..n]);
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let body = &raw[split + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(len) => body.len() >= len,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => n == 0,
            };
            if done || n == 0 {
                let body = body[..length.unwrap_or(body.len()).min(body.len())].to_vec();
                break (head, body);
            }
        } else if n == 0 {
            return Err(bad("connection closed before the headers ended"));
        }
    };
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| bad("short chunk"))?);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        body = out;
    }
    let v = serde_json::from_slice(&body).map_err(|e| bad(&format!("bad JSON: {e}")))?;
    Ok((status, v))
}

/// A browser session; dropping it quits the browser.
struct Session {
    base: String,
}

impl Session {
    fn new(driver: &Driver, profile: &Path) -> Self {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.join("chromium").display()),
                ]
            }
        }}});
        let (_, v) = http("POST", &format!("{}/session", driver.url), Some(&caps))
            .unwrap_or_else(|e| panic!("POST /session: {e}"));
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Self {
            base: format!("{}/session/{id}", driver.url),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let body = (method == "POST").then(|| body.unwrap_or_else(|| json!({})));
        let (status, v) =
            http(method, &url, body.as_ref()).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if !(200..300).contains(&status) {
            return json!({"error": v["value"]});
        }
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.send("POST", "/url", Some(json!({"url": url})));
    }

    fn current_url(&self) -> String {
        self.send("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element matching `css` now, if any.
    fn find(&self, css: &str) -> Option<String> {
        let v = self.send(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().map(str::to_owned)
    }

    fn count(&self, css: &str) -> usize {
        let v = self.send(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array().map_or(0, Vec::len)
    }

    fn text_of(&self, el: &str) -> Option<String> {
        self.send("GET", &format!("/element/{el}/text"), None)
            .as_str()
            .map(str::to_owned)
    }

    fn prop_of(&self, el: &str, name: &str) -> Option<String> {
        self.send("GET", &format!("/element/{el}/property/{name}"), None)
            .as_str()
            .map(str::to_owned)
    }

    /// Waits until the element matching `css` exists and `pred` holds for its text; returns the
    /// text. Fails with what it saw last.
    fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(t) = self.find(css).and_then(|el| self.text_of(&el)) {
                if pred(&t) {
                    return t;
                }
                last = Some(t);
            }
            if Instant::now() > end {
                self.screenshot("ui-e2e-failure.png");
                panic!("waited {WAIT:?} for `{css}` {what}; last text: {last:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the input matching `css` has the value `want`.
    fn wait_value(&self, css: &str, want: &str) {
        let end = Instant::now() + WAIT;
        let mut last = None;
        loop {
            last = self
                .find(css)
                .and_then(|el| self.prop_of(&el, "value"))
                .or(last);
            if last.as_deref() == Some(want) {
                return;
            }
            if Instant::now() > end {
                panic!("waited {WAIT:?} for `{css}` to hold {want:?}; last: {last:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn el(&self, css: &str) -> String {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(el) = self.find(css) {
                return el;
            }
            assert!(Instant::now() < end, "waited {WAIT:?} for `{css}`");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn click(&self, css: &str) {
        let el = self.el(css);
        let v = self.send("POST", &format!("/element/{el}/click"), Some(json!({})));
        assert!(v.get("error").is_none(), "click {css}: {v}");
    }

    fn clear(&self, css: &str) {
        let el = self.el(css);
        self.send("POST", &format!("/element/{el}/clear"), Some(json!({})));
    }

    fn keys(&self, css: &str, text: &str) {
        let el = self.el(css);
        let v = self.send(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        );
        assert!(v.get("error").is_none(), "type into {css}: {v}");
    }

    /// Runs `script` (a function body) in the page and returns its value.
    fn script(&self, script: &str) -> Value {
        self.send(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Waits for a `confirm()` dialog and accepts it; returns its text.
    fn accept_confirm(&self) -> String {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(t) = self.send("GET", "/alert/text", None).as_str() {
                let t = t.to_owned();
                self.send("POST", "/alert/accept", Some(json!({})));
                return t;
            }
            assert!(Instant::now() < end, "waited {WAIT:?} for a confirm dialog");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.send("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap_or_default());
        let path = target_dir().join(name);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = http("DELETE", &self.base, None);
    }
}

/// The cargo target directory (the test worker lives in `<target>/<profile>/`).
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_host-test-worker"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = s.bytes().filter_map(val).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().fold(0u32, |acc, d| (acc << 6) | d) << (6 * (4 - chunk.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

fn schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "greeting": {"type": "string", "minLength": 1, "maxLength": 20, "default": "hello",
                     "title": "Greeting", "description": "Prefix of greet."},
        "level": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1,
                  "description": "A bounded number."}}})
}

fn scratch() -> Scratch {
    let s = Scratch::new();
    s.worker_manifest(
        "t",
        json!({"title": "Greeter", "description": "Greets <b>people</b> & things.", "config_schema": schema()}),
    );
    s.worker_manifest(
        "u",
        json!({"title": "Upper", "description": "Another test worker.", "config_schema": schema()}),
    );
    s.worker_manifest(
        "o",
        json!({"category": "other", "title": "Other", "config_schema": schema()}),
    );
    s
}

#[test]
fn settings_page_in_a_real_browser() {
    require_tools();
    let s = scratch();
    let configs = s.data().join("configs");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let manager: PluginManager = s.manager();
    let state = rt
        .block_on(AppState::from_manager(manager.clone(), &configs))
        .expect("app state");
    let registry = std::sync::Arc::clone(state.registry());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let access = cjm_ui::Access::new(addr);
    let server = rt.spawn(cjm_ui::serve_listener(state, listener, access, async {
        let _ = stop_rx.await;
    }));
    let base = format!("http://{addr}");

    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver::start(profile.path());
    let b = Session::new(&driver, profile.path());

    // The page, on the first category with plugins ("other").
    b.goto(&format!("{base}/"));
    b.wait_text("#category-title", "to name the first category", |t| {
        t == "Other"
    });
    assert_eq!(b.count("#category-nav a"), 2);

    // Pick the category "test".
    b.click("#category-nav a[href='/?category=test']");
    b.wait_text("#category-title", "to be Test", |t| t == "Test");
    b.wait_text("#category-nav a.active", "to mark Test", |t| {
        t.starts_with("Test")
    });
    assert!(
        b.current_url().ends_with("/?category=test"),
        "{}",
        b.current_url()
    );
    b.wait_text("#plugin-details h3", "to show the first plugin", |t| {
        t == "Greeter"
    });

    // One screen: the first plugin's settings are there without a click, in view at 1280×800.
    b.wait_value("#cfg-greeting", "hello");
    b.wait_value("#cfg-level", "1");
    b.wait_text("#plugin-state", "to say not loaded", |t| t == "not loaded");
    assert_eq!(
        b.count("#plugin-selector button.btn-primary"),
        0,
        "no Continue button"
    );
    let in_view = b.script(
        "const r = document.querySelector('#cfg-level').getBoundingClientRect(); \
         const s = document.querySelector('#plugin-config-form button[type=submit]').getBoundingClientRect(); \
         return [r.bottom, s.bottom, window.innerHeight, window.innerWidth];",
    );
    let nums: Vec<f64> = in_view
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    assert_eq!(nums.len(), 4, "{in_view}");
    assert_eq!(nums[3], 1280.0, "window width: {in_view}");
    assert!(
        nums[0] <= nums[2] && nums[1] <= nums[2],
        "the form's fields and Save button are in view without scrolling: {in_view}"
    );

    // Pick a plugin with the keyboard (ArrowDown on the select): its details and its settings
    // follow at once; then back with a click.
    b.keys("#plugin-select", "\u{E015}");
    b.wait_text("#plugin-details h3", "to show Upper", |t| t == "Upper");
    b.wait_text("#plugin-config h2", "to show Upper's settings", |t| {
        t == "Settings of Upper"
    });
    b.click("#plugin-select option[value='test.t']");
    b.wait_text("#plugin-details h3", "to show Greeter", |t| t == "Greeter");
    b.wait_text("#plugin-config h2", "to show Greeter's settings", |t| {
        t == "Settings of Greeter"
    });
    b.wait_value("#cfg-greeting", "hello");
    let details = b.wait_text("#plugin-details", "to hold the details", |t| {
        t.contains("Version")
    });
    assert!(
        details.contains("Greets <b>people</b> & things."),
        "escaped text shown as text: {details}"
    );
    assert!(
        details.contains("Execution:") && details.contains("Local (Subprocess)"),
        "{details}"
    );
    assert!(details.contains("Version: 1.2.3"), "{details}");
    assert!(
        details.contains("Resources") && details.contains("State"),
        "{details}"
    );
    assert_eq!(
        b.count("#plugin-details b"),
        0,
        "the description's markup is not HTML"
    );
    // The URL follows the selection.
    assert!(
        b.current_url().ends_with("/?category=test&plugin=test.t"),
        "{}",
        b.current_url()
    );
    let shot = b.screenshot("ui-e2e.png");
    let png = std::fs::read(&shot).expect("read screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    eprintln!("screenshot: {}", shot.display());

    // The comparison: what differs, not what is the same by construction.
    b.click("#comparison-toggle");
    b.wait_text("#plugin-comparison h3", "to open", |t| {
        t == "Plugin Comparison"
    });
    assert_eq!(b.count("#plugin-comparison tbody tr"), 2);
    let heads = b.wait_text("#plugin-comparison thead", "to have the columns", |t| {
        t.contains("Config differences")
    });
    for col in ["Version", "Mode", "Resources", "State", "Operations"] {
        assert!(heads.contains(col), "{col} in {heads}");
    }
    assert!(!heads.contains("Category"), "one category: {heads}");
    b.wait_text(
        "#plugin-comparison tr.bg-primary\\/10",
        "to mark the selection",
        |t| t.starts_with("Greeter"),
    );
    b.script("document.querySelector('#plugin-comparison').scrollIntoView(); return null;");
    eprintln!(
        "screenshot: {}",
        b.screenshot("ui-e2e-compare.png").display()
    );
    b.script("window.scrollTo(0, 0); return null;");

    // Load the worker from the page and watch its live state.
    b.click("#plugin-status button");
    b.wait_text("#plugin-state", "to become ready", |t| t == "ready");
    assert_eq!(manager.loaded(), ["t"]);
    // The registry sees it through the host source: state and the worker's pid.
    let live = rt
        .block_on(registry.refresh_plugin("test.t"))
        .expect("refresh")
        .live
        .expect("live facts of a loaded plugin");
    assert_eq!(live.state, "ready");
    let pid = manager.pid("t").expect("worker pid");
    assert_eq!(live.pids.first(), Some(&pid));

    // An invalid value, submitted with Enter: the error appears next to the field.
    b.clear("#cfg-level");
    b.keys("#cfg-level", "50\u{E007}");
    let err = b.wait_text("#cfg-level--error", "to explain", |t| !t.is_empty());
    assert!(err.contains("maximum of 10"), "{err}");
    b.wait_text("#config-notice", "to say not saved", |t| {
        t.starts_with("Not saved")
    });
    assert_eq!(b.count("[aria-invalid=true]"), 1);
    assert!(!configs.join("test.t.json").exists(), "nothing saved");

    // Fix it and save.
    b.clear("#cfg-level");
    b.keys("#cfg-level", "7");
    b.clear("#cfg-greeting");
    b.keys("#cfg-greeting", "howdy");
    b.click("#plugin-config-form button[type=submit]");
    b.wait_text("#config-notice", "to confirm", |t| {
        t.contains("applied to the running plugin")
    });
    assert_eq!(b.count("[aria-invalid=true]"), 0);

    // Reload: the values come back from disk.
    b.send("POST", "/refresh", Some(json!({})));
    b.wait_value("#cfg-level", "7");
    b.wait_value("#cfg-greeting", "howdy");
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(configs.join("test.t.json")).expect("saved config"),
    )
    .expect("saved JSON");
    assert_eq!(saved, json!({"greeting": "howdy", "level": 7}));

    // Applied to the running worker: greet uses the new greeting, and the live status counts
    // the call.
    let out = rt
        .block_on(manager.execute(
            "t",
            Call::new(vec![json!("greet")]).kwarg("name", json!("world")),
        ))
        .expect("greet");
    assert_eq!(out.value, json!("howdy world"));
    b.wait_text(
        "#plugin-status [data-stat=calls]",
        "to count the call",
        |t| t == "1",
    );
    b.wait_text("#plugin-state", "to stay ready", |t| t == "ready");

    // Details of the loaded plugin show its live state (after the reload above).
    b.wait_text("#plugin-details [data-fact=state]", "to say ready", |t| {
        t == "ready"
    });
    let facts = b.wait_text("#plugin-details [data-fact=live]", "to show the pid", |t| {
        t.contains("pid")
    });
    assert!(facts.contains(&format!("pid {pid}")), "{facts}");

    // Reset to defaults: asks first, then removes the saved file and applies the defaults.
    b.click("#config-reset");
    let question = b.accept_confirm();
    assert!(question.contains("default"), "{question}");
    b.wait_text("#config-notice", "to confirm the reset", |t| {
        t.contains("Reset to the defaults") && t.contains("applied")
    });
    b.wait_value("#cfg-greeting", "hello");
    b.wait_value("#cfg-level", "1");
    assert!(
        !configs.join("test.t.json").exists(),
        "the saved file is gone"
    );
    let out = rt
        .block_on(manager.execute(
            "t",
            Call::new(vec![json!("greet")]).kwarg("name", json!("world")),
        ))
        .expect("greet");
    assert_eq!(out.value, json!("hello world"), "the defaults are applied");

    // The overview of all plugins follows the live state by polling.
    let row = "#plugin-overview tr[data-plugin='test.t']";
    b.wait_text(&format!("{row} td[data-col=state]"), "to say ready", |t| {
        t == "ready"
    });
    b.wait_text(
        &format!("{row} td[data-col=calls]"),
        "to count both calls",
        |t| t == "2",
    );
    let rss = b.wait_text(&format!("{row} td[data-col=rss]"), "to show memory", |t| {
        t.ends_with("MB")
    });
    assert!(!rss.starts_with('—'), "{rss}");
    b.wait_text(
        "#plugin-overview tr[data-plugin='test.u'] td[data-col=state]",
        "to say not loaded",
        |t| t == "not loaded",
    );
    assert_eq!(b.count("#plugin-overview tbody tr"), 3);
    b.script("document.querySelector('#plugin-overview').scrollIntoView(); return null;");
    eprintln!(
        "screenshot: {}",
        b.screenshot("ui-e2e-overview.png").display()
    );

    drop(b);
    drop(driver);
    let _ = stop_tx.send(());
    rt.block_on(async {
        let _ = server.await;
        manager.unload_all().await;
    });
}

#[test]
fn the_jobs_page_updates_live_and_cancels() {
    require_tools();
    let s = scratch();
    let configs = s.data().join("configs");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let manager: PluginManager = s.manager();
    let state = rt
        .block_on(AppState::from_manager(manager.clone(), &configs))
        .expect("app state");
    let service = cjm_serve::Service::new(state);
    let jobs = rt
        .block_on(async { cjm_jobs::Jobs::open(manager.clone()) })
        .expect("jobs");
    service.attach_jobs(Ok(jobs.clone()));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let service = service.clone();
        rt.spawn(async move {
            service
                .serve_tcp(listener, cjm_ui::Access::new(addr), async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    let base = format!("http://{addr}");
    let done = rt
        .block_on(jobs.submit(
            "t",
            cjm_jobs::JobCall::new(vec![json!("pid")]),
            cjm_jobs::JobOptions::new(),
        ))
        .unwrap();
    rt.block_on(jobs.wait(&done)).unwrap();

    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver::start(profile.path());
    let b = Session::new(&driver, profile.path());
    b.goto(&format!("{base}/jobs"));
    // Rendered by the server, then live from server-sent events.
    b.wait_text(
        &format!("#job-{done} .job-state"),
        "to show the finished job",
        |t| t == "succeeded",
    );
    b.wait_text("#jobs-live", "to be connected", |t| t == "live");

    // A job submitted after the page opened appears, running, with its progress: no reload.
    let long = rt
        .block_on(jobs.submit(
            "u",
            cjm_jobs::JobCall::new(vec![json!("sleep")]).kwarg("ms", json!(60_000)),
            cjm_jobs::JobOptions::new(),
        ))
        .unwrap();
    b.wait_text(
        &format!("#job-{long} .job-state"),
        "to show it running",
        |t| t == "running",
    );
    b.wait_text(
        &format!("#job-{long} .job-percent"),
        "to show its progress",
        |t| t == "25%",
    );
    // The worker's log tail of the selected job.
    b.click(&format!("#job-{long} .job-state"));
    b.wait_text("#log-of", "to name the plugin", |t| t == "(u)");
    // Cancel from the page.
    b.click(&format!("#job-{long} .job-cancel"));
    b.wait_text(
        &format!("#job-{long} .job-state"),
        "to show it cancelled",
        |t| t == "cancelled",
    );
    assert_eq!(b.count(&format!("#job-{long} .job-cancel")), 0);
    b.screenshot("ui-e2e-jobs.png");
    assert_eq!(
        rt.block_on(jobs.wait(&long)).unwrap().state,
        cjm_jobs::JobState::Cancelled
    );

    drop(b);
    drop(driver);
    let _ = stop_tx.send(());
    rt.block_on(server).expect("server task").expect("served");
    rt.block_on(service.shutdown());
}
