//! A worker for the SDK's process-level tests (`tests/tests/sdk_*.rs`).
//!
//! Operations (`{"args": [op], "kwargs": {...}}`): `echo`, `wait_cancel` (progress 0.5, then
//! waits until cancelled), `sleep_ms {ms}` (progress "sleeping", then returns), `spawn_child`
//! (starts `sleep 1000`, returns its pid). Cleanup appends `cleanup` to the file named by
//! `SDK_TEST_MARKER`; `SDK_TEST_GRACE_MS` sets the shutdown grace period.

use std::io::Write;
use std::time::Duration;

use cjm_worker_sdk::{async_trait, tokio, CallContext, Command, NoConfig, PluginError, Worker};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Op {
    Echo(Value),
    WaitCancel,
    SleepMs { ms: u64 },
    SpawnChild,
}

struct SdkTestWorker;

#[async_trait]
impl Worker for SdkTestWorker {
    type Config = NoConfig;
    type Input = Command<Op>;
    type Output = Value;
    const MAX_CONCURRENCY: u32 = 4;

    async fn execute(&self, op: Command<Op>, ctx: CallContext) -> Result<Value, PluginError> {
        match op.0 {
            Op::Echo(v) => Ok(v),
            Op::WaitCancel => {
                ctx.report_progress(0.5, "halfway");
                ctx.cancellation().cancelled().await;
                Err(PluginError::cancelled("stopped as asked"))
            }
            Op::SleepMs { ms } => {
                ctx.report_progress(0.1, "sleeping");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept_ms": ms}))
            }
            Op::SpawnChild => {
                let child = std::process::Command::new("sleep")
                    .arg("1000")
                    .spawn()
                    .map_err(|e| PluginError::fatal(e.to_string()))?;
                Ok(json!(child.id()))
            }
        }
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        if let Ok(path) = std::env::var("SDK_TEST_MARKER") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| PluginError::fatal(e.to_string()))?;
            writeln!(f, "cleanup").map_err(|e| PluginError::fatal(e.to_string()))?;
        }
        Ok(())
    }
}

fn grace() -> Duration {
    let ms = std::env::var("SDK_TEST_GRACE_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    Duration::from_millis(ms)
}

cjm_worker_sdk::main!(
    SdkTestWorker,
    name = "sdk-test-worker",
    shutdown_grace = grace()
);
