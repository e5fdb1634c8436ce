//! The command line, declared with clap.

// The doc comments are `--help` text, where `<data-dir>` is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit codes:
  0   success
  1   `validate` found invalid manifests
  2   bad command line
  10  user_input   (bad arguments to the plugin)
  11  config       (invalid or rejected configuration)
  12  transient    (the worker crashed or the connection broke; retrying may help)
  13  resource     (not enough memory or VRAM)
  14  timeout      (--timeout passed, or the worker did not start in time)
  15  cancelled    (interrupted)
  16  not_loaded   (no such plugin)
  17  disabled
  18  fatal        (anything else: a plugin bug, a worker that cannot start)";

/// Discover, run and configure process-isolated plugins.
#[derive(Debug, Parser)]
#[command(name = "cjm", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Search this directory for manifests (repeatable; replaces the defaults
    /// ./.cjm/manifests and <data-dir>/manifests).
    #[arg(long = "search-path", value_name = "DIR", global = true)]
    pub search_paths: Vec<PathBuf>,

    /// The data directory (manifests/, logs/, configs/, data/). Default: $CJM_DATA_DIR or ~/.cjm.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// The resource admission policy.
    #[arg(long, value_enum, default_value_t = SchedulerKind::Permissive, global = true)]
    pub scheduler: SchedulerKind,

    /// Show the host's and the workers' logs on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Send `call` and `stream` to the `cjm serve` at URL (http://HOST:PORT or unix:PATH)
    /// instead of starting the worker here; default: $CJM_HOST, else the local service's
    /// socket if one is running. A token, if the service needs one, is read from the file
    /// named by $CJM_TOKEN_FILE.
    #[arg(long, value_name = "URL", global = true)]
    pub host: Option<String>,

    /// Refuse to load a plugin whose live worker drifted from its manifest's
    /// `drift_tracking` witnesses (default: warn, and validate against the live schema).
    #[arg(long, global = true)]
    pub strict_drift: bool,

    /// Place plugins of `execution_mode: ray` on the Ray cluster whose job server is at URL
    /// (http://HEAD:8265). Default: $CJM_RAY_ADDRESS.
    #[arg(long, value_name = "URL", global = true)]
    pub ray_address: Option<String>,

    /// Listen for Ray workers' registration on ADDR (default 127.0.0.1:0, enough for a
    /// cluster on this machine). Default: $CJM_RAY_REGISTER.
    #[arg(long, value_name = "ADDR", global = true)]
    pub ray_register: Option<SocketAddr>,

    /// The host name or IP the cluster's nodes reach this host at (default: the address of
    /// --ray-register). Default: $CJM_RAY_ADVERTISE.
    #[arg(long, value_name = "HOST", global = true)]
    pub ray_advertise: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Resource admission policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchedulerKind {
    /// Admit every call (the default).
    Permissive,
    /// Refuse a call whose declared minimum resources do not fit.
    Safety,
    /// Wait until the declared minimum fits.
    Queue,
}

/// Options shared by `call` and `stream`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The plugin.
    pub name: String,
    /// Configuration as a JSON object (default: the saved configuration, else the schema's
    /// defaults).
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// Positional arguments as a JSON array.
    #[arg(long, value_name = "JSON-ARRAY")]
    pub args: Option<String>,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON-OBJECT")]
    pub kwargs: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List discovered plugins and invalid manifests.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check manifests (files or directories; default: the search paths).
    Validate {
        /// Manifest files or directories.
        paths: Vec<PathBuf>,
    },
    /// Load a plugin, run one call, print the result as JSON, unload.
    Call(CallArgs),
    /// Load a plugin, run one call as a stream, print each chunk as a JSON line, unload.
    Stream(CallArgs),
    /// Load a plugin, call one method of a task adapter bound in its worker (`POST /task`,
    /// cjm-plugin-system 0.0.46 and cjm-substrate workers), print the result as JSON, unload.
    Task {
        /// The plugin.
        name: String,
        /// The task's address (the adapter's task name).
        task: String,
        /// The adapter's method.
        method: String,
        /// Keyword arguments as a JSON object.
        #[arg(long, value_name = "JSON-OBJECT")]
        kwargs: Option<String>,
        /// Configuration as a JSON object (default: the saved configuration).
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
    /// Show a plugin's metadata, operations and their inputs, schema and saved configuration,
    /// without starting it (--live adds health and stats).
    Info {
        /// The plugin.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also start the plugin and show its health, effective configuration and stats.
        #[arg(long)]
        live: bool,
    },
    /// Write a complete manifest for a worker binary from its self-description
    /// (`BINARY --describe`).
    Manifest {
        /// The worker program.
        binary: PathBuf,
        /// Write DIR/<name>.json (the command relative to DIR when the binary is inside it,
        /// else absolute) instead of printing the manifest.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Show or change a plugin's saved configuration.
    Config {
        /// The plugin.
        name: String,
        /// Merge these keys into the saved configuration (a JSON object).
        #[arg(long, value_name = "JSON")]
        set: Option<String>,
        /// Remove a key from the saved configuration (repeatable).
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
        /// Remove the saved configuration: the schema's defaults apply again.
        #[arg(long, conflicts_with_all = ["set", "unset"])]
        reset: bool,
    },
    /// Serve the settings web page: categories, plugin details and comparison, configuration
    /// (validated, saved, hot-applied to loaded plugins), Load/Unload and live status.
    Ui {
        /// The address to listen on. A non-loopback address needs --token-file.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
        addr: std::net::SocketAddr,
        /// Also answer requests whose Host is NAME (repeatable; the bound address and, on
        /// loopback, localhost are always accepted).
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
        /// Require the access token in FILE (at least 16 characters) on every request; a
        /// browser passes it once as /?token=TOKEN and keeps it in a cookie.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run the host as a service: the JSON API (/api/v1), /metrics, /healthz, /readyz and the
    /// settings page on ADDR, and a private local socket (<data-dir>/run/serve.sock) where
    /// `cjm call` and `cjm stream` find it. Plugins stay loaded between calls; SIGTERM or
    /// Ctrl-C unloads them all (a second one, or 30 s, forces the exit).
    Serve {
        /// The address to listen on. A non-loopback address needs --token-file.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8766")]
        addr: std::net::SocketAddr,
        /// Also answer requests whose Host is NAME (repeatable).
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
        /// Require the access token in FILE (at least 16 characters) as
        /// `Authorization: Bearer TOKEN` on every request (except /healthz and /readyz).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Per-plugin secrets (API keys) shared with the original's host: set, list, unset.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Durable jobs in a running `cjm serve` (found as `call` finds it): submit, list, show,
    /// cancel, wait, watch.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Instances in a running `cjm serve`: more workers of one plugin, each with its own
    /// configuration, addressed by instance id wherever a plugin name goes.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Write a new worker crate NAME (Cargo.toml, src/main.rs, .cjm/manifests/NAME.json) that
    /// builds and runs as it is.
    New {
        /// The worker's name (also the crate's and the binary's).
        name: String,
        /// The folder to create (default: ./NAME); it must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `cjm completions bash > ~/.local/share/bash-completion/completions/cjm`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show the end of a plugin's log.
    Logs {
        /// The plugin.
        name: String,
        /// How many lines.
        #[arg(long, default_value_t = 50)]
        lines: usize,
    },
}

/// `cjm instance …`.
#[derive(Debug, Subcommand)]
pub(crate) enum InstanceCommand {
    /// Starts another worker of NAME; prints the instance id on the last line.
    Add {
        /// The plugin.
        name: String,
        /// The instance id (1–64 of A-Z a-z 0-9 - _; default: generated).
        #[arg(long)]
        id: Option<String>,
        /// Its configuration as a JSON object (default: the plugin's saved one).
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the instances (of NAME, or of every plugin).
    List {
        /// Only this plugin's.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stops an instance's worker.
    Remove {
        /// The instance id.
        id: String,
    },
}

/// `cjm jobs …`.
#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Submits a job; prints its id on the last line (or the job as JSON).
    Submit {
        /// The plugin.
        name: String,
        /// Positional arguments as a JSON array.
        #[arg(long, value_name = "JSON-ARRAY")]
        args: Option<String>,
        /// Keyword arguments as a JSON object.
        #[arg(long, value_name = "JSON-OBJECT")]
        kwargs: Option<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Retries of a retriable failure.
        #[arg(long, default_value_t = 0)]
        retries: u32,
        /// Fail the job if it has not ended this many seconds from now.
        #[arg(long, value_name = "SECS")]
        deadline: Option<f64>,
        /// Submitting again with the same key returns the same job.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists jobs, newest first.
    List {
        /// Only in this state (queued, running, succeeded, failed, cancelled, interrupted).
        #[arg(long)]
        state: Option<String>,
        /// Only on this plugin.
        #[arg(long, value_name = "NAME")]
        plugin: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows one job.
    Show {
        /// The job's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancels a job (a running one in phases: cooperative, then forced).
    Cancel {
        /// The job's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Waits for a job to end; prints its result, and exits as `call` would (0 when it
    /// succeeded, its error's code when it failed, 15 when cancelled or interrupted).
    Wait {
        /// The job's id.
        id: String,
        /// Print the whole job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs a composition (a DAG of calls passing results along; JSON in FILE, `-` for stdin)
    /// and prints each node's outcome as JSON; exits 0 only when every node succeeded.
    Compose {
        /// The composition: `{"nodes": {ID: {"target", "call": {"args", "kwargs"}}}}`.
        file: PathBuf,
    },
    /// Prints the log lines the job's worker wrote while it ran it.
    Logs {
        /// The job's id.
        id: String,
        /// At most this many (the last ones).
        #[arg(long, default_value_t = 100)]
        lines: usize,
    },
    /// Prints events as they happen (one JSON line each): one job's until it ends, or all.
    Watch {
        /// The job's id (default: every job).
        id: Option<String>,
    },
}

/// `cjm secret …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Sets KEY for plugin NAME; the value is read from stdin, or from a prompt that does not
    /// echo when stdin is a terminal (never from the command line).
    Set {
        /// The plugin.
        name: String,
        /// The variable (as in the plugin's `code.worker_env`).
        key: String,
    },
    /// Lists the secret names set (never the values).
    List {
        /// Only this plugin's.
        name: Option<String>,
        /// As JSON (`{plugin: [KEY, …]}`).
        #[arg(long)]
        json: bool,
    },
    /// Removes KEY of plugin NAME.
    Unset {
        /// The plugin.
        name: String,
        /// The variable.
        key: String,
    },
}

impl SecretCommand {
    /// The plugin whose secrets this command changes (`set`, `unset`).
    pub(crate) fn plugin_changed(&self) -> Option<&str> {
        match self {
            Self::Set { name, .. } | Self::Unset { name, .. } => Some(name),
            Self::List { .. } => None,
        }
    }
}
