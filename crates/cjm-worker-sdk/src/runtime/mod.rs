//! Running the worker process: what [`main!`](crate::main) does for a plugin, in pieces, for
//! programs that run a plugin their own way (an untyped [`Plugin`](crate::Plugin), a server
//! embedded on a thread of its own, tests).
//!
//! - Entry points: [`run_worker`] (what `main!` expands to), [`run_plugin`], and their parts
//!   [`init_logging`] and [`options_from_env`]; exit statuses [`EXIT_USAGE`] and
//!   [`EXIT_FAILURE`].
//! - Where to listen: [`CommandLine`] (`--listen`, `--tls-cert`, `--tls-key`, `--token-file`,
//!   `--register` ([`Registration`]), `--help`, with [`USAGE`]), [`ListenAddr`], the [`Listener`] inherited from the host or
//!   bound by hand, and the [`TlsIdentity`] a network-facing worker serves with.
//! - The [`Server`] around a plugin: [`Server::run`] on this thread until a signal or the
//!   host's death, or [`Server::spawn`] on a thread of its own ([`ServerHandle`]); why it
//!   stopped: [`ShutdownReason`].
//!
//! A plugin author needs none of this: the crate root has what a plugin is written against.
//!
//! ```
//! use cjm_worker_sdk::runtime::{CommandLine, ListenAddr, EXIT_USAGE};
//! let cmd = CommandLine::parse(["--listen", "unix:/tmp/w.sock"]).unwrap();
//! assert_eq!(cmd.listen, Some(ListenAddr::Unix("/tmp/w.sock".into())));
//! assert_eq!(EXIT_USAGE, 2);
//! ```

mod listener;
mod register;
mod run;
pub(crate) mod shutdown;
mod tls;

pub use crate::server::{Server, ServerHandle};
pub use listener::{CommandLine, ListenAddr, ListenError, Listener, USAGE};
pub use register::Registration;
pub use run::{
    describe_worker, init_logging, options_from_env, run_plugin, run_worker, run_worker_with,
    EXIT_FAILURE, EXIT_USAGE,
};
pub use shutdown::ShutdownReason;
pub use tls::TlsIdentity;

/// The runtime plumbing is not at the crate root (each block must fail to compile):
///
/// ```compile_fail
/// use cjm_worker_sdk::CommandLine;
/// ```
/// ```compile_fail
/// use cjm_worker_sdk::ListenAddr;
/// ```
/// ```compile_fail
/// use cjm_worker_sdk::USAGE;
/// ```
/// ```compile_fail
/// use cjm_worker_sdk::EXIT_USAGE;
/// ```
/// ```compile_fail
/// use cjm_worker_sdk::EXIT_FAILURE;
/// ```
/// ```compile_fail
/// use cjm_worker_sdk::run_plugin;
/// ```
/// ```compile_fail
/// use cjm_worker_sdk::Server;
/// ```
#[cfg(doctest)]
pub struct NotAtTheCrateRoot;
