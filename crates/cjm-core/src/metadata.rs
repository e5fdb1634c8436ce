//! What is known about a plugin: [`PluginMetadata`] and [`RemoteResourceInfo`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::execution_mode::{CloudProviderType, PluginExecutionMode};
use crate::manifest::Manifest;
use crate::unique_id::unique_id;

/// A resource a plugin runs on elsewhere (a cloud VM, a serverless endpoint, an SSH host).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteResourceInfo {
    /// The provider.
    pub provider: CloudProviderType,
    /// Region or zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Provider instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Provider job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Endpoint the plugin answers on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// SSH host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host: Option<String>,
    /// SSH port (22 by default).
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Instance or resource type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// GPU model, e.g. `A100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// Number of GPUs.
    #[serde(default)]
    pub gpu_count: u32,
    /// Estimated cost in USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost_per_hour: Option<f64>,
    /// Free-text status; only exactly `"running"` counts as active.
    #[serde(default = "default_status")]
    pub status: String,
    /// Anything else the provider reports.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

fn default_ssh_port() -> u16 {
    22
}

fn default_status() -> String {
    "unknown".to_owned()
}

impl RemoteResourceInfo {
    /// A resource on `provider` with every optional field at its default.
    pub fn new(provider: CloudProviderType) -> Self {
        Self {
            provider,
            region: None,
            instance_id: None,
            job_id: None,
            endpoint_url: None,
            ssh_host: None,
            ssh_port: default_ssh_port(),
            resource_type: None,
            gpu_type: None,
            gpu_count: 0,
            estimated_cost_per_hour: None,
            status: default_status(),
            metadata: Map::new(),
        }
    }

    /// True when the status is exactly `"running"`.
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }
}

/// Everything the registry and UI know about one plugin.
///
/// The original's `config_dataclass` (a Python type) has no equivalent: the JSON Schema in
/// [`config_schema`](Self::config_schema) is the single description of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginMetadata {
    /// The plugin's name (unique within its category).
    pub name: String,
    /// Free-form grouping such as `transcription`.
    pub category: String,
    /// Human title.
    pub title: String,
    /// JSON Schema of the configuration (`{}` when the plugin has none).
    pub config_schema: Value,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether a saved configuration exists.
    #[serde(default)]
    pub is_configured: bool,
    /// Where the plugin runs.
    #[serde(default = "default_mode")]
    pub execution_mode: PluginExecutionMode,
    /// The plugin starts child processes of its own.
    #[serde(default)]
    pub manages_child_processes: bool,
    /// The plugin holds resources outside this machine.
    #[serde(default)]
    pub manages_external_resources: bool,
    /// Live process ids (the worker and its descendants) as last reported by the host.
    #[serde(default)]
    pub spawned_pids: Vec<u32>,
    /// Container id, for Docker plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Conda environment name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conda_env_name: Option<String>,
    /// The remote resource, for remote and cloud plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_resource: Option<RemoteResourceInfo>,
}

fn default_mode() -> PluginExecutionMode {
    PluginExecutionMode::InProcess
}

impl PluginMetadata {
    /// Metadata with the required fields and every other field at its default.
    pub fn new(
        name: impl Into<String>,
        category: impl Into<String>,
        title: impl Into<String>,
        config_schema: Value,
    ) -> Self {
        Self {
            name: name.into(),
            category: category.into(),
            title: title.into(),
            config_schema,
            description: None,
            version: None,
            is_configured: false,
            execution_mode: default_mode(),
            manages_child_processes: false,
            manages_external_resources: false,
            spawned_pids: Vec::new(),
            container_id: None,
            conda_env_name: None,
            remote_resource: None,
        }
    }

    /// Metadata that tells the truth about a discovered manifest: title (manifest `title`, else
    /// the schema's `title`, else the name), description, version, schema, category, execution
    /// mode and conda environment.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        let schema = manifest
            .config_schema
            .clone()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let title = manifest
            .title
            .clone()
            .or_else(|| {
                schema
                    .get("title")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| manifest.name.clone());
        let mut meta = Self::new(&manifest.name, &manifest.category, title, schema);
        meta.description = Some(manifest.description.clone()).filter(|d| !d.is_empty());
        meta.version = Some(manifest.version.clone());
        meta.execution_mode = manifest.effective_execution_mode();
        meta.manages_child_processes = meta.execution_mode != PluginExecutionMode::InProcess;
        meta.conda_env_name = manifest.conda_env.clone();
        meta
    }

    /// The unambiguous, file-name-safe id; see [`crate::unique_id()`] for the rule.
    pub fn unique_id(&self) -> String {
        unique_id(&self.category, &self.name)
    }

    /// True when the plugin runs on this machine: a local mode and no remote resource.
    pub fn is_local_execution(&self) -> bool {
        self.execution_mode.is_local() && self.remote_resource.is_none()
    }

    /// True when the plugin runs elsewhere: a non-local mode, or a remote resource attached
    /// (the original ignored the latter).
    pub fn is_cloud_execution(&self) -> bool {
        !self.is_local_execution()
    }

    /// True when the plugin holds something that costs or occupies resources: a process, a
    /// container or a running remote resource.
    ///
    /// `spawned_pids` are trusted as given; a caller that can check liveness should use
    /// [`has_active_resources_with`](Self::has_active_resources_with).
    pub fn has_active_resources(&self) -> bool {
        self.has_active_resources_with(|_| true)
    }

    /// As [`has_active_resources`](Self::has_active_resources), counting only the pids for which
    /// `is_alive` holds (the original trusted stale pids).
    pub fn has_active_resources_with(&self, is_alive: impl Fn(u32) -> bool) -> bool {
        self.spawned_pids.iter().any(|&p| is_alive(p))
            || self.container_id.as_deref().is_some_and(|c| !c.is_empty())
            || self
                .remote_resource
                .as_ref()
                .is_some_and(RemoteResourceInfo::is_running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remote_resource_defaults_match_the_original() {
        let r: RemoteResourceInfo = serde_json::from_value(json!({"provider": "runpod"})).unwrap();
        assert_eq!(r, RemoteResourceInfo::new(CloudProviderType::Runpod));
        assert_eq!(r.ssh_port, 22);
        assert_eq!(r.gpu_count, 0);
        assert_eq!(r.status, "unknown");
        assert!(!r.is_running());
    }

    #[test]
    fn metadata_round_trips_and_defaults() {
        let m: PluginMetadata = serde_json::from_value(json!({
            "name": "whisper", "category": "transcription", "title": "Whisper",
            "config_schema": {}
        }))
        .unwrap();
        assert_eq!(m.execution_mode, PluginExecutionMode::InProcess);
        assert!(!m.is_configured);
        let back: PluginMetadata =
            serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.unique_id(), "transcription.whisper");
    }

    #[test]
    fn local_and_cloud_execution() {
        let mut m = PluginMetadata::new("p", "c", "P", json!({}));
        m.execution_mode = PluginExecutionMode::CondaEnv;
        assert!(m.is_local_execution() && !m.is_cloud_execution());
        m.execution_mode = PluginExecutionMode::CloudGpu;
        assert!(m.is_cloud_execution());
        // A local mode with a remote resource attached is not local.
        m.execution_mode = PluginExecutionMode::Subprocess;
        m.remote_resource = Some(RemoteResourceInfo::new(CloudProviderType::Aws));
        assert!(m.is_cloud_execution());
    }

    #[test]
    fn active_resources() {
        let mut m = PluginMetadata::new("p", "c", "P", json!({}));
        assert!(!m.has_active_resources());
        m.spawned_pids = vec![4242];
        assert!(m.has_active_resources());
        assert!(
            !m.has_active_resources_with(|_| false),
            "stale pids do not count"
        );
        m.spawned_pids.clear();
        m.container_id = Some(String::new());
        assert!(!m.has_active_resources());
        m.container_id = Some("abc".into());
        assert!(m.has_active_resources());
        m.container_id = None;
        let mut r = RemoteResourceInfo::new(CloudProviderType::Gcp);
        r.status = "Running".into();
        m.remote_resource = Some(r.clone());
        assert!(!m.has_active_resources(), "only exactly `running` counts");
        r.status = "running".into();
        m.remote_resource = Some(r);
        assert!(m.has_active_resources());
    }
}
