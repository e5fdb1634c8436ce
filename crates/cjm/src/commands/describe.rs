//! The commands that use a worker's self-description (`WORKER --describe`) and never start a
//! plugin: `manifest`, `info` without `--live`, `call` without an operation, and the
//! configuration's defaults and reset.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cjm_core::describe::{InputKind, OperationDescription, WorkerDescription};
use cjm_core::{schema_defaults, unique_id, Manifest, PluginError};
use serde_json::{json, Value};

use super::{Context, Failure, USAGE};
use crate::output::{self, note, say, tell};

/// The category of a manifest written by `cjm manifest`.
const DEFAULT_CATEGORY: &str = "plugins";

/// `cjm manifest BINARY [--out DIR]`: a complete manifest from the worker's description,
/// printed, or written to `DIR/<name>.json`.
pub(super) fn write_manifest(binary: &Path, out: Option<&Path>) -> Result<ExitCode, Failure> {
    let program = std::fs::canonicalize(binary).map_err(|e| {
        Failure::Usage(format!(
            "{}: cannot find the program: {e}",
            binary.display()
        ))
    })?;
    let d = cjm_host::describe_binary(&program, cjm_host::DESCRIBE_TIMEOUT)?;
    let dir = out
        .map(|o| std::fs::canonicalize(o).unwrap_or_else(|_| o.to_path_buf()))
        .unwrap_or_default();
    let command = match (out, program.strip_prefix(&dir)) {
        (Some(_), Ok(rel)) => format!("./{}", rel.display()),
        _ => program.display().to_string(),
    };
    let manifest = json!({
        "name": d.name,
        "version": d.version,
        "description": d.description,
        // The registry and the settings page group plugins by category; edit it at will.
        "category": DEFAULT_CATEGORY,
        "command": command,
        "config_schema": d.config_schema,
        "resources": d.resources,
        "max_concurrency": d.max_concurrency,
    });
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| PluginError::fatal(format!("cannot write the manifest: {e}")))?;
    let Some(out) = out else {
        Manifest::parse(&text, None).map_err(|e| PluginError::fatal(e.to_string()))?;
        say!("{}", output::json(&manifest));
        return Ok(ExitCode::SUCCESS);
    };
    let file: PathBuf = out.join(format!("{}.json", d.name));
    // Parsed as the host will read it, from where it will lie: a bad name or schema is said now.
    Manifest::parse(&text, Some(&file)).map_err(|e| PluginError::fatal(e.to_string()))?;
    std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&file, format!("{text}\n")))
        .map_err(|e| PluginError::fatal(format!("cannot write {}: {e}", file.display())))?;
    tell!("wrote {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// One line per operation: its name, its inputs and what it does.
fn operation_lines(d: &WorkerDescription) -> Vec<String> {
    d.operations
        .iter()
        .map(|op| {
            let name = op.name.as_deref().unwrap_or("(call)");
            let mut line = format!("  {name}");
            let inputs = inputs_text(op);
            if !inputs.is_empty() {
                line.push_str(&format!("  {inputs}"));
            }
            if op.streams {
                line.push_str("  [streams]");
            }
            if op.blobs {
                line.push_str("  [blobs]");
            }
            if !op.description.is_empty() {
                line.push_str(&format!("\n      {}", op.description));
            }
            line
        })
        .collect()
}

/// `seconds: number, steps?: integer` from an operation's schema (`?`: optional).
fn inputs_text(op: &OperationDescription) -> String {
    let schema = &op.input_schema;
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return match schema {
            Value::Bool(true) => "(any keyword arguments)".into(),
            _ => String::new(),
        };
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(k, v)| {
            let ty = match v.get("type") {
                Some(Value::String(t)) => t.clone(),
                Some(Value::Array(ts)) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("|"),
                _ => "any".into(),
            };
            let opt = if required.contains(&k.as_str()) {
                ""
            } else {
                "?"
            };
            format!("{k}{opt}: {ty}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Context {
    /// The described operations of `name`, or `None` when it is not a describable worker (a
    /// Python worker): a describe that fails is said on stderr.
    fn description_of(&self, name: &str) -> Option<std::sync::Arc<WorkerDescription>> {
        match self.manager.describe(name) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(plugin = %name, "no description: {e}");
                None
            }
        }
    }

    /// `cjm call NAME` without `--args` on a plugin that takes an operation name: the
    /// operations and their inputs, exit 2. `None`: go on with the call.
    pub(super) fn list_operations_instead(&self, name: &str) -> Result<Option<ExitCode>, Failure> {
        let Some(d) = self.description_of(name) else {
            return Ok(None);
        };
        if d.input != InputKind::Command {
            return Ok(None);
        }
        tell!("cjm: `{name}` needs an operation: --args '[\"OPERATION\"]' --kwargs '{{...}}'");
        tell!("operations of {name}:");
        for line in operation_lines(&d) {
            tell!("{line}");
        }
        Ok(Some(ExitCode::from(USAGE)))
    }

    /// `cjm config NAME` with nothing saved: the schema's defaults, labelled as such.
    pub(super) fn print_defaults(&self, name: &str) -> Result<(), Failure> {
        let schema = self.manager.config_schema(name)?;
        tell!("no saved configuration; these are the schema's defaults:");
        say!("{}", output::json(&Value::Object(schema_defaults(&schema))));
        Ok(())
    }

    /// `cjm config NAME --reset`: removes the saved configuration.
    pub(super) async fn config_reset(&self, name: &str) -> Result<ExitCode, Failure> {
        let m = self.manifest(name)?;
        let reg = self.registry().await?;
        let id = unique_id(&m.category, &m.name);
        let removed = reg
            .delete_plugin_config(&id)
            .map_err(|e| PluginError::fatal(e.to_string()))?;
        if removed {
            tell!("removed the saved configuration of {name}; the defaults apply");
        } else {
            tell!("{name} had no saved configuration; the defaults apply");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `cjm info NAME`: metadata, operations, schema and saved configuration, from the manifest
    /// and the worker's description, without starting the plugin.
    pub(super) async fn info_without_starting(
        &self,
        name: &str,
        as_json: bool,
    ) -> Result<ExitCode, Failure> {
        let m = self.manifest(name)?;
        let d = self.description_of(name);
        let schema = self.manager.config_schema(name)?;
        let saved = match self.load_config(&m, None).await {
            Ok(saved) => saved,
            Err(Failure::Plugin(e)) => {
                tell!("warning: {}", e.message);
                None
            }
            Err(e) => return Err(e),
        };
        // What a load would apply: the saved keys over the schema's defaults.
        let mut config = schema_defaults(&schema);
        if let Some(Value::Object(saved)) = &saved {
            config.extend(saved.clone());
        }
        let config = Value::Object(config);
        let info = json!({
            "name": m.name, "version": m.version, "category": m.category,
            "description": m.description,
            "execution_mode": m.effective_execution_mode(),
            "generation": m.generation(),
            // Without starting it: what the last command that started it found, if any.
            "drift": crate::drift_cache::known(&self.data_dir, &m),
            "manifest_file": m.path,
            "manifest": &*m,
            "config_schema": schema,
            "config": config,
            "config_saved": saved.is_some(),
            "worker_description": d.as_deref(),
        });
        if as_json {
            say!("{}", output::json(&info));
            return Ok(ExitCode::SUCCESS);
        }
        super::say_info_head(&m);
        say!("  generation: {}", m.generation());
        if let Some(d) = crate::drift_cache::known(&self.data_dir, &m).filter(|d| d.any()) {
            say!(
                "  drift:      when last started, the worker's {} differed from the manifest \
                 (regenerate it)",
                d.describe()
            );
        }
        if let Some(p) = &m.path {
            say!("  manifest:   {}", p.display());
        }
        say!(
            "  config:     {}{}",
            output::json(&info["config"]),
            if saved.is_some() {
                " (saved)"
            } else {
                " (defaults)"
            }
        );
        say!("  schema:{}", super::indented(&info["config_schema"], 4));
        match &d {
            Some(d) => {
                say!("  operations:");
                for line in operation_lines(d) {
                    say!("  {line}");
                }
            }
            None => say!("  operations: (not described by this worker)"),
        }
        note(&format!(
            "not started; `cjm info {name} --live` adds health and stats"
        ));
        Ok(ExitCode::SUCCESS)
    }
}
