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
pub struct ConfigValidator {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for ConfigValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigValidator")
    }
}

impl ConfigValidator {
    /// Compiles `schema`; an invalid schema is a config error naming the schema location.
    pub fn new(schema: &Value) -> Result<Self, PluginError> {
        jsonschema::validator_for(schema)
            .map(|validator| Self { validator })
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
        let mut out = Vec::new();
        for e in self.validator.iter_errors(config) {
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
