//! Where a plugin runs ([`PluginExecutionMode`]) and which cloud runs it ([`CloudProviderType`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a plugin executes. The serialized values are exactly the original system's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginExecutionMode {
    /// Inside the host process (registered from Rust).
    InProcess,
    /// A local worker process (the default for native cjm workers).
    Subprocess,
    /// A local Docker container.
    Docker,
    /// A Python interpreter in a local conda or micromamba environment.
    CondaEnv,
    /// A service the host does not start (serialized as `external`).
    #[serde(rename = "external")]
    ExternalService,
    /// A machine reached over SSH.
    RemoteSsh,
    /// A cloud virtual machine.
    CloudVm,
    /// A cloud container service.
    CloudContainer,
    /// A cloud serverless function.
    CloudServerless,
    /// A cloud GPU instance.
    CloudGpu,
    /// A cloud CPU instance.
    CloudCpu,
    /// A Kubernetes workload.
    Kubernetes,
    /// A cjm worker that runs elsewhere and serves HTTPS with a bearer token; the host connects
    /// to it (`remote.url`) and never starts or stops it. cjm's own mode, not the original's.
    Remote,
    /// A native worker placed on a Ray cluster as a Ray job (the cluster is the host's
    /// configuration; the manifest's optional `ray` block gives resources and `runtime_env`).
    /// cjm's own mode, not the original's.
    Ray,
}

impl PluginExecutionMode {
    /// Every variant, in the original's declaration order.
    pub const ALL: [PluginExecutionMode; 14] = [
        Self::InProcess,
        Self::Subprocess,
        Self::Docker,
        Self::CondaEnv,
        Self::ExternalService,
        Self::RemoteSsh,
        Self::CloudVm,
        Self::CloudContainer,
        Self::CloudServerless,
        Self::CloudGpu,
        Self::CloudCpu,
        Self::Kubernetes,
        Self::Remote,
        Self::Ray,
    ];

    /// The serialized value (`"in_process"`, `"external"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProcess => "in_process",
            Self::Subprocess => "subprocess",
            Self::Docker => "docker",
            Self::CondaEnv => "conda_env",
            Self::ExternalService => "external",
            Self::RemoteSsh => "remote_ssh",
            Self::CloudVm => "cloud_vm",
            Self::CloudContainer => "cloud_container",
            Self::CloudServerless => "cloud_serverless",
            Self::CloudGpu => "cloud_gpu",
            Self::CloudCpu => "cloud_cpu",
            Self::Kubernetes => "kubernetes",
            Self::Remote => "remote",
            Self::Ray => "ray",
        }
    }

    /// True for the five modes that run on this machine.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            Self::InProcess
                | Self::Subprocess
                | Self::Docker
                | Self::CondaEnv
                | Self::ExternalService
        )
    }

    /// A label for people, e.g. `Local (Conda)` or `Cloud GPU`.
    ///
    /// Unlike the original, every mode has a real label (the original showed the raw value for
    /// `remote_ssh`, the three `cloud_*` container modes and `kubernetes`).
    pub fn label(self) -> &'static str {
        match self {
            Self::InProcess => "Local (In-Process)",
            Self::Subprocess => "Local (Subprocess)",
            Self::Docker => "Local (Docker)",
            Self::CondaEnv => "Local (Conda)",
            Self::ExternalService => "Local (External Service)",
            Self::RemoteSsh => "Remote (SSH)",
            Self::CloudVm => "Cloud VM",
            Self::CloudContainer => "Cloud Container",
            Self::CloudServerless => "Cloud Serverless",
            Self::CloudGpu => "Cloud GPU",
            Self::CloudCpu => "Cloud CPU",
            Self::Kubernetes => "Kubernetes",
            Self::Remote => "Remote (TLS)",
            Self::Ray => "Ray cluster",
        }
    }

    /// The DaisyUI badge class the original's UI uses for this mode.
    pub fn badge_class(self) -> &'static str {
        match self {
            m if m.is_local() => "badge-success",
            Self::CloudGpu | Self::CloudCpu => "badge-info",
            _ => "badge-neutral",
        }
    }
}

impl fmt::Display for PluginExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown execution mode or cloud provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`; expected one of: {expected}")]
pub struct UnknownVariant {
    /// What was being parsed.
    pub kind: &'static str,
    /// The value that was given.
    pub value: String,
    /// The accepted values, comma separated.
    pub expected: String,
}

impl FromStr for PluginExecutionMode {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_variant("execution mode", s, Self::ALL, Self::as_str)
    }
}

/// The variant of `all` whose serialized name is `s`.
fn parse_variant<T: Copy, const N: usize>(
    kind: &'static str,
    s: &str,
    all: [T; N],
    name: fn(T) -> &'static str,
) -> Result<T, UnknownVariant> {
    all.into_iter()
        .find(|v| name(*v) == s)
        .ok_or_else(|| UnknownVariant {
            kind,
            value: s.to_owned(),
            expected: all.map(name).join(", "),
        })
}

/// Cloud providers a remote plugin can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudProviderType {
    /// Amazon Web Services.
    Aws,
    /// Google Cloud Platform.
    Gcp,
    /// Microsoft Azure.
    Azure,
    /// Lambda Labs.
    LambdaLabs,
    /// RunPod.
    Runpod,
    /// Vast.ai.
    VastAi,
    /// Paperspace.
    Paperspace,
    /// Together AI.
    TogetherAi,
    /// Anything else.
    Custom,
}

impl CloudProviderType {
    /// Every variant, in the original's declaration order.
    pub const ALL: [CloudProviderType; 9] = [
        Self::Aws,
        Self::Gcp,
        Self::Azure,
        Self::LambdaLabs,
        Self::Runpod,
        Self::VastAi,
        Self::Paperspace,
        Self::TogetherAi,
        Self::Custom,
    ];

    /// The serialized value (`"aws"`, `"lambda_labs"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
            Self::LambdaLabs => "lambda_labs",
            Self::Runpod => "runpod",
            Self::VastAi => "vast_ai",
            Self::Paperspace => "paperspace",
            Self::TogetherAi => "together_ai",
            Self::Custom => "custom",
        }
    }
}

impl fmt::Display for CloudProviderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CloudProviderType {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_variant("cloud provider", s, Self::ALL, Self::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_modes_serialize_to_the_originals_values() {
        let expected = [
            "in_process",
            "subprocess",
            "docker",
            "conda_env",
            "external",
            "remote_ssh",
            "cloud_vm",
            "cloud_container",
            "cloud_serverless",
            "cloud_gpu",
            "cloud_cpu",
            "kubernetes",
            "remote",
        ];
        for (mode, want) in PluginExecutionMode::ALL.into_iter().zip(expected) {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{want}\""));
            let back: PluginExecutionMode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, mode);
            assert_eq!(want.parse::<PluginExecutionMode>().unwrap(), mode);
            assert_eq!(mode.to_string(), want);
        }
        assert!(serde_json::from_str::<PluginExecutionMode>("\"external_service\"").is_err());
    }

    #[test]
    fn exactly_the_first_five_modes_are_local() {
        let local: Vec<_> = PluginExecutionMode::ALL
            .into_iter()
            .filter(|m| m.is_local())
            .collect();
        assert_eq!(local, PluginExecutionMode::ALL[..5].to_vec());
    }

    #[test]
    fn labels_and_badges() {
        assert_eq!(PluginExecutionMode::CondaEnv.label(), "Local (Conda)");
        assert_eq!(PluginExecutionMode::CloudGpu.label(), "Cloud GPU");
        assert_eq!(
            PluginExecutionMode::Subprocess.badge_class(),
            "badge-success"
        );
        assert_eq!(PluginExecutionMode::CloudCpu.badge_class(), "badge-info");
        assert_eq!(
            PluginExecutionMode::Kubernetes.badge_class(),
            "badge-neutral"
        );
        let labels: std::collections::HashSet<_> =
            PluginExecutionMode::ALL.iter().map(|m| m.label()).collect();
        assert_eq!(
            labels.len(),
            PluginExecutionMode::ALL.len(),
            "labels are distinct"
        );
    }

    #[test]
    fn cloud_providers_serialize_to_the_originals_values() {
        let expected = [
            "aws",
            "gcp",
            "azure",
            "lambda_labs",
            "runpod",
            "vast_ai",
            "paperspace",
            "together_ai",
            "custom",
        ];
        for (p, want) in CloudProviderType::ALL.into_iter().zip(expected) {
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(want));
            assert_eq!(want.parse::<CloudProviderType>().unwrap(), p);
        }
        let err = "ibm".parse::<CloudProviderType>().unwrap_err();
        assert!(err.to_string().contains("unknown cloud provider `ibm`"));
    }
}
