//! The original's v2.0 manifests (`format_version: "2.0"`, as `cjm-ctl install-all` of
//! cjm-plugin-system 0.0.46 and cjm-substrate write them), its adapter manifests
//! (`"unit": "adapter"`), and what the host derives from them before a worker starts: the
//! category, the worker generation, the `code.worker_env` contract and the adapters that match
//! a plugin's structural surface.
//!
//! A v2.0 file is read natively: its `install` and `code` sections are laid flat (install
//! first, code over it, as the original's own flat view does) and validated by the same rules
//! as a v1 file, but every problem names the v2 path (`code.name`, `install.python_path`).
//! `drift_tracking`, `overrides` and `format_version` are kept in [`Manifest::extra`]
//! untouched, and readable through [`Manifest::drift_tracking`] and friends.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::generation::WorkerGeneration;
use crate::manifest::{Manifest, ManifestError, ManifestProblem};
use crate::schema::json_kind;

/// The only v2 format this host reads.
pub const FORMAT_VERSION_2: &str = "2.0";

/// The category of a plugin that declares none and has no taxonomy.
pub const FALLBACK_CATEGORY: &str = "uncategorized";

/// Keys of a v2 `install` section that the flat view knows.
const INSTALL_KEYS: &[&str] = &[
    "mode",
    "resolved",
    "refreshed_at",
    "python_path",
    "conda_env",
    "db_path",
    "env_vars",
    "installed_at",
    "installer_version",
    "package_source",
];

/// Keys of a v2 `code` section that the flat view knows.
const CODE_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "module",
    "class",
    "interface",
    "taxonomy",
    "resources",
    "config_schema",
    "regenerated_at",
    "worker_env",
    "structural_surface",
];

/// The top-level keys of a v2 file that stay sections (kept in `extra`).
const V2_SECTIONS: &[&str] = &[
    "format_version",
    "install",
    "code",
    "drift_tracking",
    "overrides",
];

/// True when `value` is a nested v2.0 document: a `format_version` with an `install` or `code`
/// section. A flat document that carries `format_version` (the original's own flat view of a
/// v2 file, or a serialized [`Manifest`]) is read as flat.
pub(crate) fn is_v2(value: &Value) -> bool {
    value.get("format_version").is_some()
        && (value.get("code").is_some() || value.get("install").is_some())
}

/// True when `value` is an adapter manifest (`"unit": "adapter"`).
pub fn is_adapter(value: &Value) -> bool {
    value.get("unit").and_then(Value::as_str) == Some("adapter")
}

/// Lays a v2 document flat, or returns its structural problems (with v2 paths).
pub(crate) fn flatten_v2(value: &Value) -> Result<Value, Vec<ManifestProblem>> {
    let mut problems = Vec::new();
    let mut p = |field: &str, reason: String| {
        problems.push(ManifestProblem {
            field: field.to_owned(),
            reason,
        })
    };
    let Value::Object(obj) = value else {
        return Err(vec![ManifestProblem {
            field: String::new(),
            reason: format!("must be a JSON object, found {}", json_kind(value)),
        }]);
    };
    match obj.get("format_version") {
        Some(Value::String(v)) if v == FORMAT_VERSION_2 => {}
        Some(other) => p(
            "format_version",
            format!("unrecognized format_version {other}; expected \"2.0\" or none (v1)"),
        ),
        None => {}
    }
    let section = |name: &str, p: &mut dyn FnMut(&str, String)| -> Map<String, Value> {
        match obj.get(name) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                p(
                    name,
                    format!("must be an object, found {}", json_kind(other)),
                );
                Map::new()
            }
        }
    };
    let install = section("install", &mut p);
    let code = section("code", &mut p);
    let _ = section("drift_tracking", &mut p);
    let _ = section("overrides", &mut p);
    if obj.get("code").is_none() {
        p("code", "is required in a v2.0 manifest".to_owned());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Top-level cjm extensions first (restart, max_concurrency, ...), install over them, code
    // over install: the original's flat view gives code the last word.
    let mut flat = Map::new();
    for (k, v) in obj {
        if !V2_SECTIONS.contains(&k.as_str()) {
            flat.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in install.into_iter().chain(code) {
        flat.insert(k, v);
    }
    // Empty strings mean "absent" in the original's writer (`db_path: ""`, `interface: ""`).
    for k in ["db_path", "interface", "conda_env", "category"] {
        if flat.get(k).and_then(Value::as_str) == Some("") {
            flat.remove(k);
        }
    }
    for k in ["format_version", "drift_tracking", "overrides"] {
        if let Some(v) = obj.get(k) {
            flat.insert(k.to_owned(), v.clone());
        }
    }
    Ok(Value::Object(flat))
}

/// Renames a flat field (`name`, `env_vars.X`, `args[0]`) to its v2 path (`code.name`,
/// `install.env_vars.X`); cjm's own top-level fields keep their name.
pub(crate) fn v2_path(field: &str) -> String {
    let head = field.split(['.', '[']).next().unwrap_or_default();
    if INSTALL_KEYS.contains(&head) {
        format!("install.{field}")
    } else if CODE_KEYS.contains(&head) || head == "category" {
        format!("code.{field}")
    } else {
        field.to_owned()
    }
}

/// Checks the v2-era fields that a flat view may carry as well (`worker_env`, `taxonomy`,
/// `structural_surface`, `worker_generation`), reporting flat names.
pub(crate) fn check_v2_fields(obj: &Map<String, Value>, problems: &mut Vec<ManifestProblem>) {
    let mut p = |field: String, reason: String| problems.push(ManifestProblem { field, reason });
    match obj.get("worker_env") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("worker_env[{i}]");
                let Value::Object(spec) = item else {
                    p(
                        field,
                        format!("must be an object, found {}", json_kind(item)),
                    );
                    continue;
                };
                match spec.get("name") {
                    Some(Value::String(n)) if is_env_name(n) => {}
                    Some(Value::String(n)) => p(
                        format!("{field}.name"),
                        format!("{n:?} is not a valid environment variable name"),
                    ),
                    _ => p(format!("{field}.name"), "is required (a string)".to_owned()),
                }
                for flag in ["secret", "required"] {
                    if let Some(v) = spec.get(flag).filter(|v| !v.is_null()) {
                        if !v.is_boolean() {
                            p(
                                format!("{field}.{flag}"),
                                format!("must be true or false, found {}", json_kind(v)),
                            );
                        }
                    }
                }
                if let Some(v) = spec.get("default").filter(|v| !v.is_null()) {
                    if !v.is_string() {
                        p(
                            format!("{field}.default"),
                            format!("must be a string, found {}", json_kind(v)),
                        );
                    }
                }
            }
        }
        Some(other) => p(
            "worker_env".to_owned(),
            format!("must be a list, found {}", json_kind(other)),
        ),
    }
    for key in [
        "taxonomy",
        "structural_surface",
        "drift_tracking",
        "overrides",
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            if !v.is_object() {
                p(
                    key.to_owned(),
                    format!("must be an object, found {}", json_kind(v)),
                );
            }
        }
    }
    if let Some(v) = obj.get("worker_generation").filter(|v| !v.is_null()) {
        if serde_json::from_value::<WorkerGeneration>(v.clone()).is_err() {
            p(
                "worker_generation".to_owned(),
                format!("must be one of \"native\", \"seed\", \"v0046\", \"substrate\"; found {v}"),
            );
        }
    }
}

fn is_env_name(n: &str) -> bool {
    !n.is_empty() && !n.contains('=') && !n.contains('\0')
}

/// The original's classification of a plugin (`code.taxonomy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taxonomy {
    /// The area, from the interface library's name `cjm-<domain>-plugin-system`
    /// (`transcription`, `graph`, `media`, `text`).
    #[serde(default)]
    pub domain: String,
    /// The interface class name (`TranscriptionPlugin`).
    #[serde(default)]
    pub role: String,
    /// The interface's full dotted name.
    #[serde(default)]
    pub interface_fqcn: String,
}

/// One entry of a plugin's `code.worker_env` contract (the original's `EnvVarSpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVarSpec {
    /// The variable's name.
    pub name: String,
    /// The value comes from the secret store (never from the manifest).
    #[serde(default)]
    pub secret: bool,
    /// The plugin cannot work without it: cjm refuses to start the worker when it is missing.
    #[serde(default)]
    pub required: bool,
    /// Default value (visible variables), with `${...}` templates.
    #[serde(default)]
    pub default: Option<String>,
    /// Label for people.
    #[serde(default)]
    pub label: Option<String>,
    /// Description for people.
    #[serde(default)]
    pub description: Option<String>,
}

/// The witness hashes written at install time (`drift_tracking`); one type with the live
/// comparison in [`crate::wire::drift`].
pub use crate::wire::drift::DriftTracking;

impl Manifest {
    /// `"2.0"` for a v2 file, `None` for a v1 flat file.
    pub fn format_version(&self) -> Option<&str> {
        self.extra.get("format_version").and_then(Value::as_str)
    }

    /// The original's taxonomy (`code.taxonomy`), if recorded.
    pub fn taxonomy(&self) -> Option<Taxonomy> {
        self.extra
            .get("taxonomy")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The `code.worker_env` contract (empty when none is declared).
    pub fn worker_env(&self) -> Vec<EnvVarSpec> {
        self.extra
            .get("worker_env")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// The recorded structural surface (`code.structural_surface`), if any.
    pub fn structural_surface(&self) -> Option<&Map<String, Value>> {
        self.extra
            .get("structural_surface")
            .and_then(Value::as_object)
    }

    /// The drift witness hashes (`drift_tracking`), if recorded.
    pub fn drift_tracking(&self) -> Option<DriftTracking> {
        self.extra
            .get("drift_tracking")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The `overrides` section, kept as written (cjm does not apply it).
    pub fn overrides(&self) -> Option<&Map<String, Value>> {
        self.extra.get("overrides").and_then(Value::as_object)
    }

    /// Which worker implementation runs this plugin, decided without starting it:
    ///
    /// 1. a native `command` → [`WorkerGeneration::Native`] (also for in-process plugins);
    /// 2. an explicit `worker_generation` field (cjm extension) wins;
    /// 3. the plugin environment's installed packages (the `*.dist-info` folders beside
    ///    `python_path`): `cjm_substrate` → substrate, `cjm_plugin_system` 0.0.46 or later →
    ///    v0046, an older one → seed;
    /// 4. cjm-substrate's `install.resolved` record of the environment's `cjm-*` versions;
    /// 5. otherwise the manifest's shape: v2.0 → v0046, v1 → seed.
    pub fn generation(&self) -> WorkerGeneration {
        if self.command.is_some() || self.python_path.is_none() {
            return WorkerGeneration::Native;
        }
        if let Some(g) = self
            .extra
            .get("worker_generation")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
        {
            return g;
        }
        if let Some(g) = self
            .python_path
            .as_deref()
            .and_then(|p| generation_from_env(Path::new(p)))
        {
            return g;
        }
        if let Some(g) = self
            .extra
            .get("resolved")
            .and_then(Value::as_object)
            .and_then(generation_from_resolved)
        {
            return g;
        }
        if self.format_version().is_some() {
            WorkerGeneration::V0046
        } else {
            WorkerGeneration::Seed
        }
    }

    /// The category: the declared one (`category_override`, then `category`) when not blank,
    /// else the taxonomy's domain (`code.taxonomy.domain`, as the original derives it), else
    /// [`FALLBACK_CATEGORY`]. Applied at parse time, so [`Manifest::category`] is never empty.
    pub(crate) fn derive_category(&mut self) {
        let declared = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        if let Some(c) = declared(self.extra.get("category_override")) {
            self.category = c;
            return;
        }
        if !self.category.trim().is_empty() {
            self.category = self.category.trim().to_owned();
            return;
        }
        self.category = self
            .taxonomy()
            .map(|t| t.domain.trim().to_owned())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| FALLBACK_CATEGORY.to_owned());
    }
}

/// The generation of the Python environment that `python` belongs to, read from its
/// `lib/python*/site-packages/*.dist-info` folders; `None` when nothing tells.
fn generation_from_env(python: &Path) -> Option<WorkerGeneration> {
    let env = python.parent()?.parent()?;
    let lib = std::fs::read_dir(env.join("lib")).ok()?;
    let mut found = None;
    for entry in lib.flatten() {
        let site = entry.path().join("site-packages");
        let Ok(pkgs) = std::fs::read_dir(&site) else {
            continue;
        };
        for pkg in pkgs.flatten() {
            let name = pkg.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.strip_suffix(".dist-info") else {
                continue;
            };
            if stem.starts_with("cjm_substrate-") {
                return Some(WorkerGeneration::Substrate);
            }
            if let Some(version) = stem.strip_prefix("cjm_plugin_system-") {
                found = Some(if version_at_least(version, &[0, 0, 46]) {
                    WorkerGeneration::V0046
                } else {
                    WorkerGeneration::Seed
                });
            }
        }
    }
    found
}

/// The generation from cjm-substrate's `install.resolved` record (`{dist name: version}` of
/// every `cjm-*` distribution in the environment at install time).
fn generation_from_resolved(resolved: &Map<String, Value>) -> Option<WorkerGeneration> {
    let mut found = None;
    for (name, version) in resolved {
        match name.to_ascii_lowercase().replace('-', "_").as_str() {
            "cjm_substrate" => return Some(WorkerGeneration::Substrate),
            "cjm_plugin_system" => {
                let v = version.as_str().unwrap_or_default();
                found = Some(if version_at_least(v, &[0, 0, 46]) {
                    WorkerGeneration::V0046
                } else {
                    WorkerGeneration::Seed
                });
            }
            _ => {}
        }
    }
    found
}

/// True when the dotted `version` is at least `min` (non-numeric parts count as 0).
fn version_at_least(version: &str, min: &[u64]) -> bool {
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0)
        })
        .collect();
    for (i, want) in min.iter().enumerate() {
        let got = parts.get(i).copied().unwrap_or(0);
        if got != *want {
            return got > *want;
        }
    }
    true
}

/// An adapter manifest (`"unit": "adapter"`): a task-adapter implementation installed in some
/// tool's worker environment, bound into matching plugins' workers at spawn (`--adapters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterManifest {
    /// Unit name (`module.ClassName`).
    pub name: String,
    /// Version of its library.
    #[serde(default = "zero_version")]
    pub version: String,
    /// The task it serves (`graph-storage`).
    pub task_name: String,
    /// Implementation module.
    pub module: String,
    /// Implementation class (JSON key `class`).
    #[serde(rename = "class")]
    pub class_name: String,
    /// The protocol's dotted name (informational).
    #[serde(default)]
    pub required_tool_protocol: String,
    /// `{"methods": [{"name", "signature", "params"}], "properties": [...]}`.
    #[serde(default)]
    pub protocol_members: Map<String, Value>,
    /// Other keys (`unit`, `conda_env`, `generated_at`, ...), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The file it was read from.
    #[serde(skip)]
    pub path: Option<std::path::PathBuf>,
}

fn zero_version() -> String {
    "0.0.0".to_owned()
}

/// How an adapter's protocol compares with a plugin's structural surface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AdapterMatch {
    /// True when nothing is missing or mismatched.
    pub compatible: bool,
    /// Protocol methods the surface lacks.
    pub missing_methods: Vec<String>,
    /// Protocol properties the surface lacks.
    pub missing_properties: Vec<String>,
    /// Methods whose surface parameters do not start with the protocol's.
    pub param_mismatches: Vec<String>,
    /// Why nothing could be compared (no surface recorded).
    pub reason: Option<String>,
}

impl AdapterManifest {
    /// Validates an adapter manifest document; problems name its fields.
    pub fn from_value(value: Value, file: Option<&Path>) -> Result<Self, ManifestError> {
        let mut problems = Vec::new();
        if let Value::Object(obj) = &value {
            for key in ["name", "task_name", "module", "class"] {
                match obj.get(key) {
                    Some(Value::String(s)) if !s.trim().is_empty() => {}
                    Some(Value::String(_)) => problems.push(ManifestProblem {
                        field: key.to_owned(),
                        reason: "must not be empty".to_owned(),
                    }),
                    Some(other) => problems.push(ManifestProblem {
                        field: key.to_owned(),
                        reason: format!("must be a string, found {}", json_kind(other)),
                    }),
                    None => problems.push(ManifestProblem {
                        field: key.to_owned(),
                        reason: "is required in an adapter manifest".to_owned(),
                    }),
                }
            }
            if let Some(v) = obj.get("protocol_members").filter(|v| !v.is_null()) {
                if !v.is_object() {
                    problems.push(ManifestProblem {
                        field: "protocol_members".to_owned(),
                        reason: format!("must be an object, found {}", json_kind(v)),
                    });
                }
            }
        } else {
            problems.push(ManifestProblem {
                field: String::new(),
                reason: format!("must be a JSON object, found {}", json_kind(&value)),
            });
        }
        let err = |problems| ManifestError {
            file: file.map(Path::to_path_buf),
            problems,
        };
        if !problems.is_empty() {
            return Err(err(problems));
        }
        let mut a: AdapterManifest = serde_json::from_value(value).map_err(|e| {
            err(vec![ManifestProblem {
                field: String::new(),
                reason: e.to_string(),
            }])
        })?;
        a.path = file.map(Path::to_path_buf);
        Ok(a)
    }

    /// The `module:Class` spec the worker's `--adapters` takes.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.module, self.class_name)
    }

    /// Compares this adapter's protocol with `manifest`'s recorded structural surface, by the
    /// original's rule: every protocol method present by name, its surface parameters starting
    /// with the protocol's (when both are recorded); every protocol property present. A plugin
    /// without a recorded surface matches nothing.
    pub fn matches(&self, manifest: &Manifest) -> AdapterMatch {
        let Some(surface) = manifest.structural_surface().filter(|s| !s.is_empty()) else {
            return AdapterMatch {
                reason: Some(
                    "the plugin's manifest has no structural_surface (regenerate it)".to_owned(),
                ),
                ..AdapterMatch::default()
            };
        };
        let list = |m: &Map<String, Value>, k: &str| -> Vec<Value> {
            m.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let params = |m: &Value| -> Option<Vec<Value>> {
            m.get("params").and_then(Value::as_array).cloned()
        };
        let surface_methods = list(surface, "methods");
        let surface_props = list(surface, "properties");
        let mut out = AdapterMatch::default();
        for pm in list(&self.protocol_members, "methods") {
            let name = pm.get("name").and_then(Value::as_str).unwrap_or_default();
            let Some(sm) = surface_methods
                .iter()
                .find(|m| m.get("name").and_then(Value::as_str) == Some(name))
            else {
                out.missing_methods.push(name.to_owned());
                continue;
            };
            if let (Some(p), Some(s)) = (params(&pm), params(sm)) {
                if !p.is_empty() && !s.starts_with(&p) {
                    out.param_mismatches.push(name.to_owned());
                }
            }
        }
        for prop in list(&self.protocol_members, "properties") {
            if !surface_props.contains(&prop) {
                out.missing_properties
                    .push(prop.as_str().unwrap_or_default().to_owned());
            }
        }
        out.compatible = out.missing_methods.is_empty()
            && out.missing_properties.is_empty()
            && out.param_mismatches.is_empty();
        out
    }
}

/// What a manifest file holds: a plugin or an adapter.
#[derive(Debug, Clone)]
pub enum ManifestFile {
    /// A plugin (v1 flat or v2.0).
    Plugin(Box<Manifest>),
    /// An adapter unit.
    Adapter(Box<AdapterManifest>),
}

impl ManifestFile {
    /// Reads the file at `path` and routes it by its `unit` field.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = crate::manifest::read_manifest_file(path).map_err(|reason| ManifestError {
            file: Some(path.to_path_buf()),
            problems: vec![ManifestProblem {
                field: String::new(),
                reason,
            }],
        })?;
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            // The plugin parser words JSON errors with their position.
            Err(_) => return Manifest::parse(&text, Some(path)).map(|m| Self::Plugin(Box::new(m))),
        };
        if is_adapter(&value) {
            AdapterManifest::from_value(value, Some(path)).map(|a| Self::Adapter(Box::new(a)))
        } else {
            Manifest::from_value(value, Some(path)).map(|m| Self::Plugin(Box::new(m)))
        }
    }
}
