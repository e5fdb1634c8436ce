//! Properties of the manifest reader: any text is a manifest or a typed [`ManifestError`];
//! for any JSON object every problem names its field; an accepted manifest survives a round
//! trip through JSON and its accessors never panic.

mod common;

use cjm_core::{Manifest, PluginExecutionMode};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The known top-level fields, each with a strategy for a value the reader accepts.
fn valid_field(field: &'static str) -> BoxedStrategy<Value> {
    let s = |re: &'static str| re.prop_map(Value::String).boxed();
    match field {
        "name" => s("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}"),
        "version" | "description" | "author" | "title" | "category" | "interface" | "type"
        | "db_path" | "conda_env" => common::text().prop_map(Value::String).boxed(),
        "module" => s("[a-z_][a-z0-9_]{0,6}(\\.[a-z_][a-z0-9_]{0,6}){0,2}"),
        "class" => s("[A-Z][A-Za-z0-9_]{0,8}"),
        "python_path" | "command" => s("[a-z/._-]{0,6}[a-z]"),
        "args" => prop::collection::vec(common::text(), 0..4)
            .prop_map(|v| json!(v))
            .boxed(),
        "env_vars" => prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,6}", "[ -~]{0,8}", 0..4)
            .prop_map(|m| json!(m))
            .boxed(),
        "config_schema" => common::json_object()
            .prop_map(|props| json!({"type": "object", "properties": props}))
            .boxed(),
        "resources" => resources(0).boxed(),
        // These manifests start a process (`command`): every mode but `remote`, which has no
        // command and a `remote` block instead.
        "execution_mode" => prop::sample::select(
            PluginExecutionMode::ALL
                .into_iter()
                .filter(|m| *m != PluginExecutionMode::Remote)
                .collect::<Vec<_>>(),
        )
        .prop_map(|m| json!(m.as_str()))
        .boxed(),
        // No `remote` block is valid beside a `command`: null, which reads as absent.
        "remote" => Just(Value::Null).boxed(),
        // A `ray` block implies `execution_mode: ray`, so beside any other mode only null
        // (absent) is valid; its own checks are unit tests.
        "ray" => Just(Value::Null).boxed(),
        "restart" => prop::sample::select(vec!["never", "on-failure", "on_failure", "always"])
            .prop_map(|r| json!(r))
            .boxed(),
        "max_concurrency" => (1u32..=65_536).prop_map(|n| json!(n)).boxed(),
        _ => prop_oneof![
            (1u32..=604_800).prop_map(|n| json!(n)),
            (0.001..604_800.0f64).prop_map(|x| json!(x))
        ]
        .boxed(),
    }
}

/// Every field the reader knows, from the reader itself.
const FIELDS: &[&str] = cjm_core::manifest::KNOWN_FIELDS;

/// A value for a field: absent, null, a valid value, or (with weight `wrong`) anything at all.
fn some_value(valid: BoxedStrategy<Value>, wrong: u32) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some(Value::Null)),
        3 => valid.prop_map(Some),
        wrong => common::json().prop_map(Some),
    ]
}

/// A `resources` object: its four keys, each absent, null, valid or anything, plus extras.
fn resources(wrong: u32) -> impl Strategy<Value = Value> {
    let mb = |wrong| {
        some_value(
            prop_oneof![
                (0u64..100_000).prop_map(|n| json!(n)),
                (0.0..1e6f64).prop_map(|x| json!(x))
            ]
            .boxed(),
            wrong,
        )
    };
    (
        some_value(any::<bool>().prop_map(Value::Bool).boxed(), wrong),
        mb(wrong),
        mb(wrong),
        mb(wrong),
        common::json_object(),
    )
        .prop_map(|(gpu, vram, ram, rec, extra)| {
            let mut m = extra;
            for (k, v) in [
                ("requires_gpu", gpu),
                ("min_gpu_vram_mb", vram),
                ("min_system_ram_mb", ram),
                ("recommended_gpu_vram_mb", rec),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

/// A manifest-shaped object: each known field absent, null, valid or (weight `wrong`) anything,
/// plus unknown fields.
fn manifest_object(wrong: u32) -> impl Strategy<Value = Map<String, Value>> {
    let fields: Vec<_> = FIELDS
        .iter()
        .map(|f| some_value(valid_field(f), wrong))
        .collect();
    (fields, common::json_object()).prop_map(|(values, extra)| {
        let mut m = extra;
        for (f, v) in FIELDS.iter().zip(values) {
            if let Some(v) = v {
                m.insert((*f).to_owned(), v);
            }
        }
        m
    })
}

/// Checks what every manifest result must satisfy; `object` says the input was a JSON object.
fn check(
    result: &Result<Manifest, cjm_core::ManifestError>,
    object: bool,
) -> Result<(), TestCaseError> {
    match result {
        Ok(m) => {
            // Round trip: what we accepted, written out and read again, is the same manifest.
            let v = serde_json::to_value(m).expect("a manifest serializes");
            let back = Manifest::from_value(v.clone(), m.path.as_deref());
            prop_assert_eq!(back.as_ref(), Ok(m), "written as {}", v);
            // The accessors are total on accepted manifests.
            let _ = (
                m.worker(),
                m.effective_execution_mode(),
                m.startup_timeout(),
            );
            let _ = (m.call_timeout(), m.config_defaults(), m.base_dir());
        }
        Err(e) => {
            prop_assert!(!e.problems.is_empty());
            prop_assert!(!e.to_string().is_empty());
            if object {
                for p in &e.problems {
                    prop_assert!(!p.field.is_empty(), "a problem without a field: {:?}", p);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::config())]

    /// Any bytes (read as the file loader would, lossily): no panic, a typed error.
    #[test]
    fn arbitrary_text_is_a_manifest_or_a_typed_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        check(&Manifest::parse(&text, None), false)?;
    }

    /// Any JSON document at all.
    #[test]
    fn arbitrary_json_is_a_manifest_or_a_typed_error(v in common::json()) {
        let object = v.is_object();
        check(&Manifest::parse(&v.to_string(), None), object)?;
    }

    /// Manifest-shaped objects with wrong, null and unknown fields: every problem names its
    /// field, and what is accepted round-trips.
    #[test]
    fn structured_but_wrong_manifests_name_their_fields(m in manifest_object(2)) {
        let text = Value::Object(m).to_string();
        check(&Manifest::parse(&text, Some(std::path::Path::new("p/manifest.json"))), true)?;
    }

    /// Nearly valid manifests (a name and a command, every other field absent, null or valid)
    /// with at most one field, top-level or in `resources`, set to any JSON value: accepted and
    /// round-tripping, or refused with that field named.
    #[test]
    fn one_wrong_field_is_named(
        m in manifest_object(0),
        name in valid_field("name"),
        command in valid_field("command"),
        wrong in prop::option::of((prop::sample::select(FIELDS.to_vec()), common::json())),
        wrong_resource in prop::option::of((
            prop::sample::select(vec!["requires_gpu", "min_gpu_vram_mb", "min_system_ram_mb", "recommended_gpu_vram_mb"]),
            common::json(),
        )),
    ) {
        let mut m = m;
        m.insert("name".into(), name);
        m.insert("command".into(), command);
        for f in ["python_path", "module", "class"] {
            m.remove(f);
        }
        if let Some((field, v)) = &wrong {
            m.insert((*field).to_owned(), v.clone());
        }
        if let Some((key, v)) = &wrong_resource {
            let res = m.entry("resources").or_insert_with(|| json!({}));
            if let Value::Object(res) = res {
                res.insert((*key).to_owned(), v.clone());
            }
        }
        let r = Manifest::parse(&Value::Object(m).to_string(), None);
        check(&r, true)?;
        if let Err(e) = &r {
            let named = |f: &str| e.problems.iter().any(|p| p.field == f || p.field.starts_with(&format!("{f}.")) || p.field.starts_with(&format!("{f}[")));
            let culprit = wrong.as_ref().is_some_and(|(f, _)| named(f) || (*f == "python_path" || *f == "module" || *f == "class") && named("command"))
                || wrong_resource.as_ref().is_some_and(|(k, _)| named(&format!("resources.{k}")) || named("resources"));
            prop_assert!(culprit, "refused without naming the wrong field: {}", e);
        }
    }

    /// With every field valid (and a way to start it), the manifest is accepted.
    #[test]
    fn valid_manifests_are_accepted(
        name in valid_field("name"),
        command in valid_field("command"),
        resources in valid_field("resources"),
        restart in valid_field("restart"),
        timeout in valid_field("startup_timeout_secs"),
    ) {
        let mut resources = resources;
        // Only the four declared keys, with valid values.
        resources.as_object_mut().unwrap().retain(|k, v| match k.as_str() {
            "requires_gpu" => v.is_boolean(),
            "min_gpu_vram_mb" | "min_system_ram_mb" | "recommended_gpu_vram_mb" => v.as_f64().is_some_and(|x| x >= 0.0),
            _ => false,
        });
        let text = json!({
            "name": name, "command": command, "resources": resources,
            "restart": restart, "startup_timeout_secs": timeout,
        })
        .to_string();
        let r = Manifest::parse(&text, None);
        prop_assert!(r.is_ok(), "{} refused: {}", text, r.unwrap_err());
        check(&r, true)?;
    }
}

/// `null` inside `resources` means "absent", as it does at the top level.
#[test]
fn null_resource_fields_are_absent() {
    for key in [
        "requires_gpu",
        "min_gpu_vram_mb",
        "min_system_ram_mb",
        "recommended_gpu_vram_mb",
    ] {
        let text = json!({"name": "a", "command": "a", "resources": {key: null}}).to_string();
        let m = Manifest::parse(&text, None).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(!m.resources.requires_gpu);
        assert_eq!(m.resources.min_gpu_vram_mb, None);
    }
}
