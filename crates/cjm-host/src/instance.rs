//! Instances: several workers of one plugin, each with its own configuration, addressed by an
//! instance id (`[A-Za-z0-9_-]{1,64}`) wherever a plugin name is accepted. An instance is the
//! plugin's manifest loaded under the instance id: its own worker, log, data directory
//! (`<data>/data/<id>`) and state, restarted and unloaded on its own.

use std::sync::Arc;

use cjm_core::PluginError;
use serde_json::Value;

use crate::PluginManager;

/// The longest instance id.
pub const MAX_INSTANCE_ID: usize = 64;

/// True for an instance id: 1–64 of `A-Z a-z 0-9 - _`.
pub fn is_valid_instance_id(id: &str) -> bool {
    (1..=MAX_INSTANCE_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `plugin` made into an id (`.` becomes `_`), a dash and six hex digits.
fn generate(plugin: &str) -> Result<String, PluginError> {
    let mut r = [0u8; 3];
    getrandom::fill(&mut r)
        .map_err(|e| PluginError::fatal(format!("cannot generate an instance id: {e}")))?;
    let stem: String = plugin
        .chars()
        .map(|c| if c == '.' { '_' } else { c })
        .take(MAX_INSTANCE_ID - 7)
        .collect();
    Ok(format!("{stem}-{:02x}{:02x}{:02x}", r[0], r[1], r[2]))
}

impl PluginManager {
    /// Loads another worker of the discovered `plugin` as the instance `instance` (generated
    /// when `None`), with `config`; returns the instance id. Every method that takes a plugin
    /// name takes the id: `execute`, `config`, `reload`, `unload`, …
    ///
    /// Refused (`user_input`): an id that is not `[A-Za-z0-9_-]{1,64}`, or that is the name of
    /// a discovered plugin; an id already loaded is refused as any second load is.
    pub async fn load_instance(
        &self,
        plugin: &str,
        instance: Option<&str>,
        config: Option<Value>,
    ) -> Result<String, PluginError> {
        let manifest = self.require_discovered(plugin)?;
        let id = match instance {
            Some(id) if is_valid_instance_id(id) => id.to_owned(),
            Some(id) => {
                return Err(PluginError::user_input(format!(
                    "instance id {id:?} is not 1 to {MAX_INSTANCE_ID} of A-Z a-z 0-9 - _"
                ))
                .with_plugin(plugin))
            }
            None => generate(plugin)?,
        };
        if self.discovered_manifest(&id).is_some() {
            return Err(PluginError::user_input(format!(
                "instance id `{id}` is the name of a plugin; choose another"
            ))
            .with_plugin(plugin));
        }
        let mut m = (*manifest).clone();
        m.name.clone_from(&id);
        m.instance_of = Some(plugin.to_owned());
        self.load_manifest(Arc::new(m), config).await?;
        Ok(id)
    }

    /// The plugin the loaded instance `id` runs, or `None` (not loaded, or not an instance).
    pub fn instance_of(&self, id: &str) -> Option<String> {
        self.loaded_manifest(id).and_then(|m| m.instance_of.clone())
    }

    /// The loaded instances of `plugin` (made with [`load_instance`](Self::load_instance)).
    pub fn instances(&self, plugin: &str) -> Vec<String> {
        self.loaded()
            .into_iter()
            .filter(|n| self.instance_of(n).as_deref() == Some(plugin))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_generated_valid() {
        for ok in ["a", "en-large_2", &"x".repeat(64)] {
            assert!(is_valid_instance_id(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", "é", &"x".repeat(65)] {
            assert!(!is_valid_instance_id(bad), "{bad:?}");
        }
        let g = generate("whisper.large").unwrap();
        assert!(
            g.starts_with("whisper_large-") && is_valid_instance_id(&g),
            "{g}"
        );
        assert!(is_valid_instance_id(&generate(&"p".repeat(64)).unwrap()));
    }
}
