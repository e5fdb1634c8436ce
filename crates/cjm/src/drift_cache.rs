//! What the CLI last learned about a plugin's drift, so `cjm list` (which starts nothing) can
//! show it.
//!
//! Drift is only known once the worker answered `/config_schema` and `/structural_surface`,
//! that is after a load. Every command that starts a plugin records the result in
//! `<data dir>/drift/<plugin>.json` together with the manifest file and its `drift_tracking`
//! witnesses at that time; `cjm list` shows the record only while the manifest still carries
//! the same witnesses (a reinstall rewrites them, and the old finding no longer applies).

use std::path::{Path, PathBuf};

use cjm_core::wire::drift::{Drift, DriftTracking};
use cjm_core::Manifest;
use serde::{Deserialize, Serialize};

/// One plugin's recorded finding.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The manifest file the plugin was loaded from.
    manifest: Option<PathBuf>,
    /// The manifest's witnesses when the worker was compared with them.
    witnesses: DriftTracking,
    /// What differed.
    drift: Drift,
    /// When, in seconds since the Unix epoch.
    checked_at: u64,
}

fn file(data_dir: &Path, plugin: &str) -> PathBuf {
    let safe: String = plugin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    data_dir.join("drift").join(format!("{safe}.json"))
}

/// Records `drift` (what the manager compared at load) for `m`. Best effort: a failure is
/// logged and the command goes on.
pub(crate) fn record(data_dir: &Path, m: &Manifest, drift: Drift) {
    let Some(witnesses) = m.drift_tracking() else {
        return;
    };
    let checked_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let rec = Record {
        manifest: m.path.clone(),
        witnesses,
        drift,
        checked_at,
    };
    let path = file(data_dir, &m.name);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            serde_json::to_vec_pretty(&rec)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&path, b))
        });
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), "cannot record the plugin's drift: {e}");
    }
}

/// The recorded drift of `m`, if a load compared the worker with the witnesses `m` carries now.
pub(crate) fn known(data_dir: &Path, m: &Manifest) -> Option<Drift> {
    let witnesses = m.drift_tracking()?;
    let text = std::fs::read(file(data_dir, &m.name)).ok()?;
    let rec: Record = serde_json::from_slice(&text).ok()?;
    (rec.witnesses == witnesses && rec.manifest == m.path).then_some(rec.drift)
}

/// The `DRIFT` column of `cjm list`: `-` when the manifest has no witnesses, `?` when not
/// known yet, `none`, or what drifted.
pub(crate) fn column(tracked: bool, drift: Option<Drift>) -> String {
    match drift {
        None if !tracked => "-".to_owned(),
        None => "?".to_owned(),
        Some(d) if !d.any() => "none".to_owned(),
        Some(d) => {
            let mut parts = Vec::new();
            if d.config_schema {
                parts.push("schema");
            }
            if d.structural_surface {
                parts.push("surface");
            }
            parts.join("+")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, hash: &str) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "name": "a/b", "version": "1", "command": "x"
        }))
        .unwrap();
        m.extra.insert(
            "drift_tracking".into(),
            serde_json::json!({"config_schema_hash": hash}),
        );
        m.path = Some(dir.join("a.json"));
        m
    }

    #[test]
    fn a_record_holds_only_while_the_witnesses_are_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(dir.path(), "sha256:1");
        assert_eq!(known(dir.path(), &m), None);
        let d = Drift {
            config_schema: true,
            structural_surface: false,
        };
        record(dir.path(), &m, d);
        assert_eq!(known(dir.path(), &m), Some(d));
        assert_eq!(column(true, known(dir.path(), &m)), "schema");
        // Reinstalled: new witnesses, the old finding is not shown.
        assert_eq!(known(dir.path(), &manifest(dir.path(), "sha256:2")), None);
        assert!(dir.path().join("drift/a_b.json").is_file());
    }

    #[test]
    fn the_column_names_what_drifted() {
        assert_eq!(column(false, None), "-");
        assert_eq!(column(true, None), "?");
        assert_eq!(column(true, Some(Drift::default())), "none");
        let both = Drift {
            config_schema: true,
            structural_surface: true,
        };
        assert_eq!(column(true, Some(both)), "schema+surface");
    }
}
