//! A configuration with one field of every JSON Schema type the SDK generates: a string with a
//! length and a pattern, a bounded number, a bounded integer, a boolean, an enum, an array of
//! strings and a nullable field, each with a default, and a title and a description taken from
//! its doc comment (`/// # Title`, a blank line, then the description). Operation `show`
//! (`{"args": ["show"]}`) returns the configuration in force.
//!
//! Invalid configurations never reach [`Worker::initialize`]: the SDK validates them against the
//! schema and answers `422` naming each field (`fields[].field`), and the previous
//! configuration stays in force.
use std::sync::Mutex;

use cjm_worker_sdk::{async_trait, CallContext, Command, PluginError, Worker};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// # Config-rich sample
///
/// Every schema type, for forms and validation.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// # Display name
    ///
    /// 1 to 32 letters, digits, `-` or `_`.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    name: String,
    /// # Temperature
    ///
    /// Sampling temperature, from 0 to 2.
    #[schemars(range(min = 0.0, max = 2.0))]
    temperature: f64,
    /// # Beam size
    ///
    /// Hypotheses kept while decoding, 1 to 16.
    #[schemars(range(min = 1, max = 16))]
    beam_size: u32,
    /// # Verbose
    ///
    /// Log every step.
    verbose: bool,
    /// # Model
    ///
    /// The model size.
    model: Model,
    /// # Tags
    ///
    /// Free-form labels, at most 8.
    #[schemars(length(max = 8))]
    tags: Vec<String>,
    /// # Seed
    ///
    /// The random seed; `null` picks one at random.
    seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "sample".into(),
            temperature: 0.7,
            beam_size: 4,
            verbose: false,
            model: Model::Small,
            tags: vec!["demo".into()],
            seed: None,
        }
    }
}

/// A model size.
#[derive(Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Model {
    Small,
    Medium,
    Large,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// Returns the configuration in force, defaults filled in.
    Show,
}

#[derive(Default)]
struct ConfigRich(Mutex<Config>);

#[async_trait]
impl Worker for ConfigRich {
    type Config = Config;
    type Input = Command<Op>;
    type Output = Config;
    const MAX_CONCURRENCY: u32 = 4;

    async fn initialize(&self, config: Config) -> Result<(), PluginError> {
        *self
            .0
            .lock()
            .map_err(|_| PluginError::fatal("config lock poisoned"))? = config;
        Ok(())
    }

    async fn execute(&self, op: Command<Op>, _ctx: CallContext) -> Result<Config, PluginError> {
        let Op::Show = op.0;
        self.0
            .lock()
            .map(|c| c.clone())
            .map_err(|_| PluginError::fatal("config lock poisoned"))
    }
}

cjm_worker_sdk::main!(
    ConfigRich::default(),
    name = "config-rich",
    description =
        "A configuration with every schema type; `show` returns the configuration in force.",
);
