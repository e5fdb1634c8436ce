//! Filters over plugin metadata and [`PluginStats`]. Every filter keeps the input order.

use std::collections::BTreeMap;

use cjm_core::{PluginExecutionMode, PluginMetadata};
use serde::{Deserialize, Serialize};

/// The plugins that run in `mode`.
pub fn filter_by_execution_mode<'a>(
    plugins: impl IntoIterator<Item = &'a PluginMetadata>,
    mode: PluginExecutionMode,
) -> Vec<&'a PluginMetadata> {
    plugins
        .into_iter()
        .filter(|p| p.execution_mode == mode)
        .collect()
}

/// The plugins that run elsewhere ([`PluginMetadata::is_cloud_execution`]: a non-local mode or
/// a remote resource attached).
pub fn cloud_plugins<'a>(
    plugins: impl IntoIterator<Item = &'a PluginMetadata>,
) -> Vec<&'a PluginMetadata> {
    plugins
        .into_iter()
        .filter(|p| p.is_cloud_execution())
        .collect()
}

/// The plugins that run on this machine ([`PluginMetadata::is_local_execution`]).
pub fn local_plugins<'a>(
    plugins: impl IntoIterator<Item = &'a PluginMetadata>,
) -> Vec<&'a PluginMetadata> {
    plugins
        .into_iter()
        .filter(|p| p.is_local_execution())
        .collect()
}

/// The plugins with a saved configuration.
pub fn configured_plugins<'a>(
    plugins: impl IntoIterator<Item = &'a PluginMetadata>,
) -> Vec<&'a PluginMetadata> {
    plugins.into_iter().filter(|p| p.is_configured).collect()
}

/// The plugins without a saved configuration.
pub fn unconfigured_plugins<'a>(
    plugins: impl IntoIterator<Item = &'a PluginMetadata>,
) -> Vec<&'a PluginMetadata> {
    plugins.into_iter().filter(|p| !p.is_configured).collect()
}

/// Counts over a set of plugins. Serialises with the keys in exactly this order: `total`,
/// `configured`, `unconfigured`, `local`, `cloud`, `with_active_resources`, `by_category`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStats {
    /// Every plugin.
    pub total: usize,
    /// Plugins with a saved configuration.
    pub configured: usize,
    /// Plugins without one.
    pub unconfigured: usize,
    /// Plugins that run on this machine.
    pub local: usize,
    /// Plugins that run elsewhere.
    pub cloud: usize,
    /// Plugins holding processes, a container or a running remote resource
    /// ([`PluginMetadata::has_active_resources`]).
    pub with_active_resources: usize,
    /// Plugins per category, sorted by category (the original always left this `{}`).
    pub by_category: BTreeMap<String, usize>,
}

/// Counts `plugins`; see [`PluginStats`].
pub fn plugin_stats<'a>(plugins: impl IntoIterator<Item = &'a PluginMetadata>) -> PluginStats {
    let mut s = PluginStats::default();
    for p in plugins {
        s.total += 1;
        if p.is_configured {
            s.configured += 1;
        } else {
            s.unconfigured += 1;
        }
        if p.is_local_execution() {
            s.local += 1;
        } else {
            s.cloud += 1;
        }
        if p.has_active_resources() {
            s.with_active_resources += 1;
        }
        *s.by_category.entry(p.category.clone()).or_default() += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cjm_core::{CloudProviderType, RemoteResourceInfo};
    use serde_json::json;

    fn plugin(
        cat: &str,
        name: &str,
        mode: PluginExecutionMode,
        configured: bool,
    ) -> PluginMetadata {
        let mut m = PluginMetadata::new(name, cat, name, json!({}));
        m.execution_mode = mode;
        m.is_configured = configured;
        m
    }

    fn mixed() -> Vec<PluginMetadata> {
        use PluginExecutionMode::*;
        let mut v = vec![
            plugin("transcription", "whisper", CondaEnv, true),
            plugin("transcription", "voxtral", Subprocess, false),
            plugin("llm", "gpt", CloudServerless, true),
            plugin("llm", "llama", Subprocess, false),
            plugin("image", "sd", CloudGpu, false),
            plugin("transcription", "remote-whisper", Subprocess, false),
        ];
        v[0].spawned_pids = vec![100, 101]; // loaded
        let mut running = RemoteResourceInfo::new(CloudProviderType::Runpod);
        running.status = "running".into();
        v[4].remote_resource = Some(running); // a running cloud GPU
                                              // A local mode with a remote resource attached counts as cloud, not active.
        v[5].remote_resource = Some(RemoteResourceInfo::new(CloudProviderType::Aws));
        v
    }

    #[test]
    fn filters_keep_order() {
        let all = mixed();
        let names = |v: Vec<&PluginMetadata>| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(filter_by_execution_mode(
                &all,
                PluginExecutionMode::Subprocess
            )),
            ["voxtral", "llama", "remote-whisper"]
        );
        assert_eq!(names(local_plugins(&all)), ["whisper", "voxtral", "llama"]);
        assert_eq!(names(cloud_plugins(&all)), ["gpt", "sd", "remote-whisper"]);
        assert_eq!(names(configured_plugins(&all)), ["whisper", "gpt"]);
        assert_eq!(
            names(unconfigured_plugins(&all)),
            ["voxtral", "llama", "sd", "remote-whisper"]
        );
        assert!(filter_by_execution_mode(&all, PluginExecutionMode::Docker).is_empty());
    }

    #[test]
    fn stats_over_a_mixed_set_in_the_documented_key_order() {
        let stats = plugin_stats(&mixed());
        assert_eq!(
            stats,
            PluginStats {
                total: 6,
                configured: 2,
                unconfigured: 4,
                local: 3,
                cloud: 3,
                with_active_resources: 2,
                by_category: [("image", 1), ("llm", 2), ("transcription", 3)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            }
        );
        let text = serde_json::to_string(&stats).unwrap();
        assert_eq!(
            text,
            "{\"total\":6,\"configured\":2,\"unconfigured\":4,\"local\":3,\"cloud\":3,\
             \"with_active_resources\":2,\"by_category\":{\"image\":1,\"llm\":2,\"transcription\":3}}"
        );
        let empty = plugin_stats(&[]);
        assert_eq!(empty, PluginStats::default());
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            json!({"total": 0, "configured": 0, "unconfigured": 0, "local": 0, "cloud": 0,
                   "with_active_resources": 0, "by_category": {}})
        );
    }
}
