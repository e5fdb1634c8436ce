//! Drift detection as the original does it: a v2.0 manifest's `drift_tracking` holds
//! `"sha256:<hex>"` witnesses of the plugin's `config_schema` and structural surface, hashed
//! over Python's canonical JSON (`json.dumps(x, sort_keys=True, separators=(",", ":"))`, so
//! ASCII-only with `\uXXXX` escapes and Python's float spelling). The host hashes the live
//! `/config_schema` and `/structural_surface` the same way and compares.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A manifest's `drift_tracking` section. Absent witnesses are never drift.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftTracking {
    /// Witness of `code.config_schema`.
    #[serde(default)]
    pub config_schema_hash: Option<String>,
    /// Witness of `code.structural_surface`.
    #[serde(default)]
    pub structural_surface_hash: Option<String>,
}

/// What differs between a manifest's witnesses and the live worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The live `/config_schema` differs from the manifest's.
    pub config_schema: bool,
    /// The live `/structural_surface` differs from the manifest's.
    pub structural_surface: bool,
}

impl Drift {
    /// True when anything drifted.
    pub fn any(&self) -> bool {
        self.config_schema || self.structural_surface
    }

    /// A short description for people (`config schema, structural surface`), empty when none.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.config_schema {
            parts.push("config schema");
        }
        if self.structural_surface {
            parts.push("structural surface");
        }
        parts.join(", ")
    }
}

impl DriftTracking {
    /// Compares the witnesses with the live documents; a missing witness or a missing live
    /// document (an older worker) is not drift, as in the original.
    pub fn compare(&self, live_schema: Option<&Value>, live_surface: Option<&Value>) -> Drift {
        let differs = |stored: &Option<String>, live: Option<&Value>| match (stored, live) {
            (Some(h), Some(v)) => witness_hash(v) != *h,
            _ => false,
        };
        Drift {
            config_schema: differs(&self.config_schema_hash, live_schema),
            structural_surface: differs(&self.structural_surface_hash, live_surface),
        }
    }
}

/// `"sha256:<hex>"` of `value`'s canonical JSON (`null` hashes as `{}`, as the original's
/// `schema or {}`).
pub fn witness_hash(value: &Value) -> String {
    let empty = Value::Object(serde_json::Map::new());
    let v = if value.is_null() { &empty } else { value };
    let digest = Sha256::digest(canonical_json(v).as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Python's `json.dumps(value, sort_keys=True, separators=(",", ":"))`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                out.push_str(&python_float(n.as_f64().unwrap_or(0.0)));
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            // Python sorts by code point; UTF-8 byte order is the same order.
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                if let Some(x) = o.get(k) {
                    write_value(out, x);
                }
            }
            out.push('}');
        }
    }
}

/// A string as Python's `json.dumps` writes it with `ensure_ascii=True`.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A finite float as Python's `repr` (shortest round-trip digits; fixed notation for decimal
/// exponents in `-4..16`, else `d.ddde+XX`). Non-finite values as Python's `json` writes them.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. `1.5e-7`, `1e16`, `0e0`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_is_pythons() {
        // Expected strings from CPython 3.12's json.dumps(sort_keys=True, separators=(",", ":")).
        let v = json!({"b": [1, 2.5, true, null], "a": {"z": "é\u{1F600}\n\"", "y": 1e16}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"y":1e+16,"z":"\u00e9\ud83d\ude00\n\""},"b":[1,2.5,true,null]}"#
        );
        for (f, py) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456789012345.6, "123456789012345.6"),
            (1.5e300, "1.5e+300"),
            (-2.0, "-2.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float(f), py, "{f}");
        }
    }

    #[test]
    fn witnesses_match_the_originals_and_detect_drift() {
        // compute_config_schema_hash({}) and of this schema, from cjm-plugin-system 0.0.46.
        assert_eq!(
            witness_hash(&Value::Null),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let schema = json!({"type": "object", "properties": {"lang": {"type": "string"}}});
        let stored = witness_hash(&schema);
        assert_eq!(
            stored,
            "sha256:462046f51d9d91e2b13ca43b4373a6dbe1350bfa2673d849ccaa573ccb5cfa5b"
        );
        let t = DriftTracking {
            config_schema_hash: Some(stored),
            structural_surface_hash: None,
        };
        assert!(!t.compare(Some(&schema), Some(&json!({"x": 1}))).any());
        let newer = json!({"type": "object", "properties": {"lang": {"type": "integer"}}});
        let d = t.compare(Some(&newer), None);
        assert!(d.config_schema && !d.structural_surface);
        assert_eq!(d.describe(), "config schema");
    }
}
