//! A real published plugin with its adapter, installed from PyPI by the original's own
//! `cjm-ctl install-all` (0.0.46) through the conda shim (tests/python/conda-shim):
//! `cjm-graph-plugin-sqlite` 0.0.24 reached through `cjm-graph-storage-adapter-interface`
//! 0.0.6's `GenericGraphStorageAdapter` over `POST /task`.
//!
//! cjm (`list`, `validate`, `info`, `task`, `call`, and the `PluginManager` API) drives the
//! installed `.cjm/` and the same calls go through the original's own host
//! (tests/python/real_0046_host.py, cjm-plugin-system 0.0.46's `PluginManager`); the results
//! are compared call by call (successes value by value, failures by category).
//!
//! Needs the install that `cargo xtask test` caches under `target/real-0046` (or
//! `CJM_TEST_REAL_0046`) and the host venv `target/py312-v0046` (or `CJM_TEST_PYTHON_0046`).
//! Without them these tests fail with a message saying so: they never skip silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cjm_host::{Call, PluginError, PluginManager};
use serde_json::{json, Map, Value};

const PLUGIN: &str = "cjm-graph-plugin-sqlite";
const ADAPTER: &str = "cjm_graph_storage_adapter_interface.generic.GenericGraphStorageAdapter";
const TASK: &str = "graph-storage";

fn from_env_or_target(var: &str, under_target: &str, what: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/{under_target}"))
    });
    assert!(
        p.exists(),
        "no {what} at {}: run `cargo xtask test` (it installs it) or set {var}",
        p.display()
    );
    p
}

/// `.cjm/manifests` as `cjm-ctl install-all` wrote it.
fn manifests() -> PathBuf {
    from_env_or_target(
        "CJM_TEST_REAL_0046",
        "real-0046",
        "install of cjm-graph-plugin-sqlite by cjm-ctl install-all",
    )
    .join("cjm/manifests")
}

/// The Python with cjm-plugin-system 0.0.46: the original's host.
fn host_python() -> PathBuf {
    from_env_or_target(
        "CJM_TEST_PYTHON_0046",
        "py312-v0046/bin/python",
        "Python 3.12 with cjm-plugin-system 0.0.46",
    )
}

fn cjm(data: &Path, args: &[&str]) -> Output {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_host-test-worker")).with_file_name("cjm");
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p cjm`",
        bin.display()
    );
    Command::new(bin)
        .arg("--search-path")
        .arg(manifests())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cjm")
}

fn stdout_json(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// A result as both hosts can be compared on: `__wire__` envelopes by their data, and the
/// wall-clock stamps each host's run writes (`created_at`, `updated_at`) left out.
fn comparable(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.contains_key("__wire__") && m.contains_key("data") => {
            comparable(&m["data"])
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "created_at" | "updated_at"))
                .map(|(k, v)| (k.clone(), comparable(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(comparable).collect()),
        v => v.clone(),
    }
}

/// The calls both hosts make, in order, on one database: `[task, method, kwargs]`, a `null`
/// task being a plain execute.
fn calls() -> Value {
    json!([
        [TASK, "add_nodes", {"nodes": [
            {"id": "n1", "label": "Source", "properties": {"title": "Ada", "n": 1.5}},
            {"id": "n2", "label": "Segment", "properties": {"text": "héllo"}}]}],
        [TASK, "add_edges", {"edges": [
            {"id": "e1", "source_id": "n1", "target_id": "n2", "relation_type": "PART_OF"}]}],
        [TASK, "get_node", {"node_id": "n1"}],
        [TASK, "get_node", {"node_id": "missing"}],
        [TASK, "find_nodes_by_label", {"label": "Segment"}],
        [TASK, "get_context", {"node_id": "n1"}],
        [TASK, "update_node", {"node_id": "n2", "properties": {"text": "hello"}}],
        [TASK, "get_schema", {}],
        // A node without an id: the plugin's typed input error.
        [TASK, "add_nodes", {"nodes": [{"label": "no id"}]}],
        // A method the adapter does not have.
        [TASK, "no_such_method", {}],
        // The plugin has no `execute`: it is reached only through its adapter.
        [null, null, {}],
        [TASK, "delete_nodes", {"node_ids": ["n2"]}],
        [TASK, "integrity_check", {}],
    ])
}

/// The original's error class as cjm's category (PROTOCOL.md §9).
fn category_of_original(class: &str) -> &'static str {
    match class {
        "PluginInputError" => "user_input",
        "PluginFatalError" => "fatal",
        "PluginTransientError" => "transient",
        "PluginResourceError" => "resource",
        "PluginConfigError" => "config",
        "PluginCancelledError" => "cancelled",
        "PluginTimeoutError" => "timeout",
        _ => "untyped",
    }
}

/// The calls through the original's own host.
fn through_the_original(dir: &Path, config: &Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/real_0046_host.py");
    let mut child = Command::new(host_python())
        .arg(script)
        .arg(manifests())
        .arg(PLUGIN)
        .arg(config.to_string())
        // The original's data root: its secrets, configs and diagnostics go here.
        .env("CJM_DATA_DIR", dir.join("original-data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the original's host");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(calls().to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

async fn one_call(m: &PluginManager, call: &Value) -> Result<Value, PluginError> {
    let kwargs: Map<String, Value> = call[2].as_object().cloned().unwrap_or_default();
    match (call[0].as_str(), call[1].as_str()) {
        (Some(task), Some(method)) => m.task(PLUGIN, task, method, kwargs).await,
        _ => m
            .execute(PLUGIN, Call::new(vec![]).with_kwargs(kwargs))
            .await
            .map(|o| o.value),
    }
}

#[tokio::test]
async fn the_same_calls_give_the_same_results_as_the_original_host() {
    let dir = tempfile::tempdir().unwrap();
    let ours_db = dir.path().join("cjm.db");
    let theirs_db = dir.path().join("original.db");

    let m = PluginManager::builder()
        .search_paths([manifests()])
        .data_dir(dir.path().join("cjm-data"))
        .build()
        .unwrap();
    m.load(PLUGIN, Some(json!({"db_path": ours_db})))
        .await
        .unwrap();
    let mut ours = Vec::new();
    for call in calls().as_array().unwrap() {
        ours.push(one_call(&m, call).await);
    }
    m.unload_all().await;

    let theirs = through_the_original(dir.path(), &json!({"db_path": theirs_db}));
    assert_eq!(theirs["compatible"], json!({ADAPTER: true}), "{theirs}");
    let theirs = theirs["results"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for ((call, ours), theirs) in calls().as_array().unwrap().iter().zip(&ours).zip(theirs) {
        match (ours, theirs.get("ok"), theirs.get("error")) {
            (Ok(v), Some(t), None) => {
                assert_eq!(comparable(v), comparable(t), "{call}");
            }
            (Err(e), None, Some(t)) => {
                let class = t["type"].as_str().unwrap_or_default();
                let expected = category_of_original(class);
                if expected != "untyped" {
                    assert_eq!(e.category.as_str(), expected, "{call}: {e} vs {t}");
                }
                // The original's message is in ours (ours leaves the traceback out).
                let message = t["message"].as_str().unwrap_or_default();
                let core = message.strip_prefix("Execute failed: ").unwrap_or(message);
                let core = serde_json::from_str::<Value>(core)
                    .ok()
                    .and_then(|d| d["detail"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| core.to_owned());
                assert!(e.message.contains(&core), "{call}: {e:?} vs {t}");
            }
            (ours, _, _) => panic!("{call}: cjm {ours:?}, the original {theirs}"),
        }
    }
    // The comparison covered real data, not only failures.
    assert_eq!(comparable(ours[2].as_ref().unwrap())["label"], "Source");
    assert!(ours[8].is_err() && ours[10].is_err());
}

#[test]
fn the_cli_lists_validates_describes_and_calls_the_installed_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let listed = stdout_json(&cjm(&data, &["list", "--json"]));
    let plugin = listed["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == PLUGIN)
        .cloned()
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(plugin["format_version"], "2.0", "{plugin}");
    assert_eq!(plugin["version"], "0.0.24", "{plugin}");
    assert_eq!(listed["invalid"], json!([]), "{listed}");
    let adapter = &listed["adapters"][0];
    assert_eq!(adapter["name"], ADAPTER, "{listed}");
    assert_eq!(adapter["task"], TASK);
    assert_eq!(adapter["plugins"], json!([PLUGIN]), "the adapter binds");

    let out = cjm(&data, &["validate", manifests().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let info = stdout_json(&cjm(&data, &["info", PLUGIN, "--json"]));
    assert_eq!(info["name"], PLUGIN);
    assert!(
        info["config_schema"]["properties"]["db_path"].is_object(),
        "{info}"
    );

    let db = dir.path().join("g.db");
    let config = json!({"db_path": db}).to_string();
    let task = |method: &str, kwargs: Value| {
        cjm(
            &data,
            &[
                "task",
                PLUGIN,
                TASK,
                method,
                "--config",
                &config,
                "--kwargs",
                &kwargs.to_string(),
            ],
        )
    };
    let added = stdout_json(&task(
        "add_nodes",
        json!({"nodes": [{"id": "a", "label": "Source"}]}),
    ));
    assert_eq!(added, json!(["a"]));
    // A new process, the same database: the node is there.
    let node = stdout_json(&task("get_node", json!({"node_id": "a"})));
    assert_eq!(node["__wire__"], "graph.node", "{node}");
    assert_eq!(node["data"]["label"], "Source", "{node}");
    // A typed input error exits with user_input's code.
    let out = task("add_nodes", json!({"nodes": [{"label": "no id"}]}));
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    // `call` (plain execute): the plugin has none; a fatal error, not a hang or a crash.
    let out = cjm(&data, &["call", PLUGIN, "--config", &config]);
    assert_eq!(out.status.code(), Some(18), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no attribute 'execute'"),
        "{out:?}"
    );
}
