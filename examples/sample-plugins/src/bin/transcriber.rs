//! A simulated transcriber: `transcribe` streams the words of its `text` argument one chunk at a
//! time, with progress, as a speech-to-text plugin streams segments. Shows a typed config with a
//! schema, typed keyword arguments and a stream.
use std::sync::Mutex;
use std::time::Duration;

use cjm_worker_sdk::futures::{stream, StreamExt};
use cjm_worker_sdk::{
    async_trait, chunks, tokio, CallContext, ChunkStream, Command, PluginError, Worker,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How the transcriber works.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The spoken language.
    language: Language,
    /// Pause between words, in milliseconds.
    #[schemars(range(min = 0, max = 1000))]
    word_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            language: Language::En,
            word_delay_ms: 20,
        }
    }
}

#[derive(Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Language {
    En,
    De,
    Fr,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// "Transcribes" `text`: the whole transcript, or one chunk per word as a stream.
    Transcribe {
        /// The text to transcribe.
        text: String,
    },
}

#[derive(Default)]
struct Transcriber(Mutex<Config>);

impl Transcriber {
    fn config(&self) -> Result<Config, PluginError> {
        self.0
            .lock()
            .map(|c| c.clone())
            .map_err(|_| PluginError::fatal("config lock poisoned"))
    }
}

#[async_trait]
impl Worker for Transcriber {
    type Config = Config;
    type Input = Command<Op>;
    type Output = Value;
    const MAX_CONCURRENCY: u32 = 2;
    const STREAMING: &'static [&'static str] = &["transcribe"];

    async fn initialize(&self, config: Config) -> Result<(), PluginError> {
        *self
            .0
            .lock()
            .map_err(|_| PluginError::fatal("config lock poisoned"))? = config;
        Ok(())
    }

    /// The whole transcript at once.
    async fn execute(&self, op: Command<Op>, _ctx: CallContext) -> Result<Value, PluginError> {
        let Op::Transcribe { text } = op.0;
        let language = self.config()?.language;
        Ok(json!({ "text": text, "language": language }))
    }

    /// One chunk per word.
    async fn execute_stream(
        &self,
        op: Command<Op>,
        ctx: CallContext,
    ) -> Result<ChunkStream, PluginError> {
        let Op::Transcribe { text } = op.0;
        let config = self.config()?;
        let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        let total = words.len().max(1) as f64;
        let delay = Duration::from_millis(config.word_delay_ms);
        let segments = stream::iter(words.into_iter().enumerate()).then(move |(i, word)| {
            let ctx = ctx.clone();
            async move {
                // A zero-length sleep still waits for the next timer tick (about 1 ms).
                if !delay.is_zero() {
                    ctx.cancellation()
                        .run_until_cancelled(tokio::time::sleep(delay))
                        .await
                        .ok_or_else(|| PluginError::cancelled("transcription cancelled"))?;
                }
                ctx.check_cancelled()?;
                ctx.report_progress((i + 1) as f64 / total, format!("word {}", i + 1));
                Ok(json!({ "index": i, "word": word, "language": config.language }))
            }
        });
        Ok(chunks(segments))
    }
}

cjm_worker_sdk::main!(
    Transcriber::default(),
    name = "transcriber",
    description = "A simulated transcriber that streams words.",
);
