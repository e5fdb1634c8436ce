use super::*;
use serde_json::json;

const ORIGINAL_EXAMPLE: &str = r#"{"name": "example-transcriber", "version": "0.3.1", "category": "transcription",
 "module": "example_transcriber.plugin", "class": "ExampleTranscriberPlugin",
 "python_path": "/opt/micromamba/envs/example-transcriber/bin/python",
 "resources": {"requires_gpu": true, "min_gpu_vram_mb": 4096, "min_system_ram_mb": 8192},
 "config_schema": {"title": "ExampleConfig", "type": "object",
   "properties": {"model": {"type": "string", "enum": ["small", "large"], "default": "small"}}}}"#;

#[test]
fn the_originals_example_parses() {
    let m = Manifest::parse(ORIGINAL_EXAMPLE, None).unwrap();
    assert_eq!(m.name, "example-transcriber");
    assert_eq!(m.version, "0.3.1");
    assert_eq!(m.category, "transcription");
    assert!(m.resources.requires_gpu);
    assert_eq!(m.resources.min_gpu_vram_mb, Some(4096));
    assert_eq!(m.resources.min_system_ram_mb, Some(8192));
    assert_eq!(
        m.worker(),
        WorkerSpec::Python {
            python_path: "/opt/micromamba/envs/example-transcriber/bin/python",
            module: "example_transcriber.plugin",
            class: "ExampleTranscriberPlugin",
        }
    );
    assert_eq!(
        m.effective_execution_mode(),
        PluginExecutionMode::Subprocess
    );
    assert_eq!(m.restart, RestartPolicy::OnFailure);
    assert_eq!(m.startup_timeout(), DEFAULT_STARTUP_TIMEOUT);
    assert_eq!(
        m.config_defaults(),
        json!({"model": "small"}).as_object().unwrap().clone()
    );
}

#[test]
fn every_original_field_and_unknown_fields_are_kept() {
    let text = json!({
        "name": "gemini", "version": "1.0", "description": "LLM", "author": "cj",
        "module": "gemini.plugin", "class": "GeminiPlugin", "python_path": "/envs/g/bin/python",
        "env_vars": {"GOOGLE_API_KEY": "x"}, "category": "llm",
        "interface": "cjm_llm.LLMInterface", "type": "llm",
        "config_schema": {"type": "object", "properties": {}},
        "resources": {"requires_gpu": false, "min_system_ram_mb": 512.5, "vendor_hint": "tpu"},
        "db_path": "/data/g.db", "conda_env": "gemini",
        "installed_at": "2026-01-01", "nested": {"k": [1, 2]}
    })
    .to_string();
    let m = Manifest::parse(&text, Some(Path::new("/m/gemini.json"))).unwrap();
    assert_eq!(m.author, "cj");
    assert_eq!(m.env_vars["GOOGLE_API_KEY"], "x");
    assert_eq!(m.interface.as_deref(), Some("cjm_llm.LLMInterface"));
    assert_eq!(m.plugin_type.as_deref(), Some("llm"));
    assert_eq!(m.db_path.as_deref(), Some("/data/g.db"));
    assert_eq!(m.conda_env.as_deref(), Some("gemini"));
    assert_eq!(
        m.resources.min_system_ram_mb,
        Some(513),
        "fractions round up"
    );
    assert_eq!(m.resources.extra["vendor_hint"], "tpu");
    assert_eq!(m.extra["installed_at"], "2026-01-01");
    assert_eq!(m.extra["nested"], json!({"k": [1, 2]}));
    assert_eq!(m.effective_execution_mode(), PluginExecutionMode::CondaEnv);
    assert_eq!(m.base_dir(), Some(Path::new("/m")));
    // Serializing keeps the unknown fields, and the result parses to the same manifest.
    let again = Manifest::parse(&serde_json::to_string(&m).unwrap(), m.path.as_deref()).unwrap();
    assert_eq!(again, m);
}

#[test]
fn native_manifest_with_cjm_extensions() {
    let m = Manifest::parse(
        &json!({
            "name": "echo", "command": "./echo-worker", "args": ["--fast"],
            "restart": "always", "max_concurrency": 8, "startup_timeout_secs": 2.5,
            "call_timeout_secs": 30, "execution_mode": "subprocess", "title": "Echo"
        })
        .to_string(),
        None,
    )
    .unwrap();
    assert_eq!(
        m.worker(),
        WorkerSpec::Native {
            command: "./echo-worker",
            args: &["--fast".to_owned()]
        }
    );
    assert_eq!(m.restart, RestartPolicy::Always);
    assert_eq!(m.max_concurrency, Some(8));
    assert_eq!(m.startup_timeout(), Duration::from_millis(2500));
    assert_eq!(m.call_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(m.version, "0.0.0");
    let on_failure =
        Manifest::parse(r#"{"name":"x","command":"x","restart":"on_failure"}"#, None).unwrap();
    assert_eq!(on_failure.restart, RestartPolicy::OnFailure);
}

#[test]
fn nulls_count_as_absent() {
    let m = Manifest::parse(
        r#"{"name":"n","command":"w","db_path":null,"version":null,"config_schema":null,"resources":{"min_gpu_vram_mb":null}}"#,
        None,
    )
    .unwrap();
    assert_eq!(m.version, "0.0.0");
    assert_eq!(m.db_path, None);
    assert_eq!(m.resources.min_gpu_vram_mb, None);
}

#[test]
fn in_process_manifests_need_no_command() {
    let m = Manifest::parse(r#"{"name":"local","execution_mode":"in_process"}"#, None).unwrap();
    assert_eq!(m.worker(), WorkerSpec::InProcess);
    assert_eq!(m.effective_execution_mode(), PluginExecutionMode::InProcess);
}

/// One row: case name, manifest text, expected problems as `(field, reason substring)`.
type BadCase = (&'static str, String, Vec<(&'static str, &'static str)>);

fn bad_manifests() -> Vec<BadCase> {
    let ok = |extra: serde_json::Value| {
        let mut base = json!({"name": "p", "command": "w"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base.to_string()
    };
    vec![
        (
            "not json",
            "{name: p".into(),
            vec![(
                "",
                "not valid JSON: key must be a string (line 1, column 2)",
            )],
        ),
        (
            "trailing garbage",
            r#"{"name":"p","command":"w"} x"#.into(),
            vec![(
                "",
                "not valid JSON: trailing characters (line 1, column 28)",
            )],
        ),
        (
            "empty file",
            "".into(),
            vec![(
                "",
                "not valid JSON: EOF while parsing a value (line 1, column 0)",
            )],
        ),
        (
            "array document",
            "[1]".into(),
            vec![("", "must be a JSON object, found an array")],
        ),
        (
            "missing name",
            ok(json!({"name": null})),
            vec![("name", "is required")],
        ),
        (
            "numeric name",
            ok(json!({"name": 7})),
            vec![("name", "must be a string, found a number")],
        ),
        (
            "name with slash",
            ok(json!({"name": "../evil"})),
            vec![("name", "\"../evil\" is not a safe identifier")],
        ),
        (
            "name with space",
            ok(json!({"name": "my plugin"})),
            vec![("name", "\"my plugin\" is not a safe identifier")],
        ),
        (
            "empty name",
            ok(json!({"name": ""})),
            vec![("name", "\"\" is not a safe identifier")],
        ),
        (
            "name too long",
            ok(json!({"name": "a".repeat(65)})),
            vec![("name", "is not a safe identifier: use 1-64")],
        ),
        (
            "name starting with dot",
            ok(json!({"name": ".hidden"})),
            vec![("name", "\".hidden\" is not a safe identifier")],
        ),
        (
            "nothing to run",
            json!({"name": "p"}).to_string(),
            vec![(
                "command",
                "needs either `command` (a native worker) or `python_path`, `module` and `class`",
            )],
        ),
        (
            "python without class",
            json!({"name": "p", "python_path": "/py", "module": "m"}).to_string(),
            vec![("class", "is required for a Python worker")],
        ),
        (
            "python without path and module",
            json!({"name": "p", "class": "C"}).to_string(),
            vec![
                ("python_path", "is required for a Python worker"),
                ("module", "is required for a Python worker"),
            ],
        ),
        (
            "both command and python",
            ok(json!({"python_path": "/py", "module": "m", "class": "C"})),
            vec![("command", "not both")],
        ),
        (
            "empty command",
            ok(json!({"command": "  "})),
            vec![("command", "must not be empty")],
        ),
        (
            "command not a string",
            ok(json!({"command": ["w"]})),
            vec![("command", "must be a string, found an array")],
        ),
        (
            "bad module",
            json!({"name": "p", "python_path": "/py", "module": "my-mod.x", "class": "C"})
                .to_string(),
            vec![("module", "\"my-mod.x\" is not a dotted Python module path")],
        ),
        (
            "bad class",
            json!({"name": "p", "python_path": "/py", "module": "m", "class": "1C"}).to_string(),
            vec![("class", "\"1C\" is not a Python class name")],
        ),
        (
            "version as number",
            ok(json!({"version": 1.0})),
            vec![("version", "must be a string, found a number")],
        ),
        (
            "category as object",
            ok(json!({"category": {}})),
            vec![("category", "must be a string, found an object")],
        ),
        (
            "env_vars as list",
            ok(json!({"env_vars": ["A=1"]})),
            vec![("env_vars", "must be an object of strings, found an array")],
        ),
        (
            "env var not a string",
            ok(json!({"env_vars": {"PORT": 80}})),
            vec![("env_vars.PORT", "must be a string, found a number")],
        ),
        (
            "env var bad name",
            ok(json!({"env_vars": {"A=B": "x"}})),
            vec![("env_vars.A=B", "is not a valid environment variable name")],
        ),
        (
            "schema not an object",
            ok(json!({"config_schema": "x"})),
            vec![(
                "config_schema",
                "must be a JSON Schema object, found a string",
            )],
        ),
        (
            "schema of wrong type",
            ok(json!({"config_schema": {"type": "array"}})),
            vec![(
                "config_schema.type",
                "must have type \"object\", found \"array\"",
            )],
        ),
        (
            "schema properties not an object",
            ok(json!({"config_schema": {"properties": []}})),
            vec![(
                "config_schema.properties",
                "must be an object, found an array",
            )],
        ),
        (
            "resources not an object",
            ok(json!({"resources": 5})),
            vec![("resources", "must be an object, found a number")],
        ),
        (
            "negative vram",
            ok(json!({"resources": {"min_gpu_vram_mb": -1}})),
            vec![(
                "resources.min_gpu_vram_mb",
                "must not be negative, found -1",
            )],
        ),
        (
            "ram beyond any machine",
            ok(json!({"resources": {"min_system_ram_mb": 1e19}})),
            vec![(
                "resources.min_system_ram_mb",
                "10000000000000000000 MB is beyond any machine (at most 1099511627776 MB, 1 EiB)",
            )],
        ),
        (
            "vram beyond any machine",
            ok(json!({"resources": {"min_gpu_vram_mb": 1099511627777u64}})),
            vec![(
                "resources.min_gpu_vram_mb",
                "1099511627777 MB is beyond any machine (at most 1099511627776 MB, 1 EiB)",
            )],
        ),
        (
            "ram as string",
            ok(json!({"resources": {"min_system_ram_mb": "8GB"}})),
            vec![(
                "resources.min_system_ram_mb",
                "must be a number, found a string",
            )],
        ),
        (
            "requires_gpu as string",
            ok(json!({"resources": {"requires_gpu": "yes"}})),
            vec![(
                "resources.requires_gpu",
                "must be true or false, found a string",
            )],
        ),
        (
            "unknown restart",
            ok(json!({"restart": "sometimes"})),
            vec![(
                "restart",
                "must be one of \"never\", \"on-failure\", \"always\"; found \"sometimes\"",
            )],
        ),
        (
            "zero concurrency",
            ok(json!({"max_concurrency": 0})),
            vec![(
                "max_concurrency",
                "must be an integer from 1 to 65536, found 0",
            )],
        ),
        (
            "fractional concurrency",
            ok(json!({"max_concurrency": 1.5})),
            vec![("max_concurrency", "found 1.5")],
        ),
        (
            "negative startup timeout",
            ok(json!({"startup_timeout_secs": -3})),
            vec![("startup_timeout_secs", "must be more than 0")],
        ),
        (
            "timeout as string",
            ok(json!({"call_timeout_secs": "10s"})),
            vec![("call_timeout_secs", "must be a number, found a string")],
        ),
        (
            "unknown execution mode",
            ok(json!({"execution_mode": "lambda"})),
            vec![("execution_mode", "unknown execution mode `lambda`")],
        ),
        (
            "args not strings",
            ok(json!({"args": ["--x", 3]})),
            vec![("args[1]", "must be a string, found a number")],
        ),
    ]
}

#[test]
fn bad_manifests_are_rejected_with_precise_errors() {
    let table = bad_manifests();
    assert!(table.len() >= 20);
    for (case, text, expected) in table {
        let err = Manifest::parse(&text, Some(Path::new("/m/p.json"))).expect_err(case);
        assert_eq!(
            err.problems.len(),
            expected.len(),
            "{case}: got {:?}",
            err.problems
        );
        for ((field, reason), got) in expected.iter().zip(&err.problems) {
            assert_eq!(&got.field, field, "{case}: {got:?}");
            assert!(
                got.reason.contains(reason),
                "{case}: reason {:?} lacks {reason:?}",
                got.reason
            );
        }
        assert_eq!(err.file.as_deref(), Some(Path::new("/m/p.json")));
        assert!(err.to_string().starts_with("/m/p.json: "), "{case}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = Manifest::parse(
        &json!({"name": 3, "version": 1, "resources": {"min_gpu_vram_mb": -5}, "restart": 1})
            .to_string(),
        Some(Path::new("bad.json")),
    )
    .unwrap_err();
    let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "version",
            "command",
            "resources.min_gpu_vram_mb",
            "restart"
        ]
    );
    let text = err.to_string();
    assert_eq!(text.lines().count(), 5);
    assert!(text.lines().all(|l| l.starts_with("bad.json: ")));
}

#[test]
fn load_names_the_unreadable_file() {
    let err = Manifest::load(Path::new("/definitely/not/here.json")).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("/definitely/not/here.json: cannot read the file"));
}

#[test]
fn plugin_names() {
    for good in ["a", "echo", "whisper-large_v3.1", "A9"] {
        assert!(is_valid_plugin_name(good), "{good}");
    }
    for bad in ["", "-a", "_a", ".a", "a/b", "a b", "é", "a\0"] {
        assert!(!is_valid_plugin_name(bad), "{bad:?}");
    }
}

#[test]
fn a_remote_worker_is_named_by_url_ca_and_secret_key() {
    let m = Manifest::parse(
        r#"{"name": "far", "execution_mode": "remote",
            "remote": {"url": "https://gpu-box:7000", "ca_file": "ca.pem", "token_secret": "TOKEN"}}"#,
        None,
    )
    .unwrap();
    assert_eq!(m.effective_execution_mode(), PluginExecutionMode::Remote);
    let WorkerSpec::Remote(r) = m.worker() else {
        panic!("not remote: {:?}", m.worker())
    };
    assert_eq!(r.authority(), Some(("gpu-box", 7000)));
    // The mode follows from `remote` alone.
    let m = Manifest::parse(
        r#"{"name": "far", "remote": {"url": "https://[::1]:7000/", "ca_file": "c", "token_secret": "T"}}"#,
        None,
    )
    .unwrap();
    assert_eq!(m.effective_execution_mode(), PluginExecutionMode::Remote);
    assert_eq!(
        m.remote.as_ref().and_then(|r| r.authority()),
        Some(("::1", 7000))
    );
}

#[test]
fn remote_problems_name_their_field() {
    let problems = |text: &str| -> Vec<(String, String)> {
        match Manifest::parse(text, None) {
            Ok(m) => panic!("accepted: {m:?}"),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| (p.field, p.reason))
                .collect(),
        }
    };
    let p = problems(r#"{"name": "far", "execution_mode": "remote"}"#);
    assert_eq!(p[0].0, "execution_mode", "{p:?}");
    assert!(p[0].1.contains("`remote` block"), "{p:?}");
    let p = problems(
        r#"{"name": "far", "remote": {"url": "http://box:1", "ca_file": "c", "token_secret": "T", "token": "s3cret"}}"#,
    );
    let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
    assert!(fields.contains(&"remote.token"), "{p:?}");
    assert!(fields.contains(&"remote.url"), "{p:?}");
    assert!(p.iter().any(|(_, r)| r.contains("cjm secret set")), "{p:?}");
    let p = problems(
        r#"{"name": "far", "command": "w", "remote": {"url": "https://b:1", "ca_file": "c", "token_secret": ""}}"#,
    );
    let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["remote.token_secret", "remote"], "{p:?}");
    let p = problems(
        r#"{"name": "far", "execution_mode": "subprocess", "remote": {"url": "https://b:1", "ca_file": "c", "token_secret": "T"}}"#,
    );
    assert_eq!(p[0].0, "execution_mode", "{p:?}");
}

#[test]
fn a_ray_placement_is_a_native_worker_with_optional_resources() {
    let m = Manifest::parse(
        r#"{"name": "big", "command": "/opt/w", "execution_mode": "ray",
            "ray": {"num_cpus": 2, "num_gpus": 0.5, "memory": 1073741824,
                    "runtime_env": {"pip": ["numpy"], "env_vars": {"A": "1"}}}}"#,
        None,
    )
    .unwrap();
    assert_eq!(m.effective_execution_mode(), PluginExecutionMode::Ray);
    assert!(matches!(m.worker(), WorkerSpec::Native { .. }));
    let ray = m.ray.as_ref().unwrap();
    assert_eq!(ray.num_gpus, Some(0.5));
    assert_eq!(ray.memory, Some(1 << 30));
    assert_eq!(ray.runtime_env.as_ref().unwrap()["pip"][0], "numpy");
    // The block alone implies the mode, and the mode needs no block.
    let m = Manifest::parse(r#"{"name": "big", "command": "w", "ray": {}}"#, None).unwrap();
    assert_eq!(m.effective_execution_mode(), PluginExecutionMode::Ray);
    let m = Manifest::parse(
        r#"{"name": "big", "command": "w", "execution_mode": "ray"}"#,
        None,
    )
    .unwrap();
    assert_eq!(m.effective_execution_mode(), PluginExecutionMode::Ray);
    assert_eq!(m.ray, None);
}

#[test]
fn ray_problems_name_their_field() {
    let problems = |text: &str| -> Vec<(String, String)> {
        match Manifest::parse(text, None) {
            Ok(m) => panic!("accepted: {m:?}"),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| (p.field, p.reason))
                .collect(),
        }
    };
    let p = problems(
        r#"{"name": "x", "command": "w", "ray": {"num_gpus": -1, "memory": 1.5,
            "runtime_env": {"env_vars": {"A": 1}}, "nodes": 3}}"#,
    );
    let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
    for f in [
        "ray.num_gpus",
        "ray.memory",
        "ray.runtime_env.env_vars.A",
        "ray.nodes",
    ] {
        assert!(fields.contains(&f), "{f} missing from {p:?}");
    }
    let p = problems(r#"{"name": "x", "command": "w", "execution_mode": "subprocess", "ray": {}}"#);
    assert_eq!(p[0].0, "ray", "{p:?}");
    let p = problems(
        r#"{"name": "x", "execution_mode": "ray", "python_path": "/p", "module": "m", "class": "C"}"#,
    );
    assert!(
        p.iter()
            .any(|(f, r)| f == "execution_mode" && r.contains("native")),
        "{p:?}"
    );
    let p = problems(r#"{"name": "x", "command": "w", "ray": []}"#);
    assert_eq!(
        p[0],
        (
            "ray".to_owned(),
            "must be an object, found an array".to_owned()
        )
    );
}
