//! Launching the original's 0.0.46 and cjm-substrate workers as their own hosts do: the
//! listening socket handed over as `--fd`, `--ppid`, the matched `--adapters`, and the
//! environment overlay in the original's order. A stub worker (tests/python/stub_0046, the
//! real worker's command line and endpoints, answering `/execute` with its argv and env)
//! stands in for the real one, which needs a Python 3.12 venv; the plugin's environment is a
//! directory with the `*.dist-info` folder that tells its generation.

mod common;

use std::path::{Path, PathBuf};

use cjm_host::secrets::SecretStore;
use cjm_host::{Call, ErrorCategory};
use common::Scratch;
use serde_json::{json, Value};

/// Any Python 3 (the stub needs only the standard library).
fn python() -> PathBuf {
    let candidates = [
        std::env::var_os("CJM_TEST_PYTHON").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/python3")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect("no Python 3: set CJM_TEST_PYTHON")
}

fn stub_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/stub_0046")
}

/// A plugin environment `<scratch>/envs/<name>` whose `bin/python` is a real Python and whose
/// site-packages holds `dist_info`; returns its `bin/python`.
fn fake_env(s: &Scratch, name: &str, dist_info: &str) -> PathBuf {
    let root = s.dir.path().join("envs").join(name);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib/python3.12/site-packages").join(dist_info)).unwrap();
    let py = root.join("bin/python");
    std::os::unix::fs::symlink(python(), &py).unwrap();
    py
}

/// A v2.0 manifest as `cjm-ctl install-all` writes it.
fn v2_manifest(s: &Scratch, name: &str, python: &Path, worker_env: Value, surface: Value) {
    let m = json!({
        "format_version": "2.0",
        "install": {
            "python_path": python, "conda_env": name, "db_path": "",
            "env_vars": {"PYTHONPATH": stub_dir(), "FROM_INSTALL": "install",
                         "OVERRIDDEN": "install", "PLUGIN_DATA_DIR": "/not/this"},
            "installed_at": "2026-06-14T09:12:44+00:00",
            "installer_version": "cjm-ctl 0.0.46", "package_source": name
        },
        "code": {
            "name": name, "version": "0.0.1", "description": "launch test",
            "module": "some_plugin.plugin", "class": "SomePlugin", "interface": "",
            "taxonomy": {"domain": "text", "role": "TextPlugin", "interface_fqcn": "x.TextPlugin"},
            "worker_env": worker_env,
            "structural_surface": surface
        },
        "drift_tracking": {"config_schema_hash": null, "structural_surface_hash": null},
        "overrides": {}
    });
    s.write(&format!("{name}.json"), &m.to_string());
}

fn adapter(s: &Scratch, file: &str, module: &str, method: &str) {
    let a = json!({
        "unit": "adapter", "name": format!("{module}.Impl"), "version": "0.0.1",
        "task_name": "storage", "module": module, "class": "Impl",
        "required_tool_protocol": "p.Proto",
        "protocol_members": {"methods": [{"name": method, "signature": "(self, x)", "params": ["x"]}],
                             "properties": []},
        "generated_at": "2026-06-14T09:15:09+00:00", "conda_env": "x"
    });
    s.write(file, &a.to_string());
}

fn arg_after<'a>(argv: &'a [Value], flag: &str) -> Option<&'a str> {
    let i = argv.iter().position(|a| a == flag)?;
    argv.get(i + 1).and_then(Value::as_str)
}

#[tokio::test]
async fn a_0046_worker_gets_its_fd_ppid_adapters_and_env_in_the_originals_order() {
    let s = Scratch::new();
    let py = fake_env(&s, "nltk", "cjm_plugin_system-0.0.46.dist-info");
    v2_manifest(
        &s,
        "nltk",
        &py,
        json!([
            {"name": "OVERRIDDEN", "secret": false, "required": false, "default": "worker_env"},
            {"name": "NLTK_DATA", "secret": false, "required": true, "default": "${PLUGIN_DATA_DIR}/nltk_data"},
            {"name": "API_KEY", "secret": true, "required": true, "default": null},
            {"name": "PLUGIN_DATA_DIR", "secret": false, "required": false, "default": "/nor/this"}
        ]),
        json!({"methods": [{"name": "split", "signature": "(self, x)", "params": ["x", "y"]}],
               "properties": []}),
    );
    adapter(&s, "adapter-storage-a.json", "adapters.match", "split");
    adapter(&s, "adapter-storage-b.json", "adapters.other", "merge");
    SecretStore::for_data_dir(&s.data())
        .set("nltk", "API_KEY", "first-key")
        .unwrap();

    let m = s.manager();
    assert!(
        m.invalid_manifests().is_empty(),
        "{:?}",
        m.invalid_manifests()
    );
    let manifest = m.discovered_manifest("nltk").unwrap();
    assert_eq!(manifest.generation(), cjm_core::WorkerGeneration::V0046);
    assert_eq!(manifest.category, "text");
    assert_eq!(m.discovered_adapters().len(), 2);

    m.load("nltk", None).await.unwrap();
    let out = m.execute("nltk", Call::new(vec![])).await.unwrap().value;
    let argv = out["argv"].as_array().unwrap().clone();
    assert_eq!(out["worker"], "cjm_plugin_system.core.worker");
    assert_eq!(arg_after(&argv, "--module"), Some("some_plugin.plugin"));
    assert_eq!(arg_after(&argv, "--class"), Some("SomePlugin"));
    assert!(arg_after(&argv, "--fd").is_some_and(|fd| fd.parse::<u32>().is_ok()));
    assert!(!argv.contains(&json!("--port")), "{argv:?}");
    assert_eq!(
        arg_after(&argv, "--ppid"),
        Some(std::process::id().to_string().as_str())
    );
    assert_eq!(arg_after(&argv, "--adapters"), Some("adapters.match:Impl"));

    let env = &out["env"];
    let data = s.data();
    let own = data.join("data").join("nltk");
    assert_eq!(
        env["FROM_INSTALL"], "install",
        "install.env_vars over the host env"
    );
    assert_eq!(
        env["OVERRIDDEN"], "worker_env",
        "worker_env over install.env_vars"
    );
    assert_eq!(env["NLTK_DATA"], format!("{}/nltk_data", own.display()));
    assert_eq!(env["API_KEY"], "first-key");
    assert_eq!(
        env["PLUGIN_DATA_DIR"],
        own.display().to_string(),
        "paths win"
    );
    assert_eq!(
        env["CJM_PLUGIN_DATA_DIR"],
        data.join("data").display().to_string()
    );
    assert_eq!(
        env["CJM_DATA_DIR"],
        data.display().to_string(),
        "the root, as in 0.0.46"
    );
    assert_eq!(
        env["PATH"],
        std::env::var("PATH").unwrap(),
        "the host env underneath"
    );
    assert!(own.is_dir());

    // A changed secret reaches the worker at its next start.
    SecretStore::for_data_dir(&s.data())
        .set("nltk", "API_KEY", "second-key")
        .unwrap();
    m.reload("nltk", None).await.unwrap();
    let out = m.execute("nltk", Call::new(vec![])).await.unwrap().value;
    assert_eq!(out["env"]["API_KEY"], "second-key");
    m.unload_all().await;
}

#[tokio::test]
async fn a_substrate_worker_runs_its_own_module_with_its_names() {
    let s = Scratch::new();
    let py = fake_env(&s, "sub", "cjm_substrate-0.0.74.dist-info");
    v2_manifest(
        &s,
        "sub",
        &py,
        json!([{"name": "WHERE", "default": "${CAPABILITY_DATA_DIR}/x"}]),
        json!({"methods": [], "properties": []}),
    );
    let m = s.manager();
    m.load("sub", None).await.unwrap();
    let out = m.execute("sub", Call::new(vec![])).await.unwrap().value;
    assert_eq!(out["worker"], "cjm_substrate.core.worker");
    let argv = out["argv"].as_array().unwrap().clone();
    assert!(arg_after(&argv, "--fd").is_some());
    assert!(!argv.contains(&json!("--adapters")), "no adapter matched");
    let own = s.data().join("data").join("sub");
    assert_eq!(out["env"]["CAPABILITY_DATA_DIR"], own.display().to_string());
    assert_eq!(out["env"]["WHERE"], format!("{}/x", own.display()));
    assert_eq!(
        out["env"]["CJM_CAPABILITY_DATA_DIR"],
        s.data().join("data").display().to_string()
    );
    m.unload_all().await;
}

#[tokio::test]
async fn a_missing_required_secret_fails_the_load_naming_plugin_and_variable() {
    let s = Scratch::new();
    let py = fake_env(&s, "gem", "cjm_plugin_system-0.0.46.dist-info");
    v2_manifest(
        &s,
        "gem",
        &py,
        json!([{"name": "GEMINI_API_KEY", "secret": true, "required": true}]),
        json!({"methods": [], "properties": []}),
    );
    let m = s.manager();
    let e = m.load("gem", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Config);
    assert!(
        e.message.contains("gem") && e.message.contains("GEMINI_API_KEY"),
        "{}",
        e.message
    );
    assert!(m.loaded().is_empty());
}
