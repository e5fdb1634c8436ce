//! When the worker stops: `SIGTERM`/`SIGINT`, the host going away (`CJM_HOST_PID`), or a
//! request from the embedding program.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::platform;

/// How often the parent is checked where no pidfd is available.
const PARENT_POLL: Duration = Duration::from_millis(250);

/// Why the worker shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `SIGTERM`.
    Terminate,
    /// `SIGINT` (Ctrl-C in a run by hand).
    Interrupt,
    /// The host process (`CJM_HOST_PID`) is gone.
    HostGone,
    /// The embedding program asked ([`ServerHandle::shutdown`](crate::runtime::ServerHandle::shutdown)).
    Requested,
}

impl ShutdownReason {
    /// The process exit status for this reason: 0, except 1 when the host vanished.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::HostGone => 1,
            Self::Terminate | Self::Interrupt | Self::Requested => 0,
        }
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
            Self::HostGone => "the host process is gone",
            Self::Requested => "shutdown requested",
        })
    }
}

/// The termination signals, registered. Call inside a runtime.
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
}

pub(crate) fn signals() -> std::io::Result<Option<Signals>> {
    Ok(Some(Signals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
    }))
}

/// Resolves with the first reason to stop.
pub(crate) async fn wait(
    signals: Option<Signals>,
    host_pid: Option<u32>,
    requested: impl Future<Output = ()>,
) -> ShutdownReason {
    let by_signal = async move {
        match signals {
            Some(mut s) => tokio::select! {
                _ = s.term.recv() => ShutdownReason::Terminate,
                _ = s.int.recv() => ShutdownReason::Interrupt,
            },
            None => std::future::pending().await,
        }
    };
    let host = async move {
        match host_pid {
            Some(pid) => host_gone(pid).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = by_signal => r,
        () = host => {
            tracing::warn!("host process {} is gone", host_pid.unwrap_or(0));
            ShutdownReason::HostGone
        }
        () = requested => ShutdownReason::Requested,
    }
}

/// Resolves once the host `pid` is gone: when this process's parent is no longer the host
/// (it was at start), or the host process has exited. A pidfd makes this immediate on Linux;
/// elsewhere the parent is polled.
async fn host_gone(pid: u32) {
    let was_parent = platform::parent_pid() == pid;
    let gone =
        move || (was_parent && platform::parent_pid() != pid) || !platform::process_exists(pid);
    if gone() {
        return;
    }
    if let Ok(fd) = platform::pidfd_open(pid) {
        // The host might have died between the check and the pidfd: check once more.
        if gone() || platform::pidfd_exited(fd).await.is_ok() {
            return;
        }
    }
    loop {
        tokio::time::sleep(PARENT_POLL).await;
        if gone() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_host_is_noticed_at_once() {
        // pid_max is at most 2^22 on Linux: this pid cannot exist.
        let r = wait(None, Some(0x7fff_fff0), std::future::pending()).await;
        assert_eq!(r, ShutdownReason::HostGone);
        assert_eq!(r.exit_code(), 1);
    }

    #[tokio::test]
    async fn a_request_stops_the_wait() {
        let r = wait(None, Some(std::process::id()), async {}).await;
        assert_eq!(r, ShutdownReason::Requested);
        assert_eq!(r.exit_code(), 0);
    }

    #[tokio::test]
    async fn the_death_of_a_watched_process_is_noticed() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let waiter = tokio::spawn(wait(None, Some(pid), std::future::pending()));
        child.kill().expect("kill");
        // Reaping it makes it vanish; the pidfd (or the poll) sees it either way.
        child.wait().expect("reap");
        assert_eq!(waiter.await.unwrap(), ShutdownReason::HostGone);
    }
}
