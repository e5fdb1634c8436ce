//! Properties of configuration validation against the sample plugins' schemas (their
//! `/config_schema` answers, in `schemas/`): any JSON value is accepted or refused with a
//! `config` error naming each field; changing one field of a valid configuration is refused,
//! if at all, naming only that field; and no schema, however odd, makes compiling panic.

mod common;

use cjm_core::schema::{schema_defaults, with_defaults};
use cjm_core::{ConfigValidator, ErrorCategory};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The sample schemas: two sample plugins' and one with required and nested fields.
fn schemas() -> Vec<(&'static str, Value)> {
    let parse = |s: &str| serde_json::from_str::<Value>(s).expect("a sample schema is JSON");
    vec![
        (
            "config-rich",
            parse(include_str!("schemas/config-rich.json")),
        ),
        (
            "transcriber",
            parse(include_str!("schemas/transcriber.json")),
        ),
        (
            "nested",
            json!({
                "type": "object",
                "required": ["model"],
                "properties": {
                    "model": {"type": "string", "enum": ["small", "large"], "default": "small"},
                    "limits": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {"beam": {"type": "integer", "minimum": 1, "maximum": 10}},
                        "default": {"beam": 2}
                    },
                    "tags": {"type": "array", "items": {"type": "string"}, "default": []}
                }
            }),
        ),
    ]
}

fn validators() -> Vec<(&'static str, Value, ConfigValidator)> {
    schemas()
        .into_iter()
        .map(|(name, s)| {
            let v = ConfigValidator::new(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, s, v)
        })
        .collect()
}

/// The top-level property names of `schema`.
fn properties(schema: &Value) -> Vec<String> {
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The first segment of a field path, unescaped (`tags/1` → `tags`, `a~1b/0` → `a/b`).
fn head(field: &str) -> String {
    let first = field.split('/').next().unwrap_or_default();
    first.replace("~1", "/").replace("~0", "~")
}

/// A configuration: any value, or an object over the schema's own keys and others.
fn config(keys: Vec<String>) -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => common::json(),
        3 => prop::collection::vec((prop::sample::select(keys), common::json()), 0..8)
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        1 => common::json_object().prop_map(Value::Object),
    ]
}

/// Checks one validation: `validate` agrees with `problems`, a refusal is a `config` error with
/// at least one field, and for an object every field starts at one of its keys or at a schema
/// property (a missing required one).
fn check(
    schema: &Value,
    v: &ConfigValidator,
    config: &Value,
) -> Result<Vec<String>, TestCaseError> {
    let problems = v.problems(config);
    match v.validate(config) {
        Ok(()) => {
            prop_assert!(problems.is_empty());
            Ok(Vec::new())
        }
        Err(e) => {
            prop_assert_eq!(e.category, ErrorCategory::Config);
            prop_assert!(!e.details.fields.is_empty());
            prop_assert_eq!(&e.details.fields, &problems);
            let fields: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
            if let Value::Object(obj) = config {
                let props = properties(schema);
                for f in &fields {
                    let h = head(f);
                    prop_assert!(
                        obj.contains_key(&h) || props.contains(&h),
                        "field {:?} is neither a key of {} nor a property",
                        f,
                        config
                    );
                }
            }
            Ok(fields)
        }
    }
}

proptest! {
    #![proptest_config(common::config())]

    /// Any configuration against each sample schema.
    #[test]
    fn any_config_is_accepted_or_refused_naming_fields(
        which in 0usize..3,
        seed in any::<prop::sample::Index>(),
        raw in common::json(),
    ) {
        // The strategy for objects over the schema's keys needs the schema: build it here.
        let all = validators();
        let (_, schema, v) = &all[which];
        check(schema, v, &raw)?;
        let keys = properties(schema);
        let mut obj = Map::new();
        if let Value::Object(extra) = &raw {
            for (i, (k, val)) in extra.iter().enumerate() {
                let key = if i % 2 == 0 { keys[seed.index(keys.len())].clone() } else { k.clone() };
                obj.insert(key, val.clone());
            }
        }
        check(schema, v, &Value::Object(obj))?;
    }

    /// Objects over each schema's keys with any values.
    #[test]
    fn objects_over_the_schema_keys(config in config(properties(&schemas()[0].1))) {
        let all = validators();
        let (_, schema, v) = &all[0];
        check(schema, v, &config)?;
    }

    /// One field of the defaults (which are valid) set to any value: accepted, or refused
    /// naming that field only.
    #[test]
    fn one_changed_field_is_the_only_one_named(
        which in 0usize..3,
        key in any::<prop::sample::Index>(),
        value in common::json(),
    ) {
        let all = validators();
        let (_, schema, v) = &all[which];
        let defaults = schema_defaults(schema);
        prop_assert!(v.validate(&Value::Object(defaults.clone())).is_ok(), "the defaults are valid");
        let keys = properties(schema);
        let k = keys[key.index(keys.len())].clone();
        let mut config = Map::new();
        config.insert(k.clone(), value);
        let merged = Value::Object(with_defaults(&defaults, config));
        for f in check(schema, v, &merged)? {
            prop_assert_eq!(head(&f), k.clone(), "{} named for a change of {}", f, k);
        }
    }

    /// Odd schemas: compiling gives a validator or a `config` error, never a panic; a
    /// validator then checks any value without panicking.
    #[test]
    fn odd_schemas_never_panic(
        keywords in prop::collection::vec((
            prop::sample::select(vec![
                "type", "properties", "required", "additionalProperties", "items", "enum",
                "const", "minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength",
                "pattern", "format", "$ref", "$defs", "allOf", "anyOf", "oneOf", "not",
                "if", "then", "else", "default", "uniqueItems", "multipleOf",
                "patternProperties", "propertyNames", "dependentRequired", "minItems",
            ]),
            common::json(),
        ), 0..6),
        config in common::json(),
    ) {
        let schema = Value::Object(keywords.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        match ConfigValidator::new(&schema) {
            Ok(v) => {
                let _ = v.validate(&config);
            }
            Err(e) => prop_assert_eq!(e.category, ErrorCategory::Config),
        }
    }
}

/// Keys with `/` or `~` are named as JSON pointers escape them, whatever the error: an unknown
/// key, a missing required one, or a wrong value.
#[test]
fn field_paths_escape_slash_and_tilde() {
    let schema = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["r/q"],
        "properties": {"x/y": {"type": "integer"}, "r/q": {}}
    });
    let v = ConfigValidator::new(&schema).unwrap();
    let mut fields: Vec<String> = v
        .problems(&json!({"x/y": "s", "a/b~c": 1}))
        .into_iter()
        .map(|f| f.field)
        .collect();
    fields.sort();
    assert_eq!(fields, ["a~1b~0c", "r~1q", "x~1y"]);
}
