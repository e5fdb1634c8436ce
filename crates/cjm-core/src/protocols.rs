//! Optional capabilities of a plugin: [`LifecycleAware`] (processes and resources it manages)
//! and [`CloudAware`] (remote resources it provisions), with the original's helpers.
//!
//! A [`Plugin`](crate::Plugin) exposes them through [`Plugin::lifecycle`](crate::Plugin::lifecycle)
//! and [`Plugin::cloud`](crate::Plugin::cloud), replacing the original's runtime duck typing.

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::error::PluginError;
use crate::execution_mode::PluginExecutionMode;
use crate::metadata::RemoteResourceInfo;

/// A plugin that manages processes or other local resources.
#[async_trait]
pub trait LifecycleAware: Send + Sync {
    /// Where the plugin runs.
    fn execution_mode(&self) -> PluginExecutionMode;

    /// Process ids the plugin is responsible for (its worker and the worker's descendants).
    fn child_pids(&self) -> Vec<u32>;

    /// A description of other managed resources (containers, files, ports).
    fn managed_resources(&self) -> Map<String, Value> {
        Map::new()
    }

    /// Releases everything at once, without a graceful cleanup.
    async fn force_cleanup(&self) -> Result<(), PluginError>;
}

/// A plugin that runs on a remote or cloud resource.
#[async_trait]
pub trait CloudAware: Send + Sync {
    /// The resource as last known, if any.
    fn remote_resource_info(&self) -> Option<RemoteResourceInfo>;

    /// Provisions the resource with provider-specific settings.
    async fn provision_remote_resource(
        &self,
        config: Map<String, Value>,
    ) -> Result<RemoteResourceInfo, PluginError>;

    /// Asks the provider for the resource's status (e.g. `"running"`).
    async fn check_remote_resource_status(&self) -> Result<String, PluginError>;

    /// Terminates the resource; `true` when it is gone.
    async fn terminate_remote_resource(&self) -> Result<bool, PluginError>;

    /// Estimated cost in USD of running for `duration_hours`.
    fn estimate_cost(&self, duration_hours: f64) -> f64;
}

/// Every pid managed by `plugins`, sorted and without duplicates (the original returned them raw).
pub fn all_managed_pids<'a>(plugins: impl IntoIterator<Item = &'a dyn LifecycleAware>) -> Vec<u32> {
    let mut pids: Vec<u32> = plugins.into_iter().flat_map(|p| p.child_pids()).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// True when the plugin's remote resource is known and its status is exactly `"running"`.
pub fn has_active_cloud_resources(plugin: &dyn CloudAware) -> bool {
    plugin
        .remote_resource_info()
        .is_some_and(|r| r.is_running())
}

/// The summed estimated cost of the running cloud plugins over `duration_hours`; plugins without
/// a running resource cost nothing here. `0.0` for none.
pub fn total_estimated_cost<'a>(
    plugins: impl IntoIterator<Item = &'a dyn CloudAware>,
    duration_hours: f64,
) -> f64 {
    plugins
        .into_iter()
        .filter(|p| has_active_cloud_resources(*p))
        .map(|p| p.estimate_cost(duration_hours))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution_mode::CloudProviderType;

    struct Procs(Vec<u32>);

    #[async_trait]
    impl LifecycleAware for Procs {
        fn execution_mode(&self) -> PluginExecutionMode {
            PluginExecutionMode::Subprocess
        }
        fn child_pids(&self) -> Vec<u32> {
            self.0.clone()
        }
        async fn force_cleanup(&self) -> Result<(), PluginError> {
            Ok(())
        }
    }

    struct Cloud {
        status: &'static str,
        per_hour: f64,
    }

    #[async_trait]
    impl CloudAware for Cloud {
        fn remote_resource_info(&self) -> Option<RemoteResourceInfo> {
            let mut r = RemoteResourceInfo::new(CloudProviderType::Runpod);
            r.status = self.status.to_owned();
            Some(r)
        }
        async fn provision_remote_resource(
            &self,
            _config: Map<String, Value>,
        ) -> Result<RemoteResourceInfo, PluginError> {
            Err(PluginError::fatal("not in tests"))
        }
        async fn check_remote_resource_status(&self) -> Result<String, PluginError> {
            Ok(self.status.to_owned())
        }
        async fn terminate_remote_resource(&self) -> Result<bool, PluginError> {
            Ok(true)
        }
        fn estimate_cost(&self, hours: f64) -> f64 {
            self.per_hour * hours
        }
    }

    #[test]
    fn managed_pids_are_deduplicated_and_sorted() {
        let a = Procs(vec![30, 10, 20]);
        let b = Procs(vec![20, 40, 10]);
        let c = Procs(vec![]);
        let all = all_managed_pids([&a as &dyn LifecycleAware, &b, &c]);
        assert_eq!(all, vec![10, 20, 30, 40]);
        assert!(all_managed_pids(std::iter::empty()).is_empty());
    }

    #[test]
    fn cost_counts_running_resources_only() {
        let running = Cloud {
            status: "running",
            per_hour: 2.5,
        };
        let stopped = Cloud {
            status: "stopped",
            per_hour: 100.0,
        };
        let also = Cloud {
            status: "running",
            per_hour: 1.0,
        };
        assert!(has_active_cloud_resources(&running));
        assert!(!has_active_cloud_resources(&stopped));
        let total = total_estimated_cost([&running as &dyn CloudAware, &stopped, &also], 2.0);
        assert_eq!(total, 7.0);
        assert_eq!(total_estimated_cost(std::iter::empty(), 1.0), 0.0);
    }
}
