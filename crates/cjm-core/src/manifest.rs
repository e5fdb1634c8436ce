//! Plugin manifests: the original's flat JSON format, read unchanged, plus cjm's additions.
//!
//! See PROTOCOL.md ("Manifests") for every field. [`Manifest::parse`] validates before it
//! deserializes and returns *every* problem at once, each naming the file, the field and the
//! reason ([`ManifestError`]). Unknown fields are kept in [`Manifest::extra`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::execution_mode::PluginExecutionMode;
use crate::schema::json_kind;

/// Start-up timeout when the manifest sets none: generous, because ML plugins load models for
/// minutes.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest accepted plugin name.
pub const MAX_NAME_LEN: usize = 64;

/// The largest resource figure a manifest may declare, in MB (2^40 MB = 1 EiB): anything
/// beyond is a typo or an attack, and would overflow the scheduler's arithmetic.
pub(crate) const MAX_RESOURCE_MB: f64 = 1_099_511_627_776.0;

/// What to do when a worker exits on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it stopped (state `crashed`).
    Never,
    /// Restart after a crash (non-zero exit or a signal), with backoff. The default.
    #[default]
    #[serde(alias = "on_failure")]
    OnFailure,
    /// Restart after any exit, with backoff.
    Always,
}

impl RestartPolicy {
    const VALUES: [&'static str; 4] = ["never", "on-failure", "on_failure", "always"];
}

/// Resources a plugin declares (megabytes). Informational except for the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// The plugin needs a GPU.
    #[serde(default)]
    pub requires_gpu: bool,
    /// Minimum free VRAM on one GPU, in MB.
    #[serde(
        default,
        deserialize_with = "mb",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_gpu_vram_mb: Option<u64>,
    /// Minimum available system RAM, in MB.
    #[serde(
        default,
        deserialize_with = "mb",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_system_ram_mb: Option<u64>,
    /// Recommended VRAM, in MB (informational).
    #[serde(
        default,
        deserialize_with = "mb",
        skip_serializing_if = "Option::is_none"
    )]
    pub recommended_gpu_vram_mb: Option<u64>,
    /// Other keys, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Megabyte counts may be written as integers or floats; fractions round up.
fn mb<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<f64> = Option::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x.ceil() as u64)),
        Some(x) => Err(serde::de::Error::custom(format!(
            "must be a non-negative number, got {x}"
        ))),
    }
}

/// How the host starts a plugin, derived from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSpec<'a> {
    /// A native cjm worker binary (`command` + `args`).
    Native {
        /// Program to run; relative paths resolve against the manifest's directory.
        command: &'a str,
        /// Arguments.
        args: &'a [String],
    },
    /// The original's universal Python worker
    /// (`<python_path> -m cjm_plugin_system.core.worker --module M --class C ...`).
    Python {
        /// The environment's interpreter.
        python_path: &'a str,
        /// Importable module.
        module: &'a str,
        /// Class name.
        class: &'a str,
    },
    /// Nothing to spawn: a worker that runs elsewhere, reached over HTTPS
    /// (`execution_mode: remote`).
    Remote(&'a RemoteWorker),
    /// Nothing to spawn: the plugin is registered in-process from Rust.
    InProcess,
}

/// Where a remote worker serves (`"remote": {...}` with `execution_mode: remote`): the host
/// connects to it and never starts or stops it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWorker {
    /// `https://HOST:PORT` of the worker.
    pub url: String,
    /// The PEM file of the certificate authority that signed the worker's certificate
    /// (relative paths resolve against the manifest's directory).
    pub ca_file: String,
    /// The key, among the plugin's secrets (`cjm secret set NAME KEY`), of the worker's bearer
    /// token. The token itself never appears in a manifest.
    pub token_secret: String,
}

impl RemoteWorker {
    /// The host and port of [`url`](Self::url), when it is `https://HOST:PORT[/]`.
    pub fn authority(&self) -> Option<(&str, u16)> {
        let rest = self.url.strip_prefix("https://")?.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return None;
        }
        Some((host, port.parse().ok()?))
    }
}

/// A plugin manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Discovery key and plugin name: 1–64 of `A-Z a-z 0-9 - _ .`, starting with a letter or
    /// digit.
    pub name: String,
    /// Version (`"0.0.0"` when absent).
    #[serde(default = "default_version")]
    pub version: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Author.
    #[serde(default)]
    pub author: String,
    /// Title for people (cjm extension; the schema's title or the name otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Python module to import (original workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Python class to instantiate (original workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The plugin environment's Python interpreter (original workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_path: Option<String>,
    /// Variables overlaid on the host environment for the worker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Grouping, never empty once parsed: the declared `category` (or `category_override`),
    /// else `code.taxonomy.domain`, else `"uncategorized"` (see PROTOCOL.md, "Manifests").
    #[serde(default)]
    pub category: String,
    /// Interface the plugin implements (a manager for one interface refuses others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Kind of plugin (informational).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    /// JSON Schema of the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<Value>,
    /// Declared resources.
    #[serde(default)]
    pub resources: Resources,
    /// The plugin's result database (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_path: Option<String>,
    /// Conda environment name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conda_env: Option<String>,
    /// Native worker program (cjm extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Native worker arguments (cjm extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Where the plugin runs (cjm extension; derived when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_mode: Option<PluginExecutionMode>,
    /// Where a remote worker serves (`execution_mode: remote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteWorker>,
    /// What a worker placed on a Ray cluster asks of it (`execution_mode: ray`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray: Option<RayPlacement>,
    /// Restart policy (cjm extension; `on-failure` by default).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Calls in flight at once (cjm extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Seconds the worker may take to answer its first `/health` (cjm extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout_secs: Option<f64>,
    /// Default per-call deadline in seconds (cjm extension; none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout_secs: Option<f64>,
    /// Fields this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The file this manifest was read from, if any.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// The plugin this manifest is an instance of, when it was made for one (its `name` is
    /// then the instance id); never read from or written to a file.
    #[serde(skip)]
    pub instance_of: Option<String>,
}

fn default_version() -> String {
    "0.0.0".to_owned()
}

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestProblem {
    /// The field, dotted for nested ones (`resources.min_gpu_vram_mb`); empty for the document.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// A rejected manifest: every problem, with the file it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file, when the manifest came from one.
    pub file: Option<PathBuf>,
    /// Every problem found (at least one).
    pub problems: Vec<ManifestProblem>,
}

/// The largest manifest file read (1 MiB); real manifests are a few KiB.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The text of the manifest file at `path`, or why it cannot be read. The file type is checked
/// before opening (opening a FIFO would block until a writer comes) and again on the opened
/// file (in case the path was swapped in between); at most [`MAX_MANIFEST_BYTES`] are read.
pub(crate) fn read_manifest_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    fn kind(t: std::fs::FileType) -> &'static str {
        if t.is_dir() {
            "a directory"
        } else {
            "not a regular file (a FIFO, socket or device)"
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the file: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read the file: it is {}",
            kind(meta.file_type())
        ));
    }
    let too_big = || {
        format!("cannot read the file: it is larger than the {MAX_MANIFEST_BYTES}-byte limit for manifests")
    };
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(too_big());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let opened = file
        .metadata()
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if !opened.is_file() {
        return Err(format!(
            "cannot read the file: it is {}",
            kind(opened.file_type())
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(opened.len()).unwrap_or(0).min(1 << 20));
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read the file: not UTF-8 text: {e}"))
}

impl fmt::Display for ManifestError {
    /// One `file: field: reason` line per problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map_or_else(|| "<manifest>".to_owned(), |p| p.display().to_string());
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.field.is_empty() {
                write!(f, "{file}: {}", p.reason)?;
            } else {
                write!(f, "{file}: {}: {}", p.field, p.reason)?;
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// Parses and validates manifest text. `file` is only used in error messages and to
    /// resolve relative paths later.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Self, ManifestError> {
        let fail = |field: &str, reason: String| ManifestError {
            file: file.map(Path::to_path_buf),
            problems: vec![ManifestProblem {
                field: field.to_owned(),
                reason,
            }],
        };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            fail(
                "",
                format!(
                    "not valid JSON: {} (line {}, column {})",
                    strip_position(&e),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        Self::from_value(value, file)
    }

    /// Reads, parses and validates the manifest at `path`.
    ///
    /// Only regular files (a symbolic link to one is fine) of at most [`MAX_MANIFEST_BYTES`]
    /// are read: a FIFO, a device such as `/dev/zero`, a directory or an oversized file is an
    /// error naming the file, so that a stray `x.json` can neither hang discovery nor exhaust
    /// memory.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = read_manifest_file(path).map_err(|reason| ManifestError {
            file: Some(path.to_path_buf()),
            problems: vec![ManifestProblem {
                field: String::new(),
                reason,
            }],
        })?;
        Self::parse(&text, Some(path))
    }

    /// Validates a JSON value and turns it into a manifest.
    pub fn from_value(mut value: Value, file: Option<&Path>) -> Result<Self, ManifestError> {
        let err = |problems| ManifestError {
            file: file.map(Path::to_path_buf),
            problems,
        };
        if crate::manifest_v2::is_adapter(&value) {
            return Err(err(vec![ManifestProblem {
                field: "unit".to_owned(),
                reason: "this is an adapter manifest, not a plugin (read it with \
                         ManifestFile::load or AdapterManifest::from_value)"
                    .to_owned(),
            }]));
        }
        let v2 = crate::manifest_v2::is_v2(&value);
        if v2 {
            value = crate::manifest_v2::flatten_v2(&value).map_err(err)?;
        }
        let mut problems = validate(&value);
        if let Value::Object(obj) = &value {
            crate::manifest_v2::check_v2_fields(obj, &mut problems);
        }
        if !problems.is_empty() {
            if v2 {
                for p in &mut problems {
                    p.field = crate::manifest_v2::v2_path(&p.field);
                }
            }
            return Err(err(problems));
        }
        // `null` means "absent" for every known optional field.
        if let Value::Object(obj) = &mut value {
            obj.retain(|k, v| !(v.is_null() && KNOWN_FIELDS.contains(&k.as_str())));
            // ... and for the declared resources (validation already skips them).
            if let Some(Value::Object(res)) = obj.get_mut("resources") {
                res.retain(|k, v| !(v.is_null() && RESOURCE_FIELDS.contains(&k.as_str())));
            }
        }
        let mut manifest: Manifest = serde_json::from_value(value).map_err(|e| {
            err(vec![ManifestProblem {
                field: String::new(),
                reason: e.to_string(),
            }])
        })?;
        manifest.path = file.map(Path::to_path_buf);
        manifest.derive_category();
        Ok(manifest)
    }

    /// The plugin's own name: [`instance_of`](Self::instance_of) for an instance's manifest,
    /// else [`name`](Self::name). Secrets are the plugin's, shared by its instances.
    pub fn plugin_name(&self) -> &str {
        self.instance_of.as_deref().unwrap_or(&self.name)
    }

    /// How to start the plugin.
    pub fn worker(&self) -> WorkerSpec<'_> {
        if let Some(r) = &self.remote {
            return WorkerSpec::Remote(r);
        }
        match (&self.command, &self.python_path, &self.module, &self.class) {
            (Some(command), _, _, _) => WorkerSpec::Native {
                command,
                args: &self.args,
            },
            (None, Some(python_path), Some(module), Some(class)) => WorkerSpec::Python {
                python_path,
                module,
                class,
            },
            _ => WorkerSpec::InProcess,
        }
    }

    /// The execution mode: the declared one, else derived (`in_process` with nothing to spawn,
    /// `conda_env` for a Python worker with `conda_env` set, else `subprocess`).
    pub fn effective_execution_mode(&self) -> PluginExecutionMode {
        if let Some(m) = self.execution_mode {
            return m;
        }
        if self.ray.is_some() {
            return PluginExecutionMode::Ray;
        }
        match self.worker() {
            WorkerSpec::Remote(_) => PluginExecutionMode::Remote,
            WorkerSpec::InProcess => PluginExecutionMode::InProcess,
            WorkerSpec::Python { .. } if self.conda_env.is_some() => PluginExecutionMode::CondaEnv,
            _ => PluginExecutionMode::Subprocess,
        }
    }

    /// The start-up timeout (the manifest's, else [`DEFAULT_STARTUP_TIMEOUT`]).
    pub fn startup_timeout(&self) -> Duration {
        self.startup_timeout_secs
            .map_or(DEFAULT_STARTUP_TIMEOUT, Duration::from_secs_f64)
    }

    /// The default per-call deadline, if the manifest sets one.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.call_timeout_secs.map(Duration::from_secs_f64)
    }

    /// The defaults of the configuration schema's properties (`{}` without a schema).
    pub fn config_defaults(&self) -> Map<String, Value> {
        self.config_schema
            .as_ref()
            .map(crate::schema::schema_defaults)
            .unwrap_or_default()
    }

    /// The directory relative paths resolve against (the manifest's own directory).
    pub fn base_dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// The top-level fields of a v1 flat manifest that cjm reads (everything else is kept in
/// [`Manifest::extra`]).
pub const KNOWN_FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "author",
    "title",
    "module",
    "class",
    "python_path",
    "env_vars",
    "category",
    "interface",
    "type",
    "config_schema",
    "resources",
    "db_path",
    "conda_env",
    "command",
    "args",
    "execution_mode",
    "remote",
    "ray",
    "restart",
    "max_concurrency",
    "startup_timeout_secs",
    "call_timeout_secs",
];

const RESOURCE_FIELDS: &[&str] = &[
    "requires_gpu",
    "min_gpu_vram_mb",
    "min_system_ram_mb",
    "recommended_gpu_vram_mb",
];

/// True for a name cjm accepts: 1–64 of `A-Z a-z 0-9 - _ .`, starting with a letter or digit.
pub fn is_valid_plugin_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && name.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

struct Checker<'a> {
    obj: &'a Map<String, Value>,
    problems: Vec<ManifestProblem>,
}

impl<'a> Checker<'a> {
    fn problem(&mut self, field: &str, reason: impl Into<String>) {
        self.problems.push(ManifestProblem {
            field: field.to_owned(),
            reason: reason.into(),
        });
    }

    /// The field's value when present and not null.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    /// An optional string field; returns it when it is one.
    fn string(&mut self, field: &str) -> Option<&'a str> {
        match self.get(field)? {
            Value::String(s) => Some(s),
            other => {
                self.problem(
                    field,
                    format!("must be a string, found {}", json_kind(other)),
                );
                None
            }
        }
    }

    /// An optional non-empty string field.
    fn non_empty_string(&mut self, field: &str) -> Option<&'a str> {
        let s = self.string(field)?;
        if s.trim().is_empty() {
            self.problem(field, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn number(&mut self, field: &str, v: &Value) -> Option<f64> {
        match v.as_f64() {
            Some(x) => Some(x),
            None => {
                self.problem(field, format!("must be a number, found {}", json_kind(v)));
                None
            }
        }
    }
}

/// Every problem of a manifest document, in field order.
/// `remote` and `execution_mode: remote` go together; `remote` holds `url`
/// (`https://HOST:PORT`), `ca_file` and `token_secret`, and never the token itself.
fn check_remote(c: &mut Checker<'_>, mode: Option<PluginExecutionMode>) {
    let remote = c.get("remote").cloned();
    match (&remote, mode) {
        (None, Some(PluginExecutionMode::Remote)) => c.problem(
            "execution_mode",
            "`remote` needs a `remote` block (url, ca_file, token_secret)",
        ),
        (Some(_), Some(m)) if m != PluginExecutionMode::Remote => c.problem(
            "execution_mode",
            format!("must be `remote` (or absent) when `remote` is given, not `{m}`"),
        ),
        _ => {}
    }
    let Some(remote) = remote else { return };
    let Value::Object(r) = &remote else {
        return c.problem(
            "remote",
            format!("must be an object, found {}", json_kind(&remote)),
        );
    };
    for key in r.keys() {
        match key.as_str() {
            "url" | "ca_file" | "token_secret" => {}
            "token" | "auth_token" | "bearer_token" => c.problem(
                &format!("remote.{key}"),
                "a token is never written in a manifest: store it with `cjm secret set NAME KEY` \
                 and name the KEY in `remote.token_secret`",
            ),
            other => c.problem(
                &format!("remote.{other}"),
                "is not a field of `remote` (url, ca_file, token_secret)",
            ),
        }
    }
    for field in ["url", "ca_file", "token_secret"] {
        match r.get(field) {
            None => c.problem(&format!("remote.{field}"), "is required"),
            Some(Value::String(s)) if s.trim().is_empty() => {
                c.problem(&format!("remote.{field}"), "must not be empty")
            }
            Some(Value::String(_)) => {}
            Some(other) => c.problem(
                &format!("remote.{field}"),
                format!("must be a string, found {}", json_kind(other)),
            ),
        }
    }
    if let Some(Value::String(url)) = r.get("url") {
        let probe = RemoteWorker {
            url: url.clone(),
            ca_file: String::new(),
            token_secret: String::new(),
        };
        if probe.authority().is_none() {
            c.problem(
                "remote.url",
                format!("{url:?} is not https://HOST:PORT (the host speaks only TLS to a remote worker)"),
            );
        }
    }
}

fn validate(value: &Value) -> Vec<ManifestProblem> {
    let Value::Object(obj) = value else {
        return vec![ManifestProblem {
            field: String::new(),
            reason: format!("must be a JSON object, found {}", json_kind(value)),
        }];
    };
    let mut c = Checker {
        obj,
        problems: Vec::new(),
    };

    // name
    match c.get("name") {
        None => c.problem("name", "is required"),
        Some(Value::String(n)) if is_valid_plugin_name(n) => {}
        Some(Value::String(n)) => c.problem(
            "name",
            format!(
                "{n:?} is not a safe identifier: use 1-{MAX_NAME_LEN} letters, digits, '-', '_' \
                 or '.', starting with a letter or digit"
            ),
        ),
        Some(other) => c.problem(
            "name",
            format!("must be a string, found {}", json_kind(other)),
        ),
    }

    for field in [
        "version",
        "description",
        "author",
        "title",
        "category",
        "interface",
        "type",
        "db_path",
        "conda_env",
    ] {
        c.string(field);
    }

    // How to start it.
    let command = c.non_empty_string("command");
    c.non_empty_string("python_path");
    let module = c.non_empty_string("module");
    let class = c.non_empty_string("class");
    if let Some(m) = module {
        if !m.split('.').all(is_identifier) {
            c.problem(
                "module",
                format!("{m:?} is not a dotted Python module path"),
            );
        }
    }
    if let Some(k) = class {
        if !is_identifier(k) {
            c.problem("class", format!("{k:?} is not a Python class name"));
        }
    }
    let mode = match c.get("execution_mode") {
        None => None,
        Some(Value::String(s)) => match s.parse::<PluginExecutionMode>() {
            Ok(m) => Some(m),
            Err(e) => {
                c.problem("execution_mode", e.to_string());
                None
            }
        },
        Some(other) => {
            c.problem(
                "execution_mode",
                format!("must be a string, found {}", json_kind(other)),
            );
            None
        }
    };
    let any_python = ["python_path", "module", "class"]
        .iter()
        .any(|f| c.get(f).is_some());
    let remote = c.get("remote").is_some();
    check_remote(&mut c, mode);
    ray::check_ray(&mut c, mode);
    if remote && (c.get("command").is_some() || any_python) {
        c.problem(
            "remote",
            "a remote worker is not started by the host: give `remote` without `command`, \
             `python_path`, `module` or `class`",
        );
    } else if remote {
    } else if command.is_some() && any_python {
        c.problem(
            "command",
            "a manifest gives either `command` (a native worker) or `python_path`/`module`/`class` \
             (a Python worker), not both",
        );
    } else if command.is_none() && c.get("command").is_none() {
        if any_python {
            for f in ["python_path", "module", "class"] {
                if c.get(f).is_none() {
                    c.problem(
                        f,
                        "is required for a Python worker (with python_path, module and class)",
                    );
                }
            }
        } else if mode != Some(PluginExecutionMode::InProcess) {
            c.problem(
                "command",
                "the manifest needs either `command` (a native worker) or `python_path`, `module` \
                 and `class` (a Python worker)",
            );
        }
    }

    // args
    match c.get("args") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_string() {
                    c.problem(
                        &format!("args[{i}]"),
                        format!("must be a string, found {}", json_kind(item)),
                    );
                }
            }
        }
        Some(other) => c.problem(
            "args",
            format!("must be an array of strings, found {}", json_kind(other)),
        ),
    }

    // env_vars
    match c.get("env_vars") {
        None => {}
        Some(Value::Object(vars)) => {
            for (k, v) in vars {
                let field = format!("env_vars.{k}");
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    c.problem(&field, "is not a valid environment variable name");
                }
                match v {
                    Value::String(s) if s.contains('\0') => {
                        c.problem(&field, "must not contain a NUL character")
                    }
                    Value::String(_) => {}
                    other => c.problem(
                        &field,
                        format!("must be a string, found {}", json_kind(other)),
                    ),
                }
            }
        }
        Some(other) => c.problem(
            "env_vars",
            format!("must be an object of strings, found {}", json_kind(other)),
        ),
    }

    // config_schema
    match c.get("config_schema") {
        None => {}
        Some(Value::Object(schema)) => {
            if let Some(t) = schema.get("type") {
                if t != "object" {
                    c.problem(
                        "config_schema.type",
                        format!("a configuration schema must have type \"object\", found {t}"),
                    );
                }
            }
            if let Some(p) = schema.get("properties") {
                if !p.is_object() {
                    c.problem(
                        "config_schema.properties",
                        format!("must be an object, found {}", json_kind(p)),
                    );
                }
            }
        }
        Some(other) => c.problem(
            "config_schema",
            format!("must be a JSON Schema object, found {}", json_kind(other)),
        ),
    }

    // resources
    match c.get("resources") {
        None => {}
        Some(Value::Object(res)) => {
            if let Some(v) = res.get("requires_gpu").filter(|v| !v.is_null()) {
                if !v.is_boolean() {
                    c.problem(
                        "resources.requires_gpu",
                        format!("must be true or false, found {}", json_kind(v)),
                    );
                }
            }
            for key in [
                "min_gpu_vram_mb",
                "min_system_ram_mb",
                "recommended_gpu_vram_mb",
            ] {
                let field = format!("resources.{key}");
                if let Some(v) = res.get(key).filter(|v| !v.is_null()) {
                    if let Some(x) = c.number(&field, v) {
                        if !x.is_finite() || x < 0.0 {
                            c.problem(&field, format!("must not be negative, found {x}"));
                        } else if x > MAX_RESOURCE_MB {
                            c.problem(
                                &field,
                                format!(
                                    "{x} MB is beyond any machine (at most {MAX_RESOURCE_MB} MB, \
                                     1 EiB)"
                                ),
                            );
                        }
                    }
                }
            }
        }
        Some(other) => c.problem(
            "resources",
            format!("must be an object, found {}", json_kind(other)),
        ),
    }

    // restart
    match c.get("restart") {
        None => {}
        Some(Value::String(s)) if RestartPolicy::VALUES.contains(&s.as_str()) => {}
        Some(other) => c.problem(
            "restart",
            format!("must be one of \"never\", \"on-failure\", \"always\"; found {other}"),
        ),
    }

    // max_concurrency
    if let Some(v) = c.get("max_concurrency") {
        match v.as_u64() {
            Some(n) if (1..=65_536).contains(&n) => {}
            _ => c.problem(
                "max_concurrency",
                format!("must be an integer from 1 to 65536, found {v}"),
            ),
        }
    }

    // timeouts
    for field in ["startup_timeout_secs", "call_timeout_secs"] {
        if let Some(v) = c.get(field) {
            if let Some(x) = c.number(field, v) {
                if !(x > 0.0 && x <= 604_800.0) {
                    c.problem(
                        field,
                        format!("must be more than 0 and at most 604800 seconds, found {x}"),
                    );
                }
            }
        }
    }

    c.problems
}

mod ray;
#[cfg(test)]
mod tests;

pub use ray::RayPlacement;
