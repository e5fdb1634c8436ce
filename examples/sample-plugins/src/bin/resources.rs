//! A plugin that declares resources in its manifest (`manifests/resources.json`: a GPU with
//! 512 MB of VRAM at least, 2 GB recommended, 256 MB of system RAM), as a model-serving plugin
//! would. The host's scheduler checks them before loading and places the worker on a GPU by
//! setting `CUDA_VISIBLE_DEVICES`; `info` shows what the worker got:
//! `{"cuda_visible_devices": "0" | null, "pid": 4242}`.
use cjm_worker_sdk::{async_trait, CallContext, Command, NoConfig, PluginError, Worker};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// Returns the GPU the worker was placed on (`CUDA_VISIBLE_DEVICES`) and its pid.
    Info,
}

struct Resources;

#[async_trait]
impl Worker for Resources {
    type Config = NoConfig;
    type Input = Command<Op>;
    type Output = Value;

    async fn execute(&self, op: Command<Op>, _ctx: CallContext) -> Result<Value, PluginError> {
        let Op::Info = op.0;
        Ok(json!({
            "cuda_visible_devices": std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            "pid": std::process::id(),
        }))
    }
}

fn declared() -> cjm_worker_sdk::core::Resources {
    cjm_worker_sdk::core::Resources {
        requires_gpu: true,
        min_gpu_vram_mb: Some(512),
        recommended_gpu_vram_mb: Some(2048),
        min_system_ram_mb: Some(256),
        ..Default::default()
    }
}

cjm_worker_sdk::main!(
    Resources,
    name = "resources",
    description = "Declares GPU and memory needs; `info` shows CUDA_VISIBLE_DEVICES and its pid.",
    resources = declared(),
);
