//! Self-description: `WORKER --describe` on every sample, the host's use of it (a
//! configuration schema without loading, cached by the binary's identity), and the `cjm`
//! commands built on it (`manifest`, `info`, `call` without an operation, `config`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cjm_core::describe::{InputKind, WorkerDescription};
use cjm_core::Manifest;
use common::Scratch;
use serde_json::{json, Value};

/// Where the sample workers and `cjm` are built: beside the test workers.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_host-test-worker"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn built(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build -p cjm -p cjm-sample-plugins` (cargo xtask test does)",
        p.display()
    );
    p
}

const SAMPLES: [&str; 6] = [
    "config-rich",
    "crashy",
    "echo",
    "resources",
    "slow",
    "transcriber",
];

fn describe(program: &Path) -> WorkerDescription {
    let out = Command::new(program)
        .arg("--describe")
        .output()
        .expect("run --describe");
    assert!(out.status.success(), "{}: {:?}", program.display(), out);
    WorkerDescription::parse(&out.stdout).expect("a description")
}

fn template(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/sample-plugins/manifests")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).expect("read template")).expect("JSON")
}

#[test]
fn every_sample_describes_itself_and_each_operation() {
    for name in SAMPLES {
        let d = describe(&built(name));
        let m = template(name);
        assert_eq!(d.name, name);
        assert_eq!(d.description, m["description"], "{name}");
        assert_eq!(d.input, InputKind::Command, "{name}");
        assert!(!d.operations.is_empty(), "{name}");
        for op in &d.operations {
            assert!(op.name.is_some(), "{name}: {op:?}");
            assert!(
                !op.description.is_empty(),
                "{name}: {op:?} has no description"
            );
        }
        let declared: cjm_core::Resources =
            serde_json::from_value(m["resources"].clone()).unwrap_or_default();
        assert_eq!(
            d.resources, declared,
            "{name}: resources as in its manifest"
        );
    }
    let t = describe(&built("transcriber"));
    let op = t.operation("transcribe").expect("transcribe");
    assert!(op.streams);
    assert_eq!(op.input_schema["required"], json!(["text"]));
    assert_eq!(t.config_schema["additionalProperties"], false);
    let echo = describe(&built("echo"));
    assert!(echo.operations.iter().all(|o| o.blobs));
    assert!(!echo.operation("sleep").expect("sleep").streams);
    let slow = describe(&built("slow"));
    let work = slow.operation("work").expect("work");
    assert!(work.streams);
    assert_eq!(work.input_schema["properties"]["steps"]["type"], "integer");
}

/// A wrapper around the transcriber that logs every start's arguments to `starts`.
fn logged_transcriber(s: &Scratch) -> (PathBuf, PathBuf) {
    let starts = s.dir.path().join("starts");
    let script = s.dir.path().join("transcriber-wrapper");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            starts.display(),
            built("transcriber").display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut m = template("transcriber");
    m["command"] = json!(script.display().to_string());
    assert!(
        m.get("config_schema").is_none(),
        "the test needs a manifest without a schema"
    );
    s.write("transcriber.json", &m.to_string());
    (script, starts)
}

fn starts(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_host_takes_the_described_schema_without_starting_the_worker() {
    let s = Scratch::new();
    let (script, log) = logged_transcriber(&s);
    let expected = describe(&built("transcriber")).config_schema;
    let m = s.manager();
    assert_eq!(m.config_schema("transcriber").unwrap(), expected);
    assert_eq!(m.config_schema("transcriber").unwrap(), expected);
    assert!(!m.is_loaded("transcriber") && m.loaded().is_empty());
    assert!(
        !s.data().join("logs/transcriber.log").exists(),
        "no worker was spawned"
    );
    assert_eq!(starts(&log), ["--describe"], "described once, never served");
    let d = m.describe("transcriber").unwrap().expect("a native worker");
    assert!(d.operation("transcribe").is_some());
    // The registry validates against it: the manifest now carries the schema.
    let manifest = m.discovered_manifest("transcriber").unwrap();
    assert_eq!(
        m.with_described_schema(&manifest).config_schema,
        Some(expected.clone())
    );

    // A new manager (a new `cjm` process) reads the cache on disk.
    drop(m);
    let m = s.manager();
    assert_eq!(m.config_schema("transcriber").unwrap(), expected);
    assert_eq!(starts(&log), ["--describe"], "the disk cache answered");

    // Another binary at that path (size and mtime change) is described again.
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, format!("{text}# rebuilt\n")).unwrap();
    let m = s.manager();
    assert_eq!(m.config_schema("transcriber").unwrap(), expected);
    assert_eq!(starts(&log), ["--describe", "--describe"]);
}

#[test]
fn a_manifest_schema_wins_and_python_or_failing_workers_fall_back_to_anything() {
    let s = Scratch::new();
    s.worker_manifest(
        "own",
        json!({"config_schema": {"type": "object", "title": "own"}}),
    );
    s.write(
        "false.json",
        &json!({"name": "false", "category": "t", "command": "/bin/false"}).to_string(),
    );
    let m = s.manager();
    assert_eq!(m.config_schema("own").unwrap()["title"], "own");
    assert_eq!(m.config_schema("false").unwrap(), json!({}));
    let e = m.describe("false").unwrap_err();
    assert!(e.message.contains("/bin/false --describe"), "{}", e.message);
    assert!(m.describe("nope").is_err());
}

// ---- the CLI -----------------------------------------------------------------------------

fn cjm(s: &Scratch, args: &[&str]) -> Output {
    Command::new(built("cjm"))
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

#[test]
fn cjm_manifest_writes_a_complete_manifest_the_host_loads() {
    let s = Scratch::new();
    let dir = s.manifests();
    let bin = built("transcriber");
    let out = cjm(
        &s,
        &[
            "manifest",
            bin.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = dir.join("transcriber.json");
    let m = Manifest::parse(&std::fs::read_to_string(&file).unwrap(), Some(&file)).unwrap();
    let d = describe(&bin);
    assert_eq!(m.name, "transcriber");
    assert_eq!(m.version, d.version);
    assert_eq!(m.description, d.description);
    assert_eq!(m.config_schema, Some(d.config_schema));
    assert_eq!(m.resources, d.resources);
    assert_eq!(m.max_concurrency, Some(2));
    let command = PathBuf::from(m.command.clone().unwrap());
    assert!(
        command.is_absolute(),
        "outside DIR: absolute, got {command:?}"
    );
    assert_eq!(command, std::fs::canonicalize(&bin).unwrap());

    // A binary inside DIR gets a command relative to it.
    let inner = dir.join("bin");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::copy(built("echo"), inner.join("echo")).unwrap();
    let out = cjm(
        &s,
        &[
            "manifest",
            inner.join("echo").to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let echo: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("echo.json")).unwrap()).unwrap();
    assert_eq!(echo["command"], "./bin/echo");
    assert_eq!(echo["resources"], json!({"requires_gpu": false}));

    // Without --out it is printed; a program that is not a worker is refused.
    let out = cjm(&s, &["manifest", built("resources").to_str().unwrap()]);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["resources"]["min_gpu_vram_mb"], 512);
    let out = cjm(&s, &["manifest", "/bin/true"]);
    assert_eq!(out.status.code(), Some(18), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/bin/true --describe"));
}

#[test]
fn config_is_validated_against_the_described_schema_and_can_be_reset() {
    let s = Scratch::new();
    let (_, log) = logged_transcriber(&s);
    let defaults = cjm(&s, &["config", "transcriber"]);
    assert!(defaults.status.success(), "{}", text(&defaults.stderr));
    assert!(text(&defaults.stderr).contains("defaults"));
    let v: Value = serde_json::from_slice(&defaults.stdout).unwrap();
    assert_eq!(v, json!({"language": "en", "word_delay_ms": 20}));

    let bad = cjm(
        &s,
        &[
            "config",
            "transcriber",
            "--set",
            r#"{"word_delay_ms":"lots","bogus_key":1}"#,
        ],
    );
    assert_eq!(bad.status.code(), Some(11), "{}", text(&bad.stderr));
    let err = text(&bad.stderr);
    assert!(err.contains("field word_delay_ms"), "{err}");
    assert!(err.contains("field bogus_key"), "{err}");
    let saved_files = || -> Vec<PathBuf> {
        std::fs::read_dir(s.data().join("configs"))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with("transcriber.json"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(saved_files().is_empty(), "nothing saved");

    let ok = cjm(
        &s,
        &["config", "transcriber", "--set", r#"{"word_delay_ms":5}"#],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let saved = saved_files().pop().expect("the configuration was saved");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(v, json!({"word_delay_ms": 5}));

    // A saved configuration that no longer validates names the file, the field and the fix.
    std::fs::write(&saved, r#"{"word_delay_ms":"x"}"#).unwrap();
    let info = cjm(&s, &["call", "transcriber", "--args", r#"["transcribe"]"#]);
    assert_eq!(info.status.code(), Some(11));
    let err = text(&info.stderr);
    assert!(err.contains(saved.to_str().unwrap()), "{err}");
    assert!(err.contains("word_delay_ms"), "{err}");
    assert!(err.contains("cjm config transcriber --reset"), "{err}");
    let reset = cjm(&s, &["config", "transcriber", "--reset"]);
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    assert!(!saved.exists());
    assert!(
        starts(&log).iter().all(|l| l == "--describe"),
        "configuring started no worker: {:?}",
        starts(&log)
    );
}

#[test]
fn info_shows_operations_without_starting_and_call_lists_them() {
    let s = Scratch::new();
    let (_, log) = logged_transcriber(&s);
    let out = cjm(&s, &["info", "transcriber", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"], json!({"language": "en", "word_delay_ms": 20}));
    assert_eq!(v["config_saved"], false);
    assert_eq!(v["config_schema"]["additionalProperties"], false);
    assert_eq!(
        v["worker_description"]["operations"][0]["name"],
        "transcribe"
    );
    assert!(v.get("stats").is_none());
    let plain = cjm(&s, &["info", "transcriber"]);
    assert!(text(&plain.stdout).contains("transcribe  text: string  [streams]"));
    assert_eq!(starts(&log), ["--describe"], "info started no worker");

    let call = cjm(&s, &["call", "transcriber"]);
    assert_eq!(call.status.code(), Some(2));
    let err = text(&call.stderr);
    assert!(err.contains("operations of transcriber"), "{err}");
    assert!(err.contains("transcribe  text: string"), "{err}");
    assert_eq!(
        starts(&log),
        ["--describe"],
        "call without an operation started nothing"
    );

    let live = cjm(&s, &["info", "transcriber", "--live", "--json"]);
    assert!(live.status.success(), "{}", text(&live.stderr));
    let v: Value = serde_json::from_slice(&live.stdout).unwrap();
    assert_eq!(v["stats"]["state"], "ready");
    assert_eq!(starts(&log).len(), 2, "--live started the worker");
}

/// What the settings page reads and saves through: the registry over the host's category
/// source has the described schema (so the page has its form) and refuses an invalid save,
/// naming both fields, without loading the plugin.
#[tokio::test]
async fn the_registry_over_the_host_validates_with_the_described_schema() {
    use std::sync::Arc;
    let s = Scratch::new();
    let (_, log) = logged_transcriber(&s);
    let m = s.manager();
    let registry = cjm_registry::PluginRegistry::new(s.dir.path().join("configs")).unwrap();
    registry
        .register_plugin_manager(
            "transcription",
            Arc::new(cjm_registry::HostCategorySource::new(
                m.clone(),
                "transcription",
            )),
            None,
            true,
        )
        .await
        .unwrap();
    let meta = registry
        .plugin("transcription.transcriber")
        .expect("registered");
    assert_eq!(
        meta.config_schema,
        describe(&built("transcriber")).config_schema
    );
    let bad: cjm_registry::Config =
        serde_json::from_value(json!({"word_delay_ms": "lots", "bogus_key": 1})).unwrap();
    let err = registry
        .save_plugin_config("transcription.transcriber", &bad)
        .unwrap_err();
    let fields: Vec<String> = err.field_errors().iter().map(|f| f.field.clone()).collect();
    assert!(fields.contains(&"word_delay_ms".to_owned()), "{fields:?}");
    assert!(fields.contains(&"bogus_key".to_owned()), "{fields:?}");
    assert!(registry
        .load_plugin_config("transcription.transcriber")
        .unwrap()
        .is_none());
    assert!(!m.is_loaded("transcriber"));
    assert_eq!(starts(&log), ["--describe"]);
}
