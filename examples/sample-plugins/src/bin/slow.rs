//! A slow plugin: `work {seconds, steps}` sleeps `seconds` in `steps` equal steps, reporting
//! progress after each (`/progress`) and stopping as soon as the call is cancelled (`/cancel`,
//! the client disconnecting, the deadline, shutdown). Its stream (`/execute_stream`) sends one
//! chunk per step, then a summary chunk. With `fail_at: N` the work fails at step `N`: as an
//! error answer for `/execute`, as a terminal error line in the middle of a stream.
use std::time::Duration;

use cjm_worker_sdk::futures::{stream, StreamExt};
use cjm_worker_sdk::{
    async_trait, chunks, tokio, CallContext, ChunkStream, Command, NoConfig, PluginError, Worker,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// Works for `seconds` in `steps`, reporting progress; streamed, one chunk per step.
    Work(Work),
}

#[derive(Deserialize, Clone, Copy, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct Work {
    /// The whole duration (0 to 86400).
    seconds: f64,
    /// How many steps (1 to 10000).
    steps: u32,
    /// Fail at this step (0-based).
    fail_at: Option<u32>,
}

impl Default for Work {
    fn default() -> Self {
        Self {
            seconds: 1.0,
            steps: 10,
            fail_at: None,
        }
    }
}

impl Work {
    fn checked(self) -> Result<Self, PluginError> {
        if !(0.0..=86_400.0).contains(&self.seconds) {
            return Err(PluginError::user_input("`seconds` must be from 0 to 86400"));
        }
        if !(1..=10_000).contains(&self.steps) {
            return Err(PluginError::user_input("`steps` must be from 1 to 10000"));
        }
        Ok(self)
    }

    /// Step `i`: fails on request, sleeps (until cancelled), reports progress.
    async fn step(self, i: u32, ctx: &CallContext) -> Result<Value, PluginError> {
        if self.fail_at == Some(i) {
            return Err(PluginError::fatal(format!("simulated failure at step {i}")));
        }
        let nap = tokio::time::sleep(Duration::from_secs_f64(
            self.seconds / f64::from(self.steps),
        ));
        ctx.cancellation()
            .run_until_cancelled(nap)
            .await
            .ok_or_else(|| PluginError::cancelled(format!("work cancelled at step {i}")))?;
        let done = i + 1;
        ctx.report_progress(
            f64::from(done) / f64::from(self.steps),
            format!("step {done} of {}", self.steps),
        );
        Ok(json!({ "step": done, "of": self.steps }))
    }
}

struct Slow;

#[async_trait]
impl Worker for Slow {
    type Config = NoConfig;
    type Input = Command<Op>;
    type Output = Value;
    const MAX_CONCURRENCY: u32 = 4;
    const STREAMING: &'static [&'static str] = &["work"];

    async fn execute(&self, op: Command<Op>, ctx: CallContext) -> Result<Value, PluginError> {
        let Op::Work(work) = op.0;
        let work = work.checked()?;
        ctx.report_progress(0.0, format!("step 0 of {}", work.steps));
        for i in 0..work.steps {
            work.step(i, &ctx).await?;
        }
        Ok(json!({ "seconds": work.seconds, "steps": work.steps }))
    }

    async fn execute_stream(
        &self,
        op: Command<Op>,
        ctx: CallContext,
    ) -> Result<ChunkStream, PluginError> {
        let Op::Work(work) = op.0;
        let work = work.checked()?;
        ctx.report_progress(0.0, format!("step 0 of {}", work.steps));
        let steps = stream::iter(0..work.steps).then(move |i| {
            let ctx = ctx.clone();
            async move { work.step(i, &ctx).await }
        });
        let summary = stream::once(async move {
            Ok(json!({ "done": true, "seconds": work.seconds, "steps": work.steps }))
        });
        // A failed step ends the stream: the SDK writes the error line and stops.
        Ok(chunks(steps.chain(summary)))
    }
}

cjm_worker_sdk::main!(
    Slow,
    name = "slow",
    description = "Works in steps with progress; honours cancel; streams one chunk per step.",
);
