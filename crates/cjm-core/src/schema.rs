//! Configuration JSON Schemas: defaults, and validation that names each invalid field.

use jsonschema::error::ValidationErrorKind;
use serde_json::{Map, Value};

use crate::error::{FieldError, PluginError};

/// What kind of JSON value `v` is, for messages: `"a string"`, `"an object"`, `"null"`, …
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A compiled configuration schema. Compile once (at discovery or load) and validate often.
///
/// A schema that asks for nothing but an object (the schema of a plugin without settings, such
/// as the SDK's `NoConfig`: only annotations, `$schema` a known draft, at most
/// `"type": "object"`) is checked without the JSON Schema engine: compiling one costs a
/// millisecond or more in a fresh process (the engine sets up its meta-schemas), which every
/// worker start and load paid for nothing. The answers are the same.
pub struct ConfigValidator {
    check: Check,
}

enum Check {
    /// Any object (with `object_only`) or any value.
    Trivial { object_only: bool },
    /// The JSON Schema engine's validator.
    Compiled(Box<jsonschema::Validator>),
}

/// Keys a schema may hold, with a string value, and still be checked without the engine
/// (`$id` is not among them: the engine refuses one that is not a URI reference).
const ANNOTATIONS: [&str; 3] = ["title", "description", "$comment"];

/// The drafts' meta-schema URIs a trivial schema may name in `$schema`.
const KNOWN_DRAFTS: [&str; 5] = [
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema#",
    "http://json-schema.org/draft-06/schema#",
    "http://json-schema.org/draft-04/schema#",
];

/// `Some(object_only)` when `schema` asks for nothing but (with `true`) an object.
fn trivial(schema: &Value) -> Option<bool> {
    let o = schema.as_object()?;
    let mut object_only = false;
    for (k, v) in o {
        match k.as_str() {
            "type" if v == "object" => object_only = true,
            "$schema" if v.as_str().is_some_and(|d| KNOWN_DRAFTS.contains(&d)) => {}
            k if ANNOTATIONS.contains(&k) && v.is_string() => {}
            _ => return None,
        }
    }
    Some(object_only)
}

impl std::fmt::Debug for ConfigValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigValidator")
    }
}

impl ConfigValidator {
    /// Compiles `schema`; an invalid schema is a config error naming the schema location.
    pub fn new(schema: &Value) -> Result<Self, PluginError> {
        if let Some(object_only) = trivial(schema) {
            return Ok(Self {
                check: Check::Trivial { object_only },
            });
        }
        jsonschema::validator_for(schema)
            .map(|validator| Self {
                check: Check::Compiled(Box::new(validator)),
            })
            .map_err(|e| {
                PluginError::config(
                    format!("the configuration schema is invalid: {e}"),
                    vec![FieldError {
                        field: e.schema_path().as_str().trim_start_matches('/').to_owned(),
                        reason: e.to_string(),
                    }],
                )
            })
    }

    /// Every problem of `config`, each with the field it concerns. Empty when valid.
    pub fn problems(&self, config: &Value) -> Vec<FieldError> {
        let validator = match &self.check {
            Check::Trivial { object_only } if *object_only && !config.is_object() => {
                // The engine's words for the same failure.
                return vec![FieldError {
                    field: String::new(),
                    reason: format!("{config} is not of type \"object\""),
                }];
            }
            Check::Trivial { .. } => return Vec::new(),
            Check::Compiled(v) => v,
        };
        let mut out = Vec::new();
        for e in validator.iter_errors(config) {
            let base = e
                .instance_path()
                .as_str()
                .trim_start_matches('/')
                .to_owned();
            match e.kind() {
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for key in unexpected {
                        out.push(FieldError {
                            field: join(&base, key),
                            reason: "unknown key: the schema allows no other keys".to_owned(),
                        });
                    }
                }
                ValidationErrorKind::Required { property } => out.push(FieldError {
                    field: join(&base, property.as_str().unwrap_or_default()),
                    reason: "is required".to_owned(),
                }),
                _ => out.push(FieldError {
                    field: base,
                    reason: e.to_string(),
                }),
            }
        }
        out
    }

    /// `Ok` when `config` is valid, else a config error listing every invalid field.
    pub fn validate(&self, config: &Value) -> Result<(), PluginError> {
        let problems = self.problems(config);
        if problems.is_empty() {
            Ok(())
        } else {
            let n = problems.len();
            Err(PluginError::config(
                format!(
                    "invalid configuration ({n} problem{})",
                    if n == 1 { "" } else { "s" }
                ),
                problems,
            ))
        }
    }
}

/// `base` (a JSON pointer without its leading `/`) extended by `key`, escaped as JSON pointers
/// escape it (`~` as `~0`, `/` as `~1`), like the paths `jsonschema` reports.
fn join(base: &str, key: &str) -> String {
    let key = key.replace('~', "~0").replace('/', "~1");
    if base.is_empty() {
        key
    } else {
        format!("{base}/{key}")
    }
}

/// The `default` of every top-level property of `schema`, in schema order.
///
/// The original filled missing configuration from `properties.*.default` the same way.
pub fn schema_defaults(schema: &Value) -> Map<String, Value> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .filter_map(|(k, p)| p.get("default").map(|d| (k.clone(), d.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// The configuration a plugin with `schema` runs with when given `config` (none, or an
/// object): `config` completed with the schema's defaults. Anything but an object or null is
/// refused.
pub fn complete_config(schema: &Value, config: Option<Value>) -> Result<Value, PluginError> {
    let defaults = schema_defaults(schema);
    match config {
        None | Some(Value::Null) => Ok(Value::Object(defaults)),
        Some(Value::Object(given)) => Ok(Value::Object(with_defaults(&defaults, given))),
        Some(other) => Err(PluginError::config(
            format!("a configuration must be a JSON object, not {other}"),
            vec![],
        )),
    }
}

/// `config` with every key of `defaults` it lacks filled in.
pub fn with_defaults(
    defaults: &Map<String, Value>,
    config: Map<String, Value>,
) -> Map<String, Value> {
    let mut out = defaults.clone();
    out.extend(config);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `schema` through the JSON Schema engine, whatever it is.
    fn compiled(schema: &Value) -> ConfigValidator {
        ConfigValidator {
            check: Check::Compiled(Box::new(jsonschema::validator_for(schema).unwrap())),
        }
    }

    #[test]
    fn a_schema_that_asks_only_for_an_object_answers_as_the_engine_does() {
        let no_config = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "NoConfig",
            "description": "any object",
            "type": "object"
        });
        let configs = [
            json!({}),
            json!({"a": 1, "b": [true]}),
            json!([1]),
            json!(5),
            json!("x"),
            json!(null),
            json!(false),
        ];
        for schema in [
            no_config,
            json!({}),
            json!({"type": "object"}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "$comment": "c"}),
        ] {
            let fast = ConfigValidator::new(&schema).unwrap();
            assert!(matches!(fast.check, Check::Trivial { .. }), "{schema}");
            let engine = compiled(&schema);
            for c in &configs {
                assert_eq!(fast.problems(c), engine.problems(c), "{schema} with {c}");
                assert_eq!(
                    fast.validate(c).is_ok(),
                    engine.validate(c).is_ok(),
                    "{schema} with {c}"
                );
            }
        }
        let e = ConfigValidator::new(&json!({"type": "object"}))
            .unwrap()
            .validate(&json!([1]))
            .unwrap_err();
        assert_eq!(e.details.fields[0].reason, "[1] is not of type \"object\"");
    }

    #[test]
    fn any_other_schema_goes_to_the_engine() {
        for schema in [
            json!({"type": "string"}),
            json!({"type": ["object"]}),
            json!({"type": "object", "properties": {}}),
            json!({"type": "object", "additionalProperties": false}),
            json!({"title": 5}),
            json!({"$schema": "https://example.com/my-draft"}),
            json!({"$id": "https://example.com/s", "type": "object"}),
            json!(true),
            json!(false),
        ] {
            if let Ok(v) = ConfigValidator::new(&schema) {
                assert!(matches!(v.check, Check::Compiled(_)), "{schema}");
            }
        }
        // Invalid schemas are still refused, naming the place.
        assert!(ConfigValidator::new(&json!({"type": 5})).is_err());
        assert!(ConfigValidator::new(&json!({"title": 5, "type": "object"})).is_err());
        let v = ConfigValidator::new(&json!(false)).unwrap();
        assert!(v.validate(&json!({})).is_err());
    }

    #[test]
    fn a_configuration_is_completed_with_the_schema_defaults() {
        let schema = json!({"properties": {"a": {"default": 1}, "b": {"default": "x"}, "c": {}}});
        assert_eq!(
            complete_config(&schema, None).unwrap(),
            json!({"a": 1, "b": "x"})
        );
        assert_eq!(
            complete_config(&schema, Some(json!({"a": 2, "c": true}))).unwrap(),
            json!({"a": 2, "b": "x", "c": true})
        );
        let e = complete_config(&schema, Some(json!([1]))).unwrap_err();
        assert!(e.message.contains("must be a JSON object, not [1]"), "{e}");
    }

    #[test]
    fn defaults_come_from_properties() {
        let schema = json!({"type": "object", "properties": {
            "model": {"type": "string", "default": "small"},
            "beam": {"type": "integer"},
            "temp": {"type": "number", "default": 0.2}
        }});
        let d = schema_defaults(&schema);
        assert_eq!(
            Value::Object(d.clone()),
            json!({"model": "small", "temp": 0.2})
        );
        let merged = with_defaults(&d, json!({"model": "large"}).as_object().unwrap().clone());
        assert_eq!(
            Value::Object(merged),
            json!({"model": "large", "temp": 0.2})
        );
        assert!(schema_defaults(&json!({})).is_empty());
        assert!(schema_defaults(&json!({"properties": []})).is_empty());
    }

    #[test]
    fn validation_names_each_invalid_field() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["model"],
            "properties": {
                "model": {"type": "string", "enum": ["small", "large"]},
                "beam": {"type": "integer", "minimum": 1, "maximum": 10},
                "tags": {"type": "array", "items": {"type": "string"}}
            }
        });
        let v = ConfigValidator::new(&schema).unwrap();
        assert!(v.validate(&json!({"model": "small", "beam": 3})).is_ok());
        let err = v
            .validate(&json!({"beam": 0, "tags": ["a", 2], "colour": "red"}))
            .unwrap_err();
        assert_eq!(err.category, crate::ErrorCategory::Config);
        let mut fields: Vec<_> = err
            .details
            .fields
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["beam", "colour", "model", "tags/1"]);
        let colour = err
            .details
            .fields
            .iter()
            .find(|f| f.field == "colour")
            .unwrap();
        assert!(colour.reason.contains("unknown key"));
        let model = err
            .details
            .fields
            .iter()
            .find(|f| f.field == "model")
            .unwrap();
        assert_eq!(model.reason, "is required");
        assert!(err.message.contains("4 problems"));
    }

    #[test]
    fn an_invalid_schema_is_a_config_error() {
        let err = ConfigValidator::new(&json!({"type": "nonsense"})).unwrap_err();
        assert_eq!(err.category, crate::ErrorCategory::Config);
        assert!(err.message.contains("schema is invalid"));
    }
}
