//! A plugin's JSON Schema read as a list of form fields.
//!
//! Understood: `string`, `number`, `integer`, `boolean`, `enum` (of any JSON scalars), arrays of
//! those, nullable fields (`"type": [T, "null"]`, `anyOf`/`oneOf` with a `null` branch, or `null`
//! in an `enum`), local `$ref`s (`#/$defs/…`, `#/definitions/…`) and single-entry `allOf`;
//! `minimum`/`maximum` (and their exclusive forms), `minLength`/`maxLength`, `pattern`,
//! `minItems`/`maxItems`, `default`, `title`, `description` and `readOnly`; enum labels from
//! `oneOf`/`anyOf` `const` entries' `title`s or an `enumNames`/`x-enum-labels` list. Anything else becomes a
//! JSON text field.

use serde_json::{Map, Value};

/// What kind of input a field gets.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// A text input.
    Text,
    /// A whole-number input.
    Integer,
    /// A number input.
    Number,
    /// A checkbox (a three-way select when nullable).
    Boolean,
    /// A select of the given values.
    Enum(Vec<Value>),
    /// A list of simple values: one per line, or a multiple select for an enum.
    Array(Box<FieldKind>),
    /// JSON text, for shapes the form does not model.
    Json,
}

/// One top-level property of the schema, as a form field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The configuration key.
    pub key: String,
    /// The label: the schema's `title`, else the key made readable.
    pub title: String,
    /// The schema's `description`.
    pub description: Option<String>,
    /// The input kind.
    pub kind: FieldKind,
    /// Whether `null` is allowed.
    pub nullable: bool,
    /// Whether the key is in the schema's `required`.
    pub required: bool,
    /// The schema's `default`.
    pub default: Option<Value>,
    /// `minimum` (or `exclusiveMinimum`, flagged).
    pub minimum: Option<(f64, bool)>,
    /// `maximum` (or `exclusiveMaximum`, flagged).
    pub maximum: Option<(f64, bool)>,
    /// `minLength`.
    pub min_length: Option<u64>,
    /// `maxLength`.
    pub max_length: Option<u64>,
    /// `pattern`.
    pub pattern: Option<String>,
    /// `minItems`.
    pub min_items: Option<u64>,
    /// `maxItems`.
    pub max_items: Option<u64>,
    /// `readOnly`.
    pub read_only: bool,
    /// Labels of enum values, from `oneOf`/`anyOf` entries with `const` and `title`, or an
    /// `enumNames` / `x-enum-labels` / `x-enumNames` list parallel to `enum`. Values without a
    /// label are absent.
    pub enum_labels: Vec<(Value, String)>,
}

impl FieldSpec {
    /// The label of the enum value `v` (its schema title), if the schema gives one.
    pub fn enum_label(&self, v: &Value) -> Option<&str> {
        self.enum_labels
            .iter()
            .find(|(value, _)| value == v)
            .map(|(_, label)| label.as_str())
    }
}

/// The fields of `schema`'s top-level `properties`, in schema order. Empty when it has none.
pub fn schema_fields(schema: &Value) -> Vec<FieldSpec> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(key, prop)| field(schema, key, prop, required.contains(&key.as_str())))
        .collect()
}

/// `schema` with the live option domains of a 0.0.46-line worker (`GET /config_options`:
/// `{field: {"options": [{"value", "label", "metadata"}…], "constraints": {…}}}`, options may
/// also be bare values) merged on top, as the original's settings UI does: each listed field
/// of `schema` becomes an `enum` of the live values (labelled by their `label`s) and takes the
/// `constraints` keywords. Fields the schema does not have and malformed entries are ignored;
/// an empty `options` list leaves the field as the schema says.
pub fn with_live_options(schema: &Value, options: &Value) -> Value {
    let mut out = schema.clone();
    let (Some(options), Some(props)) = (
        options.as_object(),
        out.get_mut("properties").and_then(Value::as_object_mut),
    ) else {
        return out;
    };
    for (key, domain) in options {
        let Some(Value::Object(prop)) = props.get_mut(key) else {
            continue;
        };
        let listed: &[Value] = domain
            .get("options")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for o in listed {
            let (value, label) = match o {
                Value::Object(m) => match m.get("value") {
                    Some(v) => (v.clone(), m.get("label").and_then(Value::as_str)),
                    None => continue,
                },
                v => (v.clone(), None),
            };
            if value.is_array() || value.is_object() {
                continue;
            }
            let text = match (label, &value) {
                (Some(l), _) => l.to_owned(),
                (None, Value::String(s)) => s.clone(),
                (None, v) => v.to_string(),
            };
            values.push(value);
            labels.push(Value::String(text));
        }
        if !values.is_empty() {
            for k in ["enumNames", "x-enumNames", "oneOf"] {
                prop.remove(k);
            }
            prop.insert("enum".into(), Value::Array(values));
            prop.insert("x-enum-labels".into(), Value::Array(labels));
        }
        if let Some(c) = domain.get("constraints").and_then(Value::as_object) {
            prop.extend(c.clone());
        }
    }
    out
}

/// Follows local `$ref`s and single-entry `allOf`s (bounded, so cycles end), merging the
/// referring schema's own keywords (title, description, default) over the target's.
fn resolve(root: &Value, prop: &Value) -> Map<String, Value> {
    let mut out = prop.as_object().cloned().unwrap_or_default();
    for _ in 0..16 {
        let target = if let Some(r) = out.get("$ref").and_then(Value::as_str) {
            r.strip_prefix('#')
                .and_then(|ptr| root.pointer(ptr))
                .cloned()
        } else if let Some([only]) = out
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some(only.clone())
        } else {
            None
        };
        let Some(Value::Object(target)) = target else {
            break;
        };
        out.remove("$ref");
        out.remove("allOf");
        for (k, v) in target {
            out.entry(k).or_insert(v);
        }
    }
    out
}

fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

/// Splits nullability off: returns the non-null schema and whether null is allowed.
fn strip_null(root: &Value, s: Map<String, Value>) -> (Map<String, Value>, bool) {
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = s.get(key).and_then(Value::as_array) {
            let nullable = branches.iter().any(is_null_schema);
            let rest: Vec<&Value> = branches.iter().filter(|b| !is_null_schema(b)).collect();
            if nullable && rest.len() == 1 {
                let mut inner = resolve(root, rest[0]);
                for (k, v) in &s {
                    if k != key {
                        inner.insert(k.clone(), v.clone());
                    }
                }
                return (inner, true);
            }
        }
    }
    let mut s = s;
    let mut nullable = false;
    if let Some(Value::Array(types)) = s.get("type").cloned() {
        let non_null: Vec<Value> = types
            .iter()
            .filter(|t| t.as_str() != Some("null"))
            .cloned()
            .collect();
        nullable = non_null.len() < types.len();
        match non_null.as_slice() {
            [one] => {
                s.insert("type".into(), one.clone());
            }
            _ => {
                s.insert("type".into(), Value::Array(non_null));
            }
        }
    }
    if let Some(Value::Array(values)) = s.get("enum").cloned() {
        if values.iter().any(Value::is_null) {
            nullable = true;
            s.insert(
                "enum".into(),
                Value::Array(values.into_iter().filter(|v| !v.is_null()).collect()),
            );
        }
    }
    (s, nullable)
}

/// `oneOf`/`anyOf` whose every branch is `{"const": …}` (a `null` const or `{"type": "null"}`
/// branch makes it nullable): the values, their titles, and whether null is allowed.
/// Enum values, their labels, and whether null is allowed.
type ConstEnum = (Vec<Value>, Vec<(Value, String)>, bool);

fn const_branches(s: &Map<String, Value>) -> Option<ConstEnum> {
    for key in ["oneOf", "anyOf"] {
        let Some(branches) = s.get(key).and_then(Value::as_array) else {
            continue;
        };
        let mut values = Vec::new();
        let mut labels = Vec::new();
        let mut nullable = false;
        for b in branches {
            if is_null_schema(b) {
                nullable = true;
                continue;
            }
            let c = b.get("const")?;
            if c.is_null() {
                nullable = true;
                continue;
            }
            if c.is_array() || c.is_object() {
                return None;
            }
            if let Some(t) = b
                .get("title")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
            {
                labels.push((c.clone(), t.to_owned()));
            }
            values.push(c.clone());
        }
        if !values.is_empty() {
            return Some((values, labels, nullable));
        }
    }
    None
}

/// Labels given as a list parallel to `enum` (`enumNames`, `x-enum-labels`, `x-enumNames`).
fn parallel_labels(s: &Map<String, Value>) -> Vec<(Value, String)> {
    let Some(values) = s.get("enum").and_then(Value::as_array) else {
        return Vec::new();
    };
    let Some(names) = ["x-enum-labels", "enumNames", "x-enumNames"]
        .iter()
        .find_map(|k| s.get(*k).and_then(Value::as_array))
    else {
        return Vec::new();
    };
    values
        .iter()
        .zip(names)
        .filter_map(|(v, n)| {
            n.as_str()
                .filter(|n| !n.trim().is_empty())
                .map(|n| (v.clone(), n.to_owned()))
        })
        .collect()
}

fn simple_kind(s: &Map<String, Value>) -> Option<FieldKind> {
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        if !values.is_empty() && values.iter().all(|v| !v.is_array() && !v.is_object()) {
            return Some(FieldKind::Enum(values.clone()));
        }
        return None;
    }
    match s.get("type").and_then(Value::as_str) {
        Some("string") => Some(FieldKind::Text),
        Some("integer") => Some(FieldKind::Integer),
        Some("number") => Some(FieldKind::Number),
        Some("boolean") => Some(FieldKind::Boolean),
        _ => None,
    }
}

fn field(root: &Value, key: &str, prop: &Value, required: bool) -> FieldSpec {
    let (s, mut nullable) = strip_null(root, resolve(root, prop));
    let consts = const_branches(&s);
    let mut enum_labels = parallel_labels(&s);
    let kind = if let Some((values, labels, null)) = consts {
        nullable |= null;
        enum_labels = labels;
        FieldKind::Enum(values)
    } else {
        simple_kind(&s).unwrap_or_else(|| {
            if s.get("type").and_then(Value::as_str) == Some("array") {
                let items = s.get("items").map(|i| resolve(root, i)).unwrap_or_default();
                let (items, _) = strip_null(root, items);
                match simple_kind(&items) {
                    Some(k) => FieldKind::Array(Box::new(k)),
                    None => FieldKind::Json,
                }
            } else {
                FieldKind::Json
            }
        })
    };
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let int = |k: &str| s.get(k).and_then(Value::as_u64);
    let bound = |inclusive: &str, exclusive: &str| {
        num(inclusive)
            .map(|v| (v, false))
            .or_else(|| num(exclusive).map(|v| (v, true)))
    };
    FieldSpec {
        key: key.to_owned(),
        title: s
            .get("title")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .map_or_else(|| humanize(key), str::to_owned),
        description: s
            .get("description")
            .and_then(Value::as_str)
            .filter(|d| !d.trim().is_empty())
            .map(str::to_owned),
        kind,
        nullable,
        required,
        default: s.get("default").cloned(),
        minimum: bound("minimum", "exclusiveMinimum"),
        maximum: bound("maximum", "exclusiveMaximum"),
        min_length: int("minLength"),
        max_length: int("maxLength"),
        pattern: s.get("pattern").and_then(Value::as_str).map(str::to_owned),
        min_items: int("minItems"),
        max_items: int("maxItems"),
        read_only: s.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
        enum_labels,
    }
}

/// `max_new_tokens` → `Max new tokens`.
pub fn humanize(key: &str) -> String {
    let spaced = key.replace(['_', '-'], " ");
    let mut chars = spaced.trim().chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_nullability_and_constraints() {
        let schema = json!({
            "type": "object",
            "required": ["model"],
            "$defs": {"Size": {"type": "string", "enum": ["small", "large"], "description": "Model size"}},
            "properties": {
                "model": {"$ref": "#/$defs/Size", "default": "small"},
                "beam_size": {"type": "integer", "minimum": 1, "maximum": 10, "title": "Beam"},
                "temperature": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "lang": {"anyOf": [{"type": "string", "pattern": "^[a-z]{2}$"}, {"type": "null"}]},
                "fast": {"type": "boolean", "default": false},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "modes": {"type": "array", "items": {"enum": ["a", "b"]}},
                "name": {"type": "string", "minLength": 1, "maxLength": 20},
                "choice": {"enum": [1, 2, null]},
                "extra": {"type": "object"}
            }
        });
        let f = schema_fields(&schema);
        let keys: Vec<&str> = f.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "model",
                "beam_size",
                "temperature",
                "lang",
                "fast",
                "tags",
                "modes",
                "name",
                "choice",
                "extra"
            ]
        );
        assert_eq!(
            f[0].kind,
            FieldKind::Enum(vec![json!("small"), json!("large")])
        );
        assert!(f[0].required && !f[0].nullable);
        assert_eq!(f[0].description.as_deref(), Some("Model size"));
        assert_eq!(f[0].default, Some(json!("small")));
        assert_eq!(f[0].title, "Model");
        assert_eq!(f[1].kind, FieldKind::Integer);
        assert_eq!(f[1].title, "Beam");
        assert_eq!(
            (f[1].minimum, f[1].maximum),
            (Some((1.0, false)), Some((10.0, false)))
        );
        assert_eq!(f[2].kind, FieldKind::Number);
        assert!(f[2].nullable);
        assert_eq!(f[2].minimum, Some((0.0, true)));
        assert_eq!(f[3].kind, FieldKind::Text);
        assert!(f[3].nullable);
        assert_eq!(f[3].pattern.as_deref(), Some("^[a-z]{2}$"));
        assert_eq!(f[4].kind, FieldKind::Boolean);
        assert_eq!(f[5].kind, FieldKind::Array(Box::new(FieldKind::Text)));
        assert_eq!(f[5].max_items, Some(3));
        assert_eq!(
            f[6].kind,
            FieldKind::Array(Box::new(FieldKind::Enum(vec![json!("a"), json!("b")])))
        );
        assert_eq!((f[7].min_length, f[7].max_length), (Some(1), Some(20)));
        assert_eq!(f[8].kind, FieldKind::Enum(vec![json!(1), json!(2)]));
        assert!(f[8].nullable);
        assert_eq!(f[9].kind, FieldKind::Json);
        assert_eq!(humanize("beam_size"), "Beam size");
    }

    #[test]
    fn no_properties_no_fields_and_ref_cycles_end() {
        assert!(schema_fields(&json!({})).is_empty());
        assert!(schema_fields(&json!({"properties": 3})).is_empty());
        let cyclic = json!({"$defs": {"A": {"$ref": "#/$defs/A"}}, "properties": {"x": {"$ref": "#/$defs/A"}}});
        assert_eq!(schema_fields(&cyclic)[0].kind, FieldKind::Json);
    }

    #[test]
    fn live_options_become_a_labelled_select_with_their_constraints() {
        let schema = json!({"type": "object", "properties": {
            "model": {"type": "string", "default": "a", "description": "Model"},
            "lang": {"type": "string", "enum": ["en"]},
            "n": {"type": "integer"},
        }});
        let options = json!({
            "model": {"options": [
                {"value": "a", "label": "Model A", "metadata": {"tokens": 8}},
                {"value": "b", "label": "Model B"},
                {"label": "no value"},
            ]},
            "lang": {"options": ["en", "de"]},
            "n": {"options": [], "constraints": {"maximum": 4}},
            "gone": {"options": ["x"]},
        });
        let merged = with_live_options(&schema, &options);
        let f = schema_fields(&merged);
        let by = |k: &str| f.iter().find(|f| f.key == k).unwrap();
        assert_eq!(
            by("model").kind,
            FieldKind::Enum(vec![json!("a"), json!("b")])
        );
        assert_eq!(by("model").enum_label(&json!("b")), Some("Model B"));
        assert_eq!(by("model").description.as_deref(), Some("Model"));
        assert_eq!(
            by("lang").kind,
            FieldKind::Enum(vec![json!("en"), json!("de")])
        );
        assert_eq!(by("n").kind, FieldKind::Integer);
        assert_eq!(merged["properties"]["n"]["maximum"], 4);
        assert!(merged["properties"].get("gone").is_none());
        // Nothing live, or not an object: the schema as it is.
        assert_eq!(with_live_options(&schema, &json!({})), schema);
        assert_eq!(with_live_options(&schema, &Value::Null), schema);
    }

    #[test]
    fn enum_labels_from_const_titles_and_parallel_lists() {
        let schema = json!({"properties": {
            "size": {"oneOf": [
                {"const": "tiny", "title": "Tiny (39 M)"},
                {"const": "base"},
                {"const": null}
            ]},
            "beam": {"enum": [1, 5], "enumNames": ["Greedy", "Wide"]},
            "mode": {"enum": ["a", "b"], "x-enum-labels": ["Alpha"]},
            "obj": {"anyOf": [{"const": {"x": 1}}, {"const": 2}]}
        }});
        let f = schema_fields(&schema);
        assert_eq!(
            f[0].kind,
            FieldKind::Enum(vec![json!("tiny"), json!("base")])
        );
        assert!(f[0].nullable);
        assert_eq!(f[0].enum_label(&json!("tiny")), Some("Tiny (39 M)"));
        assert_eq!(f[0].enum_label(&json!("base")), None);
        assert_eq!(f[1].enum_label(&json!(5)), Some("Wide"));
        assert_eq!(f[2].enum_label(&json!("a")), Some("Alpha"));
        assert_eq!(f[2].enum_label(&json!("b")), None);
        assert_eq!(f[3].kind, FieldKind::Json, "object consts are not an enum");
    }
}
