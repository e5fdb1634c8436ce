//! A worker's environment, composed in the original 0.0.46 host's order, lowest first:
//!
//! 1. the host's own environment (inherited);
//! 2. the manifest's `install.env_vars` (v1: `env_vars`);
//! 3. the resolved `code.worker_env` contract: visible variables from their `default`, with
//!    the `${...}` templates expanded, and secret variables from the [`SecretStore`];
//! 4. the host's paths, which always win: `CJM_PLUGIN_DATA_DIR` = `<data>/data`,
//!    `PLUGIN_DATA_DIR` = `<data>/data/<name>` (created), `CJM_MODELS_DIR` when configured;
//!    for cjm-substrate workers their names `CJM_CAPABILITY_DATA_DIR` and
//!    `CAPABILITY_DATA_DIR` instead.
//!
//! Everything is resolved again at every start, so a changed secret or `env_vars` reaches the
//! worker at its next start (`reload`, a restart after a crash, or the next `cjm` command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cjm_core::{FieldError, Manifest, PluginError, WorkerGeneration};

use crate::secrets::SecretStore;

/// The ordered overlay: later entries override earlier ones when applied in turn.
pub(crate) type Overlay = Vec<(String, String)>;

/// The names the host's paths are given in the worker, per generation.
struct PathNames {
    root: &'static str,
    own: &'static str,
    name: &'static str,
}

fn path_names(generation: WorkerGeneration) -> PathNames {
    match generation {
        WorkerGeneration::Substrate => PathNames {
            root: "CJM_CAPABILITY_DATA_DIR",
            own: "CAPABILITY_DATA_DIR",
            name: "CAPABILITY_NAME",
        },
        _ => PathNames {
            root: "CJM_PLUGIN_DATA_DIR",
            own: "PLUGIN_DATA_DIR",
            name: "PLUGIN_NAME",
        },
    }
}

/// The per-plugin data directory, `<data_dir>/data/<name>`.
pub(crate) fn plugin_data_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("data").join(name)
}

/// Expands `${NAME}` placeholders of a `worker_env` default from `vars`, single pass. An
/// unknown placeholder or one without a value is an error naming it.
pub(crate) fn expand_template(
    template: &str,
    vars: &BTreeMap<&str, Option<String>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated placeholder in {template:?}"));
        };
        let key = &after[..end];
        match vars.get(key) {
            Some(Some(v)) => out.push_str(v),
            Some(None) => return Err(format!("${{{key}}} has no value on this host")),
            None => return Err(format!("unknown placeholder ${{{key}}}")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Composes the overlay for `manifest` (see the module docs). A `required` variable that
/// cannot be resolved (a missing secret, a default whose template has no value) fails with a
/// `config` error naming the plugin and the variable; an optional one is left out with a
/// warning, as the original does.
pub(crate) fn overlay(
    manifest: &Manifest,
    data_dir: &Path,
    models_dir: Option<&Path>,
) -> Result<Overlay, PluginError> {
    let generation = manifest.generation();
    let names = path_names(generation);
    let root = data_dir.join("data");
    let own = plugin_data_dir(data_dir, &manifest.name);
    let mut out: Overlay = manifest
        .env_vars
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let specs = manifest.worker_env();
    if !specs.is_empty() {
        let text = |p: &Path| Some(p.display().to_string());
        let vars: BTreeMap<&str, Option<String>> = BTreeMap::from([
            ("CJM_MODELS_DIR", models_dir.and_then(text)),
            (names.root, text(&root)),
            (names.own, text(&own)),
            (names.name, Some(manifest.name.clone())),
        ]);
        let store = SecretStore::for_data_dir(data_dir);
        for spec in specs {
            let resolved = if spec.secret {
                store
                    .get(manifest.plugin_name(), &spec.name)
                    .map_err(|e| format!("cannot read the secret store: {e}"))
                    .and_then(|v| {
                        v.ok_or_else(|| {
                            format!(
                                "the secret is not set (run `cjm secret set {} {}`)",
                                manifest.plugin_name(),
                                spec.name
                            )
                        })
                    })
            } else {
                match &spec.default {
                    Some(d) => expand_template(d, &vars),
                    None => Err("no default value is declared".to_owned()),
                }
            };
            match resolved {
                Ok(v) => out.push((spec.name.clone(), v)),
                Err(why) if spec.required => {
                    return Err(PluginError::config(
                        format!(
                            "plugin `{}` needs the environment variable {} (code.worker_env): {why}",
                            manifest.name, spec.name
                        ),
                        vec![FieldError {
                            field: format!("worker_env.{}", spec.name),
                            reason: why,
                        }],
                    )
                    .retriable(false)
                    .with_plugin(&manifest.name));
                }
                Err(why) => {
                    // A secret that is simply not set is normal for optional ones.
                    tracing::debug!(plugin = %manifest.name, variable = %spec.name, "worker_env left out: {why}");
                }
            }
        }
    }

    if generation.is_python() {
        if let Err(e) = std::fs::create_dir_all(&own) {
            tracing::warn!(plugin = %manifest.name, dir = %own.display(), error = %e, "cannot create the plugin's data directory");
        }
        out.push((names.root.to_owned(), root.display().to_string()));
        out.push((names.own.to_owned(), own.display().to_string()));
    }
    if let Some(m) = models_dir {
        out.push(("CJM_MODELS_DIR".to_owned(), m.display().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(worker_env: serde_json::Value) -> Manifest {
        Manifest::from_value(
            serde_json::json!({
                "format_version": "2.0",
                "install": {"python_path": "/nowhere/bin/python", "env_vars": {"A": "install", "PLUGIN_DATA_DIR": "mine"}},
                "code": {"name": "nltk", "module": "m", "class": "C", "worker_env": worker_env},
            }),
            None,
        )
        .unwrap()
    }

    fn last<'a>(o: &'a Overlay, k: &str) -> Option<&'a str> {
        o.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn templates_expand_and_paths_win() {
        let tmp = tempfile::tempdir().unwrap();
        let m = v2(serde_json::json!([
            {"name": "NLTK_DATA", "default": "${PLUGIN_DATA_DIR}/nltk"},
            {"name": "A", "default": "worker_env"},
            {"name": "HF", "default": "${CJM_MODELS_DIR}/hf"},
            {"name": "WHO", "default": "${PLUGIN_NAME}"}
        ]));
        let o = overlay(&m, tmp.path(), None).unwrap();
        let own = tmp.path().join("data").join("nltk");
        assert_eq!(
            last(&o, "NLTK_DATA"),
            Some(format!("{}/nltk", own.display()).as_str())
        );
        assert_eq!(
            last(&o, "A"),
            Some("worker_env"),
            "worker_env beats install"
        );
        assert_eq!(last(&o, "HF"), None, "no models dir: left out");
        assert_eq!(last(&o, "WHO"), Some("nltk"));
        assert_eq!(
            last(&o, "PLUGIN_DATA_DIR"),
            Some(own.display().to_string().as_str())
        );
        assert!(own.is_dir());
        let with_models = overlay(&m, tmp.path(), Some(Path::new("/models"))).unwrap();
        assert_eq!(last(&with_models, "HF"), Some("/models/hf"));
        assert_eq!(last(&with_models, "CJM_MODELS_DIR"), Some("/models"));
    }

    #[test]
    fn a_missing_required_secret_is_a_config_error_naming_plugin_and_variable() {
        let tmp = tempfile::tempdir().unwrap();
        let m = v2(serde_json::json!([
            {"name": "API_KEY", "secret": true, "required": true},
            {"name": "OPTIONAL_KEY", "secret": true}
        ]));
        let e = overlay(&m, tmp.path(), None).unwrap_err();
        assert_eq!(e.category, cjm_core::ErrorCategory::Config);
        assert!(
            e.message.contains("nltk") && e.message.contains("API_KEY"),
            "{}",
            e.message
        );
        SecretStore::for_data_dir(tmp.path())
            .set("nltk", "API_KEY", "k")
            .unwrap();
        let o = overlay(&m, tmp.path(), None).unwrap();
        assert_eq!(last(&o, "API_KEY"), Some("k"));
        assert_eq!(last(&o, "OPTIONAL_KEY"), None);
    }

    #[test]
    fn unknown_placeholders_are_refused() {
        let vars = BTreeMap::from([("A", Some("1".to_owned())), ("B", None)]);
        assert_eq!(expand_template("x${A}y", &vars).unwrap(), "x1y");
        assert_eq!(expand_template("plain", &vars).unwrap(), "plain");
        assert!(expand_template("${C}", &vars)
            .unwrap_err()
            .contains("unknown"));
        assert!(expand_template("${B}", &vars)
            .unwrap_err()
            .contains("no value"));
        assert!(expand_template("${A", &vars).is_err());
    }
}
