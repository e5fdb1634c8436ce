//! What a plugin offers, as (label, value, badge) triples for the details card and the
//! comparison table: the original's `extract_plugin_features`.

use cjm_core::{PluginExecutionMode, PluginMetadata};
use serde_json::{Map, Value};

/// One feature of a plugin: `Execution: Local (Subprocess)` with badge `badge-success`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFeature {
    /// The label (`Execution`, `Streaming`, `Cost`, `GPU`, `Device`, `Memory`).
    pub label: &'static str,
    /// The value shown.
    pub value: String,
    /// The DaisyUI badge class (`badge-success`, `badge-info`, …).
    pub badge: &'static str,
}

/// The label of an execution mode (`Local (Conda)`, `Cloud GPU`, …).
pub fn execution_mode_label(mode: PluginExecutionMode) -> &'static str {
    mode.label()
}

/// The badge colour of an execution mode: `badge-success` for local modes, `badge-info` for
/// cloud GPU/CPU, `badge-neutral` otherwise.
pub fn execution_mode_badge(mode: PluginExecutionMode) -> &'static str {
    mode.badge_class()
}

/// Python's truthiness of a JSON value, which the original's rules rely on.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as text: strings bare, everything else as JSON.
pub(crate) fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The features of `plugin` with its configuration `config`, in the original's order and with its
/// rules, at most one per label:
///
/// | label | when | value | badge |
/// |---|---|---|---|
/// | Execution | always | mode label | mode badge |
/// | Streaming | `supports_streaming` is a schema property | `Supported` when the config sets it truthy, else `Not Supported` | `badge-info` / `badge-neutral` |
/// | Cost | cloud, with a remote resource that has a cost | `$12.50/hr` | `badge-warning` |
/// | GPU | cloud, with a remote resource that has a GPU type | `4x A100` | `badge-primary` |
/// | Device | local, config has `device` | upper-cased (`CUDA`) | `badge-primary` for exactly `cuda`, else `badge-neutral` |
/// | Memory | local, config has `memory_gb` | `8GB` | `badge-neutral` |
pub fn extract_plugin_features(
    plugin: &PluginMetadata,
    config: Option<&Map<String, Value>>,
) -> Vec<PluginFeature> {
    let mode = plugin.execution_mode;
    let mut out = vec![PluginFeature {
        label: "Execution",
        value: execution_mode_label(mode).to_owned(),
        badge: execution_mode_badge(mode),
    }];
    let config = config.filter(|c| !c.is_empty());
    let has_streaming_property = plugin
        .config_schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| p.contains_key("supports_streaming"));
    if has_streaming_property {
        let on = config
            .and_then(|c| c.get("supports_streaming"))
            .is_some_and(truthy);
        out.push(PluginFeature {
            label: "Streaming",
            value: if on { "Supported" } else { "Not Supported" }.to_owned(),
            badge: if on { "badge-info" } else { "badge-neutral" },
        });
    }
    if plugin.is_cloud_execution() {
        if let Some(r) = &plugin.remote_resource {
            if let Some(cost) = r.estimated_cost_per_hour.filter(|c| *c != 0.0) {
                out.push(PluginFeature {
                    label: "Cost",
                    value: format!("${cost:.2}/hr"),
                    badge: "badge-warning",
                });
            }
            if let Some(gpu) = r.gpu_type.as_deref().filter(|g| !g.is_empty()) {
                out.push(PluginFeature {
                    label: "GPU",
                    value: format!("{}x {gpu}", r.gpu_count),
                    badge: "badge-primary",
                });
            }
        }
    }
    if let (Some(c), true) = (config, plugin.is_local_execution()) {
        if let Some(device) = c.get("device") {
            let text = plain(device);
            out.push(PluginFeature {
                label: "Device",
                value: text.to_uppercase(),
                badge: if text == "cuda" {
                    "badge-primary"
                } else {
                    "badge-neutral"
                },
            });
        }
        if let Some(mem) = c.get("memory_gb") {
            out.push(PluginFeature {
                label: "Memory",
                value: format!("{}GB", plain(mem)),
                badge: "badge-neutral",
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cjm_core::{CloudProviderType, RemoteResourceInfo};
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn labels(f: &[PluginFeature]) -> Vec<&str> {
        f.iter().map(|f| f.label).collect()
    }

    #[test]
    fn local_plugin_features() {
        let mut p = PluginMetadata::new(
            "w",
            "t",
            "W",
            json!({"properties": {"supports_streaming": {"type": "boolean"}}}),
        );
        p.execution_mode = PluginExecutionMode::Subprocess;
        let f = extract_plugin_features(&p, None);
        assert_eq!(labels(&f), ["Execution", "Streaming"]);
        assert_eq!(f[0].value, "Local (Subprocess)");
        assert_eq!(f[0].badge, "badge-success");
        assert_eq!(f[1].value, "Not Supported");
        assert_eq!(f[1].badge, "badge-neutral");

        let cfg = obj(json!({"supports_streaming": true, "device": "cuda", "memory_gb": 8}));
        let f = extract_plugin_features(&p, Some(&cfg));
        assert_eq!(labels(&f), ["Execution", "Streaming", "Device", "Memory"]);
        assert_eq!(
            (f[1].value.as_str(), f[1].badge),
            ("Supported", "badge-info")
        );
        assert_eq!((f[2].value.as_str(), f[2].badge), ("CUDA", "badge-primary"));
        assert_eq!((f[3].value.as_str(), f[3].badge), ("8GB", "badge-neutral"));

        let cfg = obj(json!({"device": "Cuda", "memory_gb": 1.5}));
        let f = extract_plugin_features(&p, Some(&cfg));
        assert_eq!((f[2].value.as_str(), f[2].badge), ("CUDA", "badge-neutral"));
        assert_eq!(f[3].value, "1.5GB");
    }

    #[test]
    fn cloud_plugin_features() {
        let mut p = PluginMetadata::new("w", "t", "W", json!({}));
        p.execution_mode = PluginExecutionMode::CloudGpu;
        let mut r = RemoteResourceInfo::new(CloudProviderType::Runpod);
        r.estimated_cost_per_hour = Some(12.5);
        r.gpu_type = Some("A100".into());
        r.gpu_count = 4;
        p.remote_resource = Some(r);
        let cfg = obj(json!({"device": "cuda"}));
        let f = extract_plugin_features(&p, Some(&cfg));
        assert_eq!(
            labels(&f),
            ["Execution", "Cost", "GPU"],
            "no Device for cloud"
        );
        assert_eq!(
            (f[0].value.as_str(), f[0].badge),
            ("Cloud GPU", "badge-info")
        );
        assert_eq!(
            (f[1].value.as_str(), f[1].badge),
            ("$12.50/hr", "badge-warning")
        );
        assert_eq!(
            (f[2].value.as_str(), f[2].badge),
            ("4x A100", "badge-primary")
        );
        // Cloud without a remote resource: only the execution mode.
        p.remote_resource = None;
        assert_eq!(labels(&extract_plugin_features(&p, None)), ["Execution"]);
    }

    #[test]
    fn truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!("x"),
            json!([0]),
            json!({"a": 0}),
        ] {
            assert!(truthy(&v), "{v}");
        }
    }
}
