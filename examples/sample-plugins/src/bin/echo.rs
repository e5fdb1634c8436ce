//! `echo` returns its kwargs; `sleep` (`{"args":["sleep"],"kwargs":{"seconds":2}}`) naps.
use cjm_worker_sdk::{async_trait, tokio, CallContext, Command, NoConfig, PluginError, Worker};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Echo(Value),
    Sleep { seconds: f64 },
}

struct Echo;

#[async_trait]
impl Worker for Echo {
    type Config = NoConfig;
    type Input = Command<Op>;
    type Output = Value;
    const MAX_CONCURRENCY: u32 = 8;

    async fn execute(&self, op: Command<Op>, ctx: CallContext) -> Result<Value, PluginError> {
        let seconds = match op.0 {
            Op::Echo(v) => return Ok(v),
            Op::Sleep { seconds } => seconds.clamp(0.0, 86_400.0),
        };
        for step in 0..10 {
            ctx.report_progress(f64::from(step) / 10.0, "sleeping");
            let nap = tokio::time::sleep(Duration::from_secs_f64(seconds / 10.0));
            if ctx.cancellation().run_until_cancelled(nap).await.is_none() {
                return Err(PluginError::cancelled("sleep cancelled"));
            }
        }
        ctx.report_progress(1.0, "done");
        Ok(json!({ "slept": seconds }))
    }
}

cjm_worker_sdk::main!(Echo, name = "echo");
