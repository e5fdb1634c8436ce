//! `cjm` over a `.cjm/` laid out as `cjm-ctl install-all` (cjm-plugin-system 0.0.46) writes
//! it: v2.0 plugins, an adapter, a plugin without category and an invalid manifest, beside a
//! native plugin that must stay callable; and `cjm secret`, which never shows a value.

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/cjm-core/tests/fixtures/cjm-ctl-0046")
}

/// A project directory with `.cjm/manifests/` as `cjm-ctl install-all` fills it, and a
/// separate data directory.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join(".cjm/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        for f in std::fs::read_dir(fixtures()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, manifests.join(f.file_name().unwrap())).unwrap();
        }
        // A native plugin with an empty category: it used to break every call.
        let native = json!({"name": "t", "version": "1.0.0", "category": "",
                            "command": common::worker_bin()});
        std::fs::write(manifests.join("t.json"), native.to_string()).unwrap();
        Self { dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cjm(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(common::cjm_bin())
            .current_dir(self.dir.path())
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn list_validate_and_call_over_an_install_all_layout() {
    let p = Project::new();
    let out = p.cjm(&["list", "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugins = v["plugins"].as_array().unwrap();
    let get = |name: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {v}"))
    };
    assert_eq!(get("cjm-text-plugin-nltk")["category"], "text");
    assert_eq!(get("cjm-text-plugin-nltk")["format_version"], "2.0");
    assert_eq!(get("cjm-text-plugin-nltk")["generation"], "v0046");
    assert_eq!(get("cjm-graph-plugin-sqlite")["category"], "graph");
    assert_eq!(get("legacy-echo")["category"], "uncategorized");
    assert_eq!(get("legacy-echo")["generation"], "seed");
    assert_eq!(get("t")["category"], "uncategorized");
    assert_eq!(get("t")["generation"], "native");
    let ffmpeg = get("cjm-media-plugin-ffmpeg");
    assert_eq!(ffmpeg["generation"], "substrate", "from install.resolved");
    assert_eq!(
        ffmpeg["category"], "uncategorized",
        "substrate records no taxonomy"
    );
    assert_eq!(plugins.len(), 5, "the adapter is not a plugin: {v}");
    let adapters = v["adapters"].as_array().unwrap();
    assert_eq!(adapters.len(), 1);
    assert_eq!(adapters[0]["task"], "graph-storage");
    assert_eq!(adapters[0]["plugins"], json!(["cjm-graph-plugin-sqlite"]));
    let invalid = v["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 1, "{v}");
    assert!(invalid[0]["file"]
        .as_str()
        .unwrap()
        .ends_with("broken-v2.json"));
    let fields: Vec<&str> = invalid[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert!(fields.contains(&"code.name"), "{fields:?}");

    let plain = text(&p.cjm(&["list"], None).stdout);
    assert!(plain.contains("adapters:"), "{plain}");
    assert!(
        plain.contains("binds to cjm-graph-plugin-sqlite"),
        "{plain}"
    );
    assert!(
        plain.contains("broken-v2.json: install.python_path:"),
        "{plain}"
    );

    // validate checks v2 and adapter files: only the broken one fails.
    let out = p.cjm(&["validate"], None);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stdout);
    assert!(said.contains("broken-v2.json: code.name:"), "{said}");
    assert!(!said.contains("nltk"), "{said}");
    assert!(!said.contains("adapter-graph-storage"), "{said}");
    let one = p.cjm(
        &[
            "validate",
            fixtures()
                .join("cjm-text-plugin-nltk.json")
                .to_str()
                .unwrap(),
            fixtures()
                .join("adapter-graph-storage-SQLiteGraphStorage.json")
                .to_str()
                .unwrap(),
        ],
        None,
    );
    assert!(one.status.success(), "{}", text(&one.stdout));

    // The odd manifests beside it break no call to the native plugin.
    let out = p.cjm(
        &[
            "call",
            "t",
            "--args",
            r#"["greet"]"#,
            "--kwargs",
            r#"{"name":"Ada"}"#,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!("hello Ada")
    );
}

#[test]
fn secrets_are_set_from_stdin_listed_without_values_and_unset() {
    let p = Project::new();
    let value = "sk-very-secret-value";
    let out = p.cjm(
        &["secret", "set", "cjm-text-plugin-nltk", "NLTK_PROXY_TOKEN"],
        Some(&format!("{value}\n")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = p.data().join("secrets/secrets.json");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        stored,
        json!({"__default__": {"cjm-text-plugin-nltk": {"NLTK_PROXY_TOKEN": value}}}),
        "the original's LocalSecretStore format"
    );
    let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);

    for args in [&["secret", "list"][..], &["secret", "list", "--json"][..]] {
        let out = p.cjm(args, None);
        assert!(out.status.success());
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(all.contains("NLTK_PROXY_TOKEN"), "{all}");
        assert!(!all.contains(value), "a value was printed: {all}");
    }
    let set_again = p.cjm(
        &["secret", "set", "cjm-text-plugin-nltk", "NLTK_PROXY_TOKEN"],
        Some(value),
    );
    let all = format!("{}{}", text(&set_again.stdout), text(&set_again.stderr));
    assert!(!all.contains(value), "{all}");

    let empty = p.cjm(&["secret", "set", "x", "K"], Some(""));
    assert_eq!(empty.status.code(), Some(10), "an empty value is refused");
    let out = p.cjm(
        &[
            "secret",
            "unset",
            "cjm-text-plugin-nltk",
            "NLTK_PROXY_TOKEN",
        ],
        None,
    );
    assert!(out.status.success());
    let out = p.cjm(&["secret", "list", "--json"], None);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({})
    );
}

#[test]
fn a_secret_typed_at_a_terminal_prompt_is_never_echoed() {
    let p = Project::new();
    let value = "typed-at-the-prompt";
    let python = std::env::var_os("CJM_TEST_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"));
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/pty_answer.py");
    let out = Command::new(&python)
        .arg(driver)
        .arg(common::cjm_bin())
        .arg("--data-dir")
        .arg(p.data())
        .args(["secret", "set", "cjm-text-plugin-nltk", "NLTK_PROXY_TOKEN"])
        .env("PTY_ANSWER", value)
        .output()
        .expect("run the pty driver (needs Python 3: set CJM_TEST_PYTHON)");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(shown.contains("(not shown)"), "{shown}");
    assert!(!shown.contains(value), "the value was echoed: {shown}");
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(p.data().join("secrets/secrets.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        stored["__default__"]["cjm-text-plugin-nltk"]["NLTK_PROXY_TOKEN"],
        value
    );
}
