//! The manifest's `ray` block: how a native worker placed on a Ray cluster
//! (`execution_mode: ray`) asks Ray for resources and an environment. The cluster itself is
//! the host's configuration, never the manifest's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Checker;
use crate::schema::json_kind;
use crate::PluginExecutionMode;

/// What a plugin placed on Ray asks of the cluster (`"ray": {...}`). Every field is optional;
/// absent resources follow the manifest's `resources` (one GPU when `requires_gpu`, the memory
/// of `min_system_ram_mb`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RayPlacement {
    /// CPUs reserved for the worker (`entrypoint_num_cpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_cpus: Option<f64>,
    /// GPUs reserved for the worker (`entrypoint_num_gpus`); Ray sets `CUDA_VISIBLE_DEVICES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_gpus: Option<f64>,
    /// Memory reserved for the worker, in bytes (`entrypoint_memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Ray's `runtime_env` for the job (`pip`, `conda`, `working_dir`, `env_vars`, …), passed
    /// as given; the manifest's `env_vars` are added to its `env_vars`. Secrets never go here:
    /// the worker receives them when it registers with the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_env: Option<Map<String, Value>>,
}

const FIELDS: &str = "num_cpus, num_gpus, memory, runtime_env";

/// `ray` goes with `execution_mode: ray` (or implies it), holds only [`RayPlacement`]'s fields
/// with sane values, and a worker placed on Ray is a native one (`command`).
pub(super) fn check_ray(c: &mut Checker<'_>, mode: Option<PluginExecutionMode>) {
    let ray = c.get("ray").cloned();
    let on_ray = mode == Some(PluginExecutionMode::Ray) || (mode.is_none() && ray.is_some());
    if let (Some(_), Some(m)) = (&ray, mode) {
        if m != PluginExecutionMode::Ray {
            c.problem(
                "ray",
                format!("places the worker on Ray, but execution_mode is `{m}` (use `ray`, or drop this block)"),
            );
        }
    }
    if on_ray {
        if c.get("remote").is_some() {
            c.problem(
                "ray",
                "a worker is either placed on Ray (`ray`) or reached at a URL (`remote`), not both",
            );
        } else if ["python_path", "module", "class"]
            .iter()
            .any(|f| c.get(f).is_some())
        {
            c.problem(
                "execution_mode",
                "`ray` places a native cjm worker (`command`); Python-environment workers \
                 (python_path/module/class) cannot be placed on Ray yet",
            );
        }
    }
    let Some(ray) = ray else { return };
    let Value::Object(r) = &ray else {
        return c.problem(
            "ray",
            format!("must be an object, found {}", json_kind(&ray)),
        );
    };
    for (key, value) in r {
        let field = format!("ray.{key}");
        match key.as_str() {
            "num_cpus" | "num_gpus" => match value.as_f64() {
                Some(n) if n.is_finite() && n >= 0.0 => {}
                _ => c.problem(
                    &field,
                    format!("must be a number ≥ 0, found {}", shown(value)),
                ),
            },
            "memory" => match value.as_u64() {
                Some(n) if n > 0 => {}
                _ => c.problem(
                    &field,
                    format!(
                        "must be a whole number of bytes > 0, found {}",
                        shown(value)
                    ),
                ),
            },
            "runtime_env" => match value {
                Value::Object(env) => check_runtime_env(c, env),
                other => c.problem(
                    &field,
                    format!("must be an object, found {}", json_kind(other)),
                ),
            },
            _ => c.problem(&field, format!("is not a field of `ray` ({FIELDS})")),
        }
    }
}

fn check_runtime_env(c: &mut Checker<'_>, env: &Map<String, Value>) {
    match env.get("env_vars") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (k, v) in vars {
                if !v.is_string() {
                    c.problem(
                        &format!("ray.runtime_env.env_vars.{k}"),
                        format!("must be a string, found {}", json_kind(v)),
                    );
                }
            }
        }
        Some(other) => c.problem(
            "ray.runtime_env.env_vars",
            format!("must be an object, found {}", json_kind(other)),
        ),
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => json_kind(other).to_owned(),
    }
}
