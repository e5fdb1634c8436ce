//! The worker program's entry points: read the environment and the command line, set up
//! logging, serve, and turn the outcome into an exit status.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use cjm_core::describe::{WorkerDescription, DESCRIBE_VERSION};
use cjm_core::wire::{env, PROTOCOL_VERSION};
use cjm_core::Plugin;

use super::listener::{CommandLine, ListenError, Listener, USAGE};
use crate::server::{Options, Server};
use crate::worker::{FromCall, Typed, Worker};

/// Exit status for a usage error (no socket, bad `--listen`).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when serving failed.
pub const EXIT_FAILURE: u8 = 1;

/// Sends `tracing` logs to stderr (which the host captures), filtered by `CJM_LOG` (default
/// `info`). Does nothing when a subscriber is already installed.
pub fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let spec = std::env::var(env::LOG).unwrap_or_default();
    let spec = spec.trim();
    let builder = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A plain level (the usual case) needs no directive parser: lighter at start-up.
    let level = if spec.is_empty() {
        Some(LevelFilter::INFO)
    } else {
        spec.parse::<LevelFilter>().ok()
    };
    let _ = match level {
        Some(level) => builder.with_max_level(level).try_init(),
        None => builder
            .with_env_filter(EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info")))
            .try_init(),
    };
}

/// Standard error for log lines, where a failed write is dropped silently. When the host dies,
/// the pipe it read the worker's output from breaks; `tracing-subscriber` reports a failed write
/// with `eprintln!`, which panics on a broken pipe and would end the worker before it could shut
/// down and end the plugin's leftover processes.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Fills in what the host passes through the environment: the auth token (then removed from
/// the environment, so that programs the plugin starts do not see it), the blob channel and
/// the calls socket (also removed), the host's pid and the concurrency cap (the effective
/// limit is the smaller of the plugin's and the host's).
pub fn options_from_env(mut options: Options) -> Options {
    if let Ok(token) = std::env::var(env::AUTH_TOKEN) {
        if !token.is_empty() {
            options = options.auth_token(token);
        }
    }
    std::env::remove_var(env::AUTH_TOKEN);
    if let Ok(pid) = std::env::var(env::HOST_PID) {
        match pid.trim().parse::<u32>() {
            Ok(p) if p > 0 => options = options.host_pid(p),
            _ => tracing::warn!("ignoring {}={pid:?}: not a pid", env::HOST_PID),
        }
    }
    let blobs = adopt_env_fd(env::BLOB_FD, "blobs travel in request bodies", |n| {
        cjm_sys::blob_channel::BlobChannel::adopt(n)
    });
    if let Some(channel) = blobs {
        options = options.blob_channel(channel);
    }
    let calls = adopt_env_fd(env::CALLS_FD, "calls are served on the main socket", |n| {
        crate::platform::adopt_listener_fd(n, crate::platform::SocketKind::Unix)
    });
    if let Some(listener) = calls {
        options = options.calls_listener(listener.into());
    }
    if let Ok(n) = std::env::var(env::MAX_CONCURRENCY) {
        match n.trim().parse::<u32>() {
            Ok(n) if n > 0 => {
                let own = options.max_concurrency;
                options = options.max_concurrency(own.min(n));
            }
            _ => tracing::warn!(
                "ignoring {}={n:?}: not a positive number",
                env::MAX_CONCURRENCY
            ),
        }
    }
    options
}

/// Takes the descriptor the host passed by number in `var` (removing the variable) and adopts
/// it with `adopt`; a bad value or a refused descriptor is logged with what happens instead
/// (`otherwise`) and gives `None`.
fn adopt_env_fd<T>(
    var: &str,
    otherwise: &str,
    adopt: impl FnOnce(i32) -> std::io::Result<T>,
) -> Option<T> {
    let fd = std::env::var(var).ok()?;
    std::env::remove_var(var);
    let adopted = fd
        .trim()
        .parse::<i32>()
        .map_err(|e| e.to_string())
        .and_then(|n| adopt(n).map_err(|e| e.to_string()));
    match adopted {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("ignoring {var}={fd:?} ({e}): {otherwise}");
            None
        }
    }
}

/// Applies `--token-file` and `--tls-cert`/`--tls-key`, and refuses to serve a TCP address off
/// loopback without a token: anyone who can reach the port could call the plugin.
fn network_options(mut options: Options, cmd: &CommandLine) -> Result<Options, ListenError> {
    if let Some(file) = &cmd.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| ListenError::Invalid(format!("--token-file {}: {e}", file.display())))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(ListenError::Invalid(format!(
                "--token-file {}: the file is empty",
                file.display()
            )));
        }
        options = options.auth_token(token);
    }
    if let (Some(cert), Some(key)) = (&cmd.tls_cert, &cmd.tls_key) {
        options = options.tls(super::TlsIdentity::from_pem_files(cert, key)?);
    }
    Ok(options)
}

/// Refuses TLS on a Unix socket, and a TCP address off loopback without a token: anyone who
/// can reach the port could call the plugin.
fn check_exposure(listener: &Listener, options: &Options) -> Result<(), ListenError> {
    match listener {
        Listener::Unix { .. } if options.tls.is_some() => Err(ListenError::Invalid(
            "--tls-cert needs a TCP socket (--listen tcp:ADDR)".into(),
        )),
        Listener::Tcp(l) => {
            let addr = l
                .local_addr()
                .map_err(|e| ListenError::io("reading the listening address", e))?;
            if !addr.ip().is_loopback() && options.auth_token.is_none() {
                return Err(ListenError::Invalid(format!(
                    "tcp:{addr} is reachable from other machines: give --token-file (and \
                     --tls-cert/--tls-key so the token does not travel in clear text)"
                )));
            }
            Ok(())
        }
        Listener::Unix { .. } => Ok(()),
    }
}

/// Registers with the host and serves with what it grants: its certificate, its token, and
/// the plugin's secrets in the environment (set here, before any other thread exists).
fn registered(
    reg: &super::Registration,
    port: u16,
    options: Options,
) -> Result<Options, ListenError> {
    let grant = reg.register(port)?;
    let identity =
        super::TlsIdentity::from_pem(grant.tls_cert_pem.as_bytes(), grant.tls_key_pem.as_bytes())?;
    for (k, v) in &grant.env {
        std::env::set_var(k, v);
    }
    tracing::info!(port, "registered with the host");
    Ok(options.auth_token(grant.auth_token).tls(identity))
}

fn usage_error(e: &ListenError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {e}\n\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
}

/// What `WORKER --describe` prints for a typed [`Worker`] run with `options`: generated from
/// `W::Config`'s schema, `W::Input`'s [`FromCall::describe`](crate::FromCall::describe),
/// [`Worker::STREAMING`] and the options' name, version, description and resources. Costs no
/// plugin initialisation.
pub fn describe_worker<W: Worker>(options: &Options) -> WorkerDescription {
    let input = <W::Input as FromCall>::describe();
    WorkerDescription {
        describe_version: DESCRIBE_VERSION,
        protocol: PROTOCOL_VERSION,
        name: options.name.clone(),
        version: options.version.clone(),
        description: options.description.clone(),
        config_schema: serde_json::to_value(schemars::schema_for!(W::Config))
            .unwrap_or(serde_json::Value::Bool(true)),
        input: input.kind,
        operations: input.operations(W::STREAMING),
        max_concurrency: W::MAX_CONCURRENCY.max(1),
        resources: options.resources.clone(),
    }
}

/// Prints `description` as one JSON document on stdout.
fn print_description(description: &WorkerDescription) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, description)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("could not print the description: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Runs a typed [`Worker`] as a worker program. The concurrency limit is
/// `W::MAX_CONCURRENCY` (capped by `CJM_MAX_CONCURRENCY`). `--describe` prints
/// [`describe_worker`] and exits 0 without serving or initialising the plugin.
pub fn run_worker<W: Worker>(worker: W, options: Options) -> ExitCode {
    run_worker_with(move || worker, options)
}

/// [`run_worker`] with the worker made by `make`, which is not called for `--describe`: what
/// [`main!`](crate::main) expands to, so that describing a worker never constructs it (a
/// constructor that loads a model costs nothing there).
pub fn run_worker_with<W: Worker>(make: impl FnOnce() -> W, options: Options) -> ExitCode {
    if std::env::args_os()
        .skip(1)
        .any(|a| a == cjm_core::describe::DESCRIBE_FLAG)
    {
        return print_description(&describe_worker::<W>(&options));
    }
    // Before the worker is made: the libraries loaded now are the program's own, which are
    // never unloaded (for the idle release).
    crate::platform::note_startup_code();
    let worker = make();
    let options = options.max_concurrency(W::MAX_CONCURRENCY);
    let plugin = Typed::new(worker, options.name.clone(), options.version.clone());
    run_plugin(Arc::new(plugin), options)
}

/// Runs any [`Plugin`] as a worker program (for plugins written against the untyped trait).
pub fn run_plugin(plugin: Arc<dyn Plugin>, options: Options) -> ExitCode {
    crate::platform::tune_allocator();
    init_logging();
    let cmd = match CommandLine::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    if cmd.help {
        let _ = writeln!(std::io::stdout().lock(), "{USAGE}");
        return ExitCode::SUCCESS;
    }
    if cmd.describe {
        // A typed worker answered before getting here; an untyped plugin has no static shape.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "error: this worker cannot describe itself (it is not a typed cjm_worker_sdk::Worker)"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let options = match network_options(options_from_env(options), &cmd) {
        Ok(o) => o,
        Err(e) => return usage_error(&e),
    };
    let listener = match Listener::from_command_line_or_env(&cmd) {
        Ok(l) => l,
        Err(e @ (ListenError::Missing | ListenError::Invalid(_))) => return usage_error(&e),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let options = match (&cmd.register, &listener) {
        (None, _) => options,
        (Some(reg), Listener::Tcp(l)) => {
            match l
                .local_addr()
                .map_err(|e| ListenError::io("reading the listening address", e))
                .and_then(|a| registered(reg, a.port(), options))
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            }
        }
        (Some(_), Listener::Unix { .. }) => {
            return usage_error(&ListenError::Invalid(
                "--register needs a TCP socket (--listen tcp:0.0.0.0:0)".into(),
            ))
        }
    };
    if let Err(e) = check_exposure(&listener, &options) {
        return usage_error(&e);
    }
    match Server::new(plugin, options).run(listener) {
        Ok(reason) => {
            tracing::info!("worker stopped ({reason})");
            ExitCode::from(reason.exit_code())
        }
        Err(e) => {
            tracing::error!("the worker failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
