//! `echo` returns its kwargs and the request's blobs; `sleep {seconds}` naps (progress, cancel).
use cjm_worker_sdk::tokio::time::{sleep, Duration};
use cjm_worker_sdk::{async_trait, CallContext, Command, NoConfig, PluginError, WithBlobs, Worker};
use serde_json::{json, Value};

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// Returns its keyword arguments and the request's blobs.
    Echo(Value),
    /// Sleeps, reporting progress in ten steps; cancellable.
    Sleep {
        /// How long, in seconds (0 to 86400).
        seconds: f64,
    },
}

struct Echo;

#[async_trait]
impl Worker for Echo {
    type Config = NoConfig;
    type Input = WithBlobs<Command<Op>>;
    type Output = WithBlobs<Value>;
    const MAX_CONCURRENCY: u32 = 8;

    async fn execute(&self, i: Self::Input, ctx: CallContext) -> Result<Self::Output, PluginError> {
        let (seconds, blobs) = match (i.value.0, i.blobs) {
            (Op::Echo(value), blobs) => return Ok(WithBlobs { value, blobs }),
            (Op::Sleep { seconds }, _) => (seconds.clamp(0.0, 86_400.0), Vec::new()),
        };
        for step in 0..10 {
            ctx.report_progress(f64::from(step) / 10.0, "sleeping");
            let nap = sleep(Duration::from_secs_f64(seconds / 10.0));
            let done = ctx.cancellation().run_until_cancelled(nap).await;
            done.ok_or_else(|| PluginError::cancelled("sleep cancelled"))?;
        }
        ctx.report_progress(1.0, "done");
        let value = json!({ "slept": seconds });
        Ok(WithBlobs { value, blobs })
    }
}

cjm_worker_sdk::main!(
    Echo,
    name = "echo",
    description = "Returns its keyword arguments and binary payloads; `sleep` naps with progress.",
);
