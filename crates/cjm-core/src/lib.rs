//! # cjm-core
//!
//! The types both sides of cjm share: plugin metadata and execution modes, the [`Plugin`]
//! trait (implemented by plugin authors and by the host's proxy alike), the lifecycle and cloud
//! capability traits, manifests and their validation, protocol v1 wire messages and the error
//! taxonomy, and [`repoll`], a runtime-neutral polling aid both sides' connections use. No async
//! runtime and no network I/O live here.
//!
//! See `ARCHITECTURE.md` for where this crate sits and `PROTOCOL.md` for the wire contract
//! that [`wire`] encodes.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Library code never unwraps, panics or prints; tests may.
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::print_stdout
    )
)]

pub mod describe;
pub mod error;
pub mod execution_mode;
pub mod generation;
pub mod manifest;
pub mod manifest_v2;
pub mod metadata;
pub mod plugin;
pub mod protocols;
pub mod repoll;
pub mod schema;
pub mod unique_id;
pub mod wire;

pub use describe::{InputKind, OperationDescription, WorkerDescription};
pub use error::{ErrorCategory, ErrorDetails, FieldError, PluginError, ResourceShortfall};
pub use execution_mode::{CloudProviderType, PluginExecutionMode, UnknownVariant};
pub use generation::WorkerGeneration;
pub use manifest::{
    is_valid_plugin_name, Manifest, ManifestError, ManifestProblem, RayPlacement, RemoteWorker,
    Resources, RestartPolicy, WorkerSpec,
};
pub use manifest_v2::{
    AdapterManifest, AdapterMatch, DriftTracking, EnvVarSpec, ManifestFile, Taxonomy,
};
pub use metadata::{PluginMetadata, RemoteResourceInfo};
pub use plugin::{
    Call, CallContext, CancelOutcome, CancellationToken, ChunkStream, Output, Plugin, Progress,
    ProgressCell, RawOutput,
};
pub use protocols::{
    all_managed_pids, has_active_cloud_resources, total_estimated_cost, CloudAware, LifecycleAware,
};
pub use schema::{schema_defaults, ConfigValidator};
pub use unique_id::{parse_unique_id, unique_id};
