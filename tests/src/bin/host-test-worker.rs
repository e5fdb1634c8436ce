//! A worker for the host's integration tests. The first positional argument picks the
//! operation; see `execute`.

use std::sync::Mutex;
use std::time::Duration;

use cjm_worker_sdk::{async_trait, chunks, Call, CallContext, PluginError, WithBlobs, Worker};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Test configuration.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Prefix of `greet`.
    #[schemars(length(min = 1, max = 20))]
    greeting: String,
    /// A bounded number.
    #[schemars(range(min = 1, max = 10))]
    level: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            greeting: "hello".into(),
            level: 1,
        }
    }
}

#[derive(Default)]
struct TestWorker(Mutex<Option<Config>>);

fn kw(call: &Call, key: &str) -> Value {
    call.kwargs.get(key).cloned().unwrap_or(Value::Null)
}

#[async_trait]
impl Worker for TestWorker {
    type Config = Config;
    type Input = Call;
    type Output = WithBlobs<Value>;
    const MAX_CONCURRENCY: u32 = 16;

    async fn initialize(&self, config: Config) -> Result<(), PluginError> {
        // Tests make every later start fail by creating this file.
        if let Ok(p) = std::env::var("CJM_TEST_FAIL_FILE") {
            if std::path::Path::new(&p).exists() {
                std::process::exit(1);
            }
        }
        if config.greeting == "reject" {
            return Err(PluginError::config(
                "the plugin refuses this greeting",
                vec![],
            ));
        }
        if let Ok(mut g) = self.0.lock() {
            *g = Some(config);
        }
        Ok(())
    }

    async fn execute(&self, call: Call, ctx: CallContext) -> Result<WithBlobs<Value>, PluginError> {
        let op = call
            .args
            .first()
            .and_then(Value::as_str)
            .unwrap_or("echo")
            .to_owned();
        let plain = |v: Value| WithBlobs {
            value: v,
            blobs: vec![],
        };
        match op.as_str() {
            "echo" => Ok(plain(
                json!({"args": call.args[1..], "kwargs": call.kwargs}),
            )),
            "greet" => {
                let g = self
                    .0
                    .lock()
                    .ok()
                    .and_then(|c| c.as_ref().map(|c| c.greeting.clone()));
                Ok(plain(json!(format!(
                    "{} {}",
                    g.unwrap_or_default(),
                    kw(&call, "name").as_str().unwrap_or("?")
                ))))
            }
            "pid" => Ok(plain(json!(std::process::id()))),
            "env" => Ok(plain(json!(std::env::var(
                kw(&call, "name").as_str().unwrap_or_default()
            )
            .ok()))),
            "sleep" => {
                let ms = kw(&call, "ms").as_u64().unwrap_or(60_000);
                ctx.report_progress(0.25, "sleeping");
                ctx.cancellation()
                    .run_until_cancelled(tokio::time::sleep(Duration::from_millis(ms)))
                    .await
                    .ok_or_else(|| PluginError::cancelled("sleep cancelled"))?;
                Ok(plain(json!({"slept_ms": ms})))
            }
            "fail" => Err(PluginError::user_input("you asked for a failure")),
            // Logs `word` `n` times through tracing, `ms` apart.
            "log" => {
                let word = kw(&call, "word").as_str().unwrap_or("word").to_owned();
                for i in 0..kw(&call, "n").as_u64().unwrap_or(3) {
                    tracing::info!("said {word} {i}");
                    tokio::time::sleep(Duration::from_millis(
                        kw(&call, "ms").as_u64().unwrap_or(10),
                    ))
                    .await;
                }
                Ok(plain(json!(word)))
            }
            // Ignores cancellation: sleeps its `ms` whatever the host asks.
            "stubborn" => {
                let ms = kw(&call, "ms").as_u64().unwrap_or(60_000);
                ctx.report_progress(0.5, "ignoring cancels");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(plain(json!({"slept_ms": ms})))
            }
            // Fails with a retriable (transient) error for the first `failures` calls that name
            // the same `file` (a counter kept in it), then answers the attempt number.
            "flaky" => {
                let file = kw(&call, "file").as_str().unwrap_or_default().to_owned();
                let failures = kw(&call, "failures").as_u64().unwrap_or(1);
                let n = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                std::fs::write(&file, n.to_string())
                    .map_err(|e| PluginError::fatal(e.to_string()))?;
                if n <= failures {
                    Err(PluginError::transient(format!("flaky failure {n}")))
                } else {
                    Ok(plain(json!({"attempt": n})))
                }
            }
            // Allocates and touches `mb` MiB: under a memory limit the kernel's OOM killer
            // ends the worker. With `file`, only the first call naming it hogs (it creates the
            // file first); later ones answer `{"hogged": false}`.
            "hog" => {
                if let Some(file) = kw(&call, "file").as_str() {
                    if std::path::Path::new(file).exists() {
                        return Ok(plain(json!({"hogged": false})));
                    }
                    std::fs::write(file, b"").map_err(|e| PluginError::fatal(e.to_string()))?;
                }
                let mb = kw(&call, "mb").as_u64().unwrap_or(512) as usize;
                let mut held: Vec<Vec<u8>> = Vec::with_capacity(mb);
                for _ in 0..mb {
                    let mut chunk = vec![0u8; 1 << 20];
                    for i in (0..chunk.len()).step_by(4096) {
                        chunk[i] = 1;
                    }
                    held.push(std::hint::black_box(chunk));
                }
                Ok(plain(json!({"hogged": true, "mb": held.len()})))
            }
            "exit" => std::process::exit(kw(&call, "code").as_i64().unwrap_or(3) as i32),
            "spawn_child" => {
                let child = std::process::Command::new("sleep")
                    .arg("1000")
                    .spawn()
                    .map_err(|e| PluginError::fatal(e.to_string()))?;
                let pid = child.id();
                std::mem::forget(child);
                Ok(plain(json!(pid)))
            }
            "spawn_family" => {
                // A plain child, and a grandchild in its own session whose parent (the shell)
                // exits at once: the double-forked daemon that escapes process groups.
                let child = std::process::Command::new("sleep")
                    .arg("1000")
                    .spawn()
                    .map_err(|e| PluginError::fatal(e.to_string()))?;
                let pid = child.id();
                std::mem::forget(child);
                let out = std::process::Command::new("sh")
                    .args([
                        "-c",
                        "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!",
                    ])
                    .output()
                    .map_err(|e| PluginError::fatal(e.to_string()))?;
                let daemon: u32 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .map_err(|e| PluginError::fatal(format!("no daemon pid: {e}")))?;
                Ok(plain(
                    json!({"worker": std::process::id(), "child": pid, "daemon": daemon}),
                ))
            }
            "blob" => {
                let total: usize = call.blobs.iter().map(|b| b.len()).sum();
                Ok(WithBlobs {
                    value: json!({"total": total, "blobs": call.blobs.len()}),
                    blobs: call.blobs,
                })
            }
            other => Err(PluginError::user_input(format!(
                "unknown operation {other:?}"
            ))),
        }
    }

    async fn execute_stream(
        &self,
        call: Call,
        ctx: CallContext,
    ) -> Result<cjm_worker_sdk::ChunkStream, PluginError> {
        let n = kw(&call, "n").as_u64().unwrap_or(3);
        let fail_at = kw(&call, "fail_at").as_u64();
        let delay = kw(&call, "delay_ms").as_u64().unwrap_or(0);
        let items = futures::stream::iter(0..n).then(move |i| {
            let ctx = ctx.clone();
            async move {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                ctx.check_cancelled()?;
                if Some(i) == fail_at {
                    return Err(PluginError::resource("out of memory (simulated)", vec![]));
                }
                Ok(json!({"i": i}))
            }
        });
        Ok(chunks(items))
    }
}

use futures::StreamExt;

cjm_worker_sdk::main!(TestWorker::default());
