//! `cjm new NAME`: a worker crate that builds and runs as it is.

use std::path::{Path, PathBuf};

/// The SDK in the checkout this `cjm` was built from, when that checkout is still there.
fn local_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cjm-worker-sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().unwrap_or(sdk))
}

/// Whether `name` works as a crate, binary and plugin name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The crate's Cargo.toml: the SDK by path from a cjm checkout, else a commented git source.
fn cargo_toml(name: &str, sdk: Option<&Path>) -> String {
    let sdk_line = match sdk {
        Some(p) => format!(
            "# The SDK in the cjm checkout `cjm new` was built from. Elsewhere, use a git or\n\
             # registry source, e.g. cjm-worker-sdk = {{ git = \"https://example.invalid/cjm\" }}\n\
             cjm-worker-sdk = {{ path = {:?} }}",
            p.display().to_string()
        ),
        None => "# Point this at where cjm lives: a registry version, a git source\n\
                 # (cjm-worker-sdk = { git = \"https://example.invalid/cjm\" }) or a path.\n\
                 cjm-worker-sdk = \"0.1\""
            .to_string(),
    };
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         # A crate of its own, even when created inside another workspace.\n[workspace]\n\n\
         [dependencies]\n{sdk_line}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\
         serde_json = \"1\"\n"
    )
}

/// The worker: a typed configuration and one operation greeting `name`, with progress.
fn main_rs(name: &str) -> String {
    format!(
        r#"//! The `{name}` worker: `cjm call {name} --kwargs '{{"name": "Ada"}}'`.
use std::sync::Mutex;

use cjm_worker_sdk::schemars::JsonSchema;
use cjm_worker_sdk::{{async_trait, CallContext, Kwargs, PluginError, Worker}};
use serde::{{Deserialize, Serialize}};
use serde_json::{{json, Value}};

/// The settings: a form in `cjm ui`, checked before `cjm config` saves them.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "cjm_worker_sdk::schemars")] // derive through the SDK's re-export
#[serde(default)]
struct Config {{
    /// The greeting word.
    greeting: String,
}}

impl Default for Config {{
    fn default() -> Self {{
        Self {{ greeting: "Hello".into() }}
    }}
}}

#[derive(Default)]
struct Plugin(Mutex<Config>);

#[async_trait]
impl Worker for Plugin {{
    type Config = Config;
    type Input = Kwargs<Value>;
    type Output = Value;

    async fn initialize(&self, config: Config) -> Result<(), PluginError> {{
        *self.0.lock().map_err(|_| PluginError::fatal("config lock poisoned"))? = config;
        Ok(())
    }}

    async fn execute(&self, Kwargs(kw): Kwargs<Value>, ctx: CallContext) -> Result<Value, PluginError> {{
        let greeting = self.0.lock().map_err(|_| PluginError::fatal("config lock poisoned"))?.greeting.clone();
        ctx.report_progress(1.0, "done");
        Ok(json!({{"greeting": format!("{{greeting}}, {{}}!", kw["name"].as_str().unwrap_or("world"))}}))
    }}
}}

// The name must match the manifest's.
cjm_worker_sdk::main!(Plugin::default(), name = "{name}");
"#
    )
}

/// The manifest, in `.cjm/manifests/` of the crate: a relative command resolves from the
/// manifest's folder, so it names `target/debug/NAME`.
fn manifest(name: &str) -> String {
    let m = serde_json::json!({
        "name": name, "version": "0.1.0", "category": "demo",
        "description": format!("The {name} worker."),
        "command": format!("../../target/debug/{name}"),
    });
    serde_json::to_string_pretty(&m).unwrap_or_default() + "\n"
}

/// Writes the crate `name` into `dir` (which must not exist, or be empty).
pub(crate) fn new_worker(name: &str, dir: &Path) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "new: `{name}` is not a usable name: use lowercase letters, digits, '-' and '_', \
             starting with a letter (at most 64)"
        ));
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("new: cannot read {}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!("new: {} exists and is not empty", dir.display()));
    }
    let files = [
        (
            "Cargo.toml".to_string(),
            cargo_toml(name, local_sdk().as_deref()),
        ),
        ("src/main.rs".to_string(), main_rs(name)),
        (format!(".cjm/manifests/{name}.json"), manifest(name)),
        (".gitignore".to_string(), "/target\n".to_string()),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("new: cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| format!("new: cannot write {}: {e}", path.display()))?;
    }
    // Inside a cjm checkout, pin the versions the checkout is tested with.
    if let Some(sdk) = local_sdk() {
        let lock = sdk.join("../../Cargo.lock");
        if lock.is_file() {
            let _ = std::fs::copy(lock, dir.join("Cargo.lock"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("hello"));
        assert!(valid_name("my-worker_2"));
        assert!(!valid_name("Hello"));
        assert!(!valid_name("2x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn cargo_toml_names_the_sdk_source() {
        let local = cargo_toml("w", Some(Path::new("/repo/crates/cjm-worker-sdk")));
        assert!(local.contains("cjm-worker-sdk = { path = \"/repo/crates/cjm-worker-sdk\" }"));
        assert!(local.contains("git ="), "{local}");
        let remote = cargo_toml("w", None);
        assert!(remote.contains("cjm-worker-sdk = \"0.1\""));
    }

    #[test]
    fn refuses_a_non_empty_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), "").unwrap();
        let e = new_worker("w", d.path()).unwrap_err();
        assert!(e.contains("not empty"), "{e}");
    }
}
