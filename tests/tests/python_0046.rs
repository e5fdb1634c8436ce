//! The host driving the original's 0.0.46 worker (cjm-plugin-system 0.0.46, Python 3.12):
//! typed `_job_error` failures, a stream ending in an error, hot config through
//! `/reconfigure` with its release hook, `/task`, stall-watched `/prefetch`, the enable hooks,
//! `/config_options` and `__wire__` results.
//!
//! Each test runs against both workers of that line: cjm-plugin-system 0.0.46 and
//! cjm-substrate. Needs the venvs that `cargo xtask test` creates under `target/py312-v0046`
//! and `target/py312-substrate` (or `CJM_TEST_PYTHON_0046` / `CJM_TEST_PYTHON_SUBSTRATE`).
//! Without them these tests fail with a message saying so: they never skip silently.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cjm_core::wire::original::WireEnvelope;
use cjm_core::WorkerGeneration;
use cjm_host::{Call, ErrorCategory, PluginManager, SupervisorOptions};
use common::Scratch;
use futures::StreamExt;
use serde_json::{json, Value};

/// The two generations of the 0.0.46 line under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gen {
    /// cjm-plugin-system 0.0.46.
    V0046,
    /// cjm-substrate.
    Substrate,
}

fn python(g: Gen) -> PathBuf {
    let (var, dir, what) = match g {
        Gen::V0046 => (
            "CJM_TEST_PYTHON_0046",
            "py312-v0046",
            "cjm-plugin-system 0.0.46",
        ),
        Gen::Substrate => (
            "CJM_TEST_PYTHON_SUBSTRATE",
            "py312-substrate",
            "cjm-substrate",
        ),
    };
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/{dir}/bin/python"))
    });
    assert!(
        p.is_file(),
        "no Python 3.12 with {what} at {}: run `cargo xtask test` (it creates the venv) or set \
         {var}",
        p.display()
    );
    p
}

/// The adapter the tests bind (tests/python/cjm_test_plugins_0046).
const ADAPTER: &str = "cjm_test_plugins_0046.plugins:TokenizeAdapter";

/// The interpreter the manifest names: a test shim standing in for the launch part of issue 12
/// (another change) until it lands: it adds `--adapters` for the test adapter and, for
/// cjm-substrate, swaps the worker module `cjm_plugin_system.core.worker` for
/// `cjm_substrate.core.worker`, then runs the venv's Python.
fn interpreter(s: &Scratch, g: Gen) -> PathBuf {
    let py = python(g);
    let module = match g {
        Gen::V0046 => "cjm_plugin_system.core.worker",
        Gen::Substrate => "cjm_substrate.core.worker",
    };
    let shim = s.write(
        &format!("python-{g:?}.sh"),
        &format!(
            "#!/bin/sh\n# Test shim: the worker module of this generation, plus --adapters.\n\
             for a in \"$@\"; do shift; if [ \"$a\" = cjm_plugin_system.core.worker ]; then \
             a={module}; fi; set -- \"$@\" \"$a\"; done\n\
             exec '{}' \"$@\" --adapters {ADAPTER}\n",
            py.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

/// A v1 flat manifest naming the 0.0.46 venv's interpreter (the launcher starts it with
/// `--port`, which 0.0.46 still accepts).
fn manager(s: &Scratch, g: Gen, stall: Duration) -> PluginManager {
    write_manifest(s, g);
    s.builder()
        .supervisor(SupervisorOptions::default())
        .prefetch_stall(stall)
        .build()
        .expect("manager")
}

fn write_manifest(s: &Scratch, g: Gen) {
    write_manifest_with(s, g, json!({}));
}

fn write_manifest_with(s: &Scratch, g: Gen, extra: Value) {
    let mut m = json!({
        "name": "gen46", "version": "0.0.46-test", "category": "python",
        "module": "cjm_test_plugins_0046.plugins", "class": "Gen46Plugin",
        "python_path": interpreter(s, g),
        // The interpreter is a test shim, beside which there is no installed environment to
        // read the generation from: say it (the cjm extension field).
        "worker_generation": match g { Gen::V0046 => "v0046", Gen::Substrate => "substrate" },
        "env_vars": {"PYTHONPATH": PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")},
    });
    if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    s.write("gen46.json", &m.to_string());
}

fn action(a: &str) -> Call {
    Call::new(vec![]).with_kwargs(
        json!({"action": a})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

async fn state(m: &PluginManager) -> Value {
    m.execute("gen46", action("state")).await.unwrap().value
}

#[tokio::test]
async fn typed_errors_streams_and_wire_envelopes_0046() {
    typed_errors_streams_and_wire_envelopes(Gen::V0046).await;
}

#[tokio::test]
async fn typed_errors_streams_and_wire_envelopes_substrate() {
    typed_errors_streams_and_wire_envelopes(Gen::Substrate).await;
}

async fn typed_errors_streams_and_wire_envelopes(g: Gen) {
    let s = Scratch::new();
    let m = manager(&s, g, Duration::from_secs(5));
    m.load("gen46", None).await.unwrap();
    // The launcher's generation (from the manifest) survives the handshake.
    let expected = match g {
        Gen::V0046 => WorkerGeneration::V0046,
        Gen::Substrate => WorkerGeneration::Substrate,
    };
    assert_eq!(m.generation("gen46").unwrap(), expected);

    let e = m.execute("gen46", action("bad_input")).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::UserInput, "{e:?}");
    assert_eq!(e.message, "no such language: xx");
    assert_eq!(e.details.fields[0].field, "lang");
    assert!(e
        .details
        .traceback
        .as_deref()
        .unwrap_or("")
        .contains("Traceback"));
    assert!(!e.to_string().contains("Traceback"), "{e}");
    assert_eq!(e.category.exit_code(), 10);

    let e = m.execute("gen46", action("oom")).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Resource, "{e:?}");
    assert_eq!(e.details.resources[0].resource, "gpu_vram_mb");
    assert_eq!(e.details.resources[0].needed, 4096.0);

    let e = m.execute("gen46", action("busy")).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Transient, "{e:?}");
    assert_eq!(e.details.retry_after_seconds, Some(1.5));
    assert!(e.retriable);

    let e = m.execute("gen46", action("crash")).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Fatal, "{e:?}");
    assert_eq!(e.message, "plugin bug");

    // `__wire__` results pass through untouched.
    let out = m.execute("gen46", action("wire")).await.unwrap().value;
    assert_eq!(
        out,
        json!({"__wire__": "test.tokens", "data": {"tokens": ["a", "b"]}})
    );
    assert_eq!(WireEnvelope::decode(&out).unwrap().kind, "test.tokens");

    // The stream's terminal `_job_error` line is an error, never a chunk.
    let call = Call::new(vec![]).with_kwargs(json!({"count": 2}).as_object().cloned().unwrap());
    let items: Vec<_> = m
        .execute_stream("gen46", call)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap(), &json!({"i": 0}));
    assert_eq!(items[1].as_ref().unwrap(), &json!({"i": 1}));
    let e = items[2].as_ref().unwrap_err();
    assert_eq!(e.category, ErrorCategory::UserInput, "{e:?}");
    assert_eq!(e.message, "stream input ran out");

    // The task channel: a bound adapter's method, its typed failure, an unbound task.
    let kwargs = json!({"text": "guten tag"}).as_object().cloned().unwrap();
    let out = m
        .task("gen46", "text.tokenize", "tokenize", kwargs)
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"tokens": ["guten", "tag"], "tokenizer": "tokenizer-en"})
    );
    let e = m
        .task("gen46", "text.tokenize", "refuse", Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.category, ErrorCategory::UserInput, "{e:?}");
    assert_eq!(e.message, "the tokenizer refuses");
    let e = m
        .task("gen46", "text.summarize", "run", Default::default())
        .await
        .unwrap_err();
    assert!(e.message.contains("No adapter bound"), "{e:?}");
    m.unload_all().await;
}

#[tokio::test]
async fn hot_config_goes_through_reconfigure_and_fires_release_hooks_0046() {
    hot_config_goes_through_reconfigure_and_fires_release_hooks(Gen::V0046).await;
}

#[tokio::test]
async fn hot_config_goes_through_reconfigure_and_fires_release_hooks_substrate() {
    hot_config_goes_through_reconfigure_and_fires_release_hooks(Gen::Substrate).await;
}

async fn hot_config_goes_through_reconfigure_and_fires_release_hooks(g: Gen) {
    let s = Scratch::new();
    let m = manager(&s, g, Duration::from_secs(5));
    m.load("gen46", Some(json!({"lang": "en"}))).await.unwrap();
    assert_eq!(state(&m).await["tokenizer"], "tokenizer-en");

    // A field without a trigger: applied, nothing released.
    m.update_config("gen46", json!({"lang": "en", "suffix": "!"}))
        .await
        .unwrap();
    let st = state(&m).await;
    assert_eq!(
        (st["suffix"].clone(), st["releases"].clone()),
        (json!("!"), json!(0))
    );

    // The RELOAD_TRIGGER field: the tokenizer is released and rebuilt for German.
    m.update_config("gen46", json!({"lang": "de", "suffix": "!"}))
        .await
        .unwrap();
    let st = state(&m).await;
    assert_eq!(st["lang"], "de");
    assert_eq!(st["releases"], 1);
    assert_eq!(
        st["tokenizer"], "tokenizer-de",
        "the English tokenizer must not survive"
    );

    assert_eq!(
        m.config_options("gen46").await.unwrap(),
        json!({"lang": {"options": [
            {"value": "en", "label": "English", "metadata": {}},
            {"value": "de", "label": "German", "metadata": {}},
            {"value": "fr", "label": "French", "metadata": {}},
        ], "constraints": {}}})
    );

    m.disable_notified("gen46").await.unwrap();
    let e = m.execute("gen46", action("state")).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Disabled);
    m.enable_notified("gen46").await.unwrap();
    assert_eq!(state(&m).await["hooks"], json!(["disable", "enable"]));
    m.unload_all().await;
}

#[tokio::test]
async fn prefetch_runs_while_it_progresses_and_a_stall_is_a_timeout_0046() {
    prefetch_runs_while_it_progresses_and_a_stall_is_a_timeout(Gen::V0046).await;
}

#[tokio::test]
async fn prefetch_runs_while_it_progresses_and_a_stall_is_a_timeout_substrate() {
    prefetch_runs_while_it_progresses_and_a_stall_is_a_timeout(Gen::Substrate).await;
}

async fn prefetch_runs_while_it_progresses_and_a_stall_is_a_timeout(g: Gen) {
    let s = Scratch::new();
    // The whole progressing prefetch (40 steps) takes far longer than the stall window: it is
    // never cut off while its progress moves.
    let m = manager(&s, g, Duration::from_millis(400));
    m.load("gen46", Some(json!({"prefetch_steps": 40})))
        .await
        .unwrap();
    assert_eq!(m.prefetch("gen46").await.unwrap(), "prefetched");

    m.update_config(
        "gen46",
        json!({"prefetch_mode": "stall", "prefetch_steps": 1}),
    )
    .await
    .unwrap();
    let e = m.prefetch("gen46").await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Timeout, "{e:?}");
    assert!(e.message.contains("stalled"), "{e}");
    m.unload_all().await;
}

fn cjm(s: &Scratch, args: &[&str]) -> std::process::Output {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_host-test-worker")).with_file_name("cjm");
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p cjm`",
        bin.display()
    );
    std::process::Command::new(bin)
        .arg("--search-path")
        .arg(s.manifests())
        .arg("--data-dir")
        .arg(s.data())
        .args(args)
        .output()
        .expect("run cjm")
}

#[test]
fn the_cli_exits_with_the_category_code_and_never_prints_an_error_as_data() {
    let s = Scratch::new();
    write_manifest(&s, Gen::V0046);
    let out = cjm(
        &s,
        &["call", "gen46", "--kwargs", r#"{"action": "bad_input"}"#],
    );
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such language: xx"), "{err}");

    let out = cjm(&s, &["stream", "gen46", "--kwargs", r#"{"count": 2}"#]);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, [json!({"i": 0}), json!({"i": 1})], "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream input ran out"));

    // `cjm task`: the result as JSON; a typed failure exits with its category's code.
    let out = cjm(
        &s,
        &[
            "task",
            "gen46",
            "text.tokenize",
            "tokenize",
            "--kwargs",
            r#"{"text": "a b"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tokens"], json!(["a", "b"]));
    let out = cjm(&s, &["task", "gen46", "text.tokenize", "refuse"]);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
}

#[tokio::test]
async fn drift_is_reported_configs_follow_the_live_schema_and_strict_refuses() {
    use cjm_core::wire::drift::witness_hash;
    let s = Scratch::new();
    // An old manifest: `lang` was an integer then, and its witness says so.
    let old_schema = json!({"type": "object", "properties": {"lang": {"type": "integer"}}});
    write_manifest_with(
        &s,
        Gen::V0046,
        json!({
            "config_schema": old_schema,
            "drift_tracking": {
                "config_schema_hash": witness_hash(&old_schema),
                "structural_surface_hash": "sha256:0000",
            },
        }),
    );
    let m = s.builder().build().unwrap();
    m.load("gen46", None).await.unwrap();
    let d = m.drift("gen46").unwrap().expect("compared");
    assert!(d.config_schema && d.structural_surface, "{d:?}");
    // Validated against the live schema (a string), not the manifest's (an integer).
    m.update_config("gen46", json!({"lang": "de"}))
        .await
        .unwrap();
    let e = m
        .update_config("gen46", json!({"lang": 5}))
        .await
        .unwrap_err();
    assert_eq!(e.category, ErrorCategory::Config, "{e:?}");
    m.unload_all().await;

    // Strict: the load is refused and the worker stopped.
    let strict = s.builder().strict_drift(true).build().unwrap();
    let e = strict.load("gen46", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Config, "{e:?}");
    assert!(
        e.message.contains("config schema, structural surface"),
        "{e}"
    );
    assert!(!strict.is_loaded("gen46"));

    // A manifest whose witness matches the live schema: no drift.
    let live = json!({"type": "object", "properties": {
        "lang": {"type": "string", "default": "en"},
        "suffix": {"type": "string", "default": ""},
        "prefetch_mode": {"type": "string", "default": "progress"},
        "prefetch_steps": {"type": "integer", "default": 20},
    }});
    write_manifest_with(
        &s,
        Gen::V0046,
        json!({"drift_tracking": {"config_schema_hash": witness_hash(&live)}}),
    );
    let fresh = s.builder().strict_drift(true).build().unwrap();
    fresh.load("gen46", None).await.unwrap();
    assert!(!fresh.drift("gen46").unwrap().unwrap().any());
    fresh.unload_all().await;
}

#[test]
fn cli_info_shows_generation_and_drift_and_strict_drift_refuses() {
    let s = Scratch::new();
    write_manifest_with(
        &s,
        Gen::V0046,
        json!({"drift_tracking": {"structural_surface_hash": "sha256:0000"}}),
    );
    // Without starting the worker: the generation is known from the manifest and its env.
    let out = cjm(&s, &["info", "gen46", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["generation"], "v0046");
    assert_eq!(info["drift"], Value::Null, "not known before a start");
    // `cjm list` starts nothing: drift is not known yet.
    let listed = |s: &Scratch| -> Value {
        let out = cjm(s, &["list", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "gen46")
            .cloned()
            .unwrap()
    };
    let p = listed(&s);
    assert_eq!(p["drift"], Value::Null, "{p}");
    assert_eq!(p["drift_tracked"], true, "{p}");
    // Drift needs the live worker.
    let out = cjm(&s, &["info", "gen46", "--json", "--live"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["generation"], "v0046");
    assert_eq!(
        info["drift"],
        json!({"config_schema": false, "structural_surface": true})
    );
    // Once a command started it, `cjm list` and `cjm info` (without starting) show what it
    // found.
    let out = cjm(&s, &["info", "gen46", "--json"]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["drift"],
        json!({"config_schema": false, "structural_surface": true})
    );
    assert_eq!(
        listed(&s)["drift"],
        json!({"config_schema": false, "structural_surface": true})
    );
    let out = cjm(&s, &["list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().contains("DRIFT"), "{table}");
    let row = table.lines().find(|l| l.starts_with("gen46 ")).unwrap();
    assert!(row.contains(" surface "), "{table}");
    let out = cjm(&s, &["info", "gen46", "--live"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("drift:      the live worker's structural surface"),
        "{out:?}"
    );
    let out = cjm(&s, &["--strict-drift", "info", "gen46", "--live"]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    // Reinstalled with witnesses of the live worker: the old finding no longer shows.
    write_manifest_with(
        &s,
        Gen::V0046,
        json!({"drift_tracking": {"structural_surface_hash": "sha256:1111"}}),
    );
    assert_eq!(listed(&s)["drift"], Value::Null);
}

#[tokio::test]
async fn the_settings_form_offers_the_live_config_options_0046() {
    the_settings_form_offers_the_live_config_options(Gen::V0046).await;
}

#[tokio::test]
async fn the_settings_form_offers_the_live_config_options_substrate() {
    the_settings_form_offers_the_live_config_options(Gen::Substrate).await;
}

/// `GET path` from the settings app at `addr` (HTTP/1.0, so the server closes when done).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

async fn the_settings_form_offers_the_live_config_options(g: Gen) {
    let s = Scratch::new();
    // The manifest's (static) schema: `lang` is free text.
    let schema = json!({"type": "object", "properties": {
        "lang": {"type": "string", "default": "en"}}});
    write_manifest_with(&s, g, json!({"config_schema": schema}));
    let m = s.builder().build().unwrap();
    let state = cjm_ui::AppState::from_manager(m.clone(), s.data().join("configs"))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cjm_ui::serve_listener(
        state,
        listener,
        cjm_ui::Access::new(addr),
        async {
            let _ = stopped.await;
        },
    ));
    let url = "/plugins/python.gen46/config";
    let select = "<select";
    // Not running: the static schema (a text field), nothing live to offer.
    let page = http_get(addr, url).await;
    assert!(page.starts_with("HTTP/1.0 200"), "{page}");
    assert!(!page.contains("German"), "{page}");
    let lang = page.find("name=\"lang\"").expect("a lang field");
    let tag = page[..lang].rfind('<').unwrap();
    assert!(!page[tag..].starts_with(select), "{page}");

    // Running: the worker's live options, labelled, in a select.
    m.load("gen46", None).await.unwrap();
    let page = http_get(addr, url).await;
    assert!(page.starts_with("HTTP/1.0 200"), "{page}");
    let at = page.find("<select").expect("a select");
    let field = &page[at..at + page[at..].find("</select>").unwrap()];
    assert!(field.contains("name=\"lang\""), "{field}");
    for (value, label) in [("en", "English"), ("de", "German"), ("fr", "French")] {
        assert!(
            field.contains(&format!("value=\"{value}\"")) && field.contains(label),
            "{field}"
        );
    }
    m.unload_all().await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_changed_secret_or_env_respawns_the_worker_with_it_0046() {
    a_changed_secret_or_env_respawns_the_worker_with_it(Gen::V0046).await;
}

#[tokio::test]
async fn a_changed_secret_or_env_respawns_the_worker_with_it_substrate() {
    a_changed_secret_or_env_respawns_the_worker_with_it(Gen::Substrate).await;
}

/// What the worker of gen46 sees of `API_KEY` and `MODE`.
async fn worker_env(m: &PluginManager) -> Value {
    let call = Call::new(vec![]).with_kwargs(
        json!({"action": "env", "names": ["API_KEY", "MODE"]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    m.execute("gen46", call).await.unwrap().value
}

async fn a_changed_secret_or_env_respawns_the_worker_with_it(g: Gen) {
    let s = Scratch::new();
    let with_mode = |mode: &str| {
        json!({
            "worker_env": [
                {"name": "API_KEY", "secret": true, "required": false},
                {"name": "MODE", "default": mode},
            ],
        })
    };
    write_manifest_with(&s, g, with_mode("fast"));
    let m = s.builder().build().unwrap();
    m.load("gen46", None).await.unwrap();
    m.update_config("gen46", json!({"lang": "de"}))
        .await
        .unwrap();
    assert_eq!(
        worker_env(&m).await,
        json!({"API_KEY": null, "MODE": "fast"})
    );
    let pid = m.pid("gen46").unwrap();

    // Nothing changed: the worker is kept.
    assert!(!m.refresh_environment("gen46").await.unwrap());
    assert_eq!(m.pid("gen46"), Some(pid));

    // A secret set: a new worker that sees it, with the configuration kept.
    assert!(m.set_secret("gen46", "API_KEY", "s3cret").await.unwrap());
    let pid2 = m.pid("gen46").unwrap();
    assert_ne!(pid2, pid, "a new worker");
    assert_eq!(
        worker_env(&m).await,
        json!({"API_KEY": "s3cret", "MODE": "fast"})
    );
    assert_eq!(state(&m).await["lang"], "de", "configuration kept");
    // The same value again: nothing to do.
    assert!(!m.set_secret("gen46", "API_KEY", "s3cret").await.unwrap());
    assert_eq!(m.pid("gen46"), Some(pid2));

    // The manifest's worker_env edited on disk (a reinstall): respawned with the new default.
    write_manifest_with(&s, g, with_mode("slow"));
    assert!(m.refresh_environment("gen46").await.unwrap());
    let pid3 = m.pid("gen46").unwrap();
    assert_ne!(pid3, pid2);
    assert_eq!(
        worker_env(&m).await,
        json!({"API_KEY": "s3cret", "MODE": "slow"})
    );
    assert!(!m.refresh_environment("gen46").await.unwrap());
    assert_eq!(m.pid("gen46"), Some(pid3));
    m.unload_all().await;
}

#[tokio::test]
async fn the_workers_connections_do_not_wait_for_delayed_acks_0046() {
    the_workers_connections_do_not_wait_for_delayed_acks(Gen::V0046).await;
}

#[tokio::test]
async fn the_workers_connections_do_not_wait_for_delayed_acks_substrate() {
    the_workers_connections_do_not_wait_for_delayed_acks(Gen::Substrate).await;
}

/// uvicorn adopts the `--fd` socket as AF_UNIX, so nothing in the worker sets TCP_NODELAY on
/// the connections it accepts; without it on the handed-over listener every answer waited
/// out the host's delayed ACK (40 ms a call instead of half a millisecond).
async fn the_workers_connections_do_not_wait_for_delayed_acks(g: Gen) {
    let s = Scratch::new();
    let m = manager(&s, g, Duration::from_secs(5));
    m.load("gen46", None).await.unwrap();
    let seen = m.execute("gen46", action("nodelay")).await.unwrap().value;
    let seen = seen.as_array().unwrap();
    assert!(!seen.is_empty(), "the call's own connection is one");
    assert!(
        seen.iter().all(|v| v == &json!(true)),
        "TCP_NODELAY per accepted connection: {seen:?}"
    );
    m.unload_all().await;
}
