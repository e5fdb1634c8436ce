//! A plugin that fails on demand, to see what the host does about it:
//!
//! - `exit {code}` ends the worker process at once with that status (default 3): no answer is
//!   sent; the host reports the call as `transient` and restarts the worker (restart policy).
//! - `panic {message}` panics in plugin code: the SDK answers `500` (`fatal`, "plugin panicked:
//!   …") and the worker keeps serving.
//! - `hang` blocks its plugin thread for good, **ignoring cancellation**: `/cancel`, a
//!   disconnect or a deadline end the call for the caller (the host answers `cancelled` or
//!   `timeout`) but the thread stays blocked, so each hang costs one of the worker's plugin
//!   threads until the worker is stopped (`SIGTERM` still works: the SDK does not wait for
//!   plugin threads on exit). The worker has 4 plugin threads, so up to 3 hangs leave it
//!   serving.
//! - `pid` answers the worker's pid (to tell a restarted worker from the first).
use std::time::Duration;

use cjm_worker_sdk::{async_trait, CallContext, Command, NoConfig, PluginError, Worker};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// Exits the worker process with `code` in the middle of the call.
    Exit {
        /// The exit status.
        #[serde(default = "default_code")]
        code: i32,
    },
    /// Panics in plugin code (the SDK answers 500; the worker lives on).
    Panic {
        /// The panic message.
        #[serde(default = "default_message")]
        message: String,
    },
    /// Never returns (until cancelled or killed).
    Hang,
    /// Returns the worker's process id.
    Pid,
}

fn default_code() -> i32 {
    3
}

fn default_message() -> String {
    "crashy was asked to panic".into()
}

struct Crashy;

#[async_trait]
impl Worker for Crashy {
    type Config = NoConfig;
    type Input = Command<Op>;
    type Output = Value;
    const MAX_CONCURRENCY: u32 = 8;

    async fn execute(&self, op: Command<Op>, ctx: CallContext) -> Result<Value, PluginError> {
        match op.0 {
            Op::Exit { code } => std::process::exit(code),
            Op::Panic { message } => panic!("{message}"),
            Op::Hang => {
                ctx.report_progress(-1.0, "hanging (cancel is ignored)");
                // Deliberately blocking and deaf to the cancellation token.
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Op::Pid => Ok(json!({ "pid": std::process::id() })),
        }
    }
}

cjm_worker_sdk::main!(
    Crashy,
    name = "crashy",
    description = "Exits, panics or hangs on demand.",
    plugin_threads = 4,
);
