//! Small helpers over configuration JSON Schemas that both sides need.

use serde_json::{Map, Value};

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

/// `config` with every key of `defaults` it lacks filled in.
pub fn with_defaults(defaults: &Map<String, Value>, config: Map<String, Value>) -> Map<String, Value> {
    let mut out = defaults.clone();
    out.extend(config);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_come_from_properties() {
        let schema = json!({"type": "object", "properties": {
            "model": {"type": "string", "default": "small"},
            "beam": {"type": "integer"},
            "temp": {"type": "number", "default": 0.2}
        }});
        let d = schema_defaults(&schema);
        assert_eq!(Value::Object(d.clone()), json!({"model": "small", "temp": 0.2}));
        let merged = with_defaults(&d, json!({"model": "large"}).as_object().unwrap().clone());
        assert_eq!(Value::Object(merged), json!({"model": "large", "temp": 0.2}));
        assert!(schema_defaults(&json!({})).is_empty());
        assert!(schema_defaults(&json!({"properties": []})).is_empty());
    }
}
