//! The local launcher: a worker process on this machine, in its own process group and cgroup
//! (started by [`crate::spawn`]). Stopping it signals the group (`SIGTERM`, grace, `SIGKILL`),
//! sweeps its subtree and ends its cgroup and socket.

use std::time::Duration;

use async_trait::async_trait;
use cjm_core::PluginError;

use super::{Gone, Killer, Launched, Launcher, WorkerControl};
use crate::platform::{self, OomWatch};
use crate::spawn::{self, LaunchSpec, WorkerResources};

/// Starts workers as local processes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalLauncher;

#[async_trait]
impl Launcher for LocalLauncher {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, spec: &LaunchSpec, seq: u64) -> Result<Launched, PluginError> {
        // The OOM baseline is read once the spawn waits for the worker's first answer (`join`
        // polls the start first), while the worker starts, rather than after it.
        let (started, baseline) =
            futures::future::join(spawn::start(spec, seq), async { OomWatch::baseline() }).await;
        let started = started?;
        let oom = baseline.of(
            started.pid,
            started.resources.as_ref().and_then(|r| r.cgroup_path()),
        );
        Ok(Launched {
            client: started.client,
            pid: Some(started.pid),
            gone: started.exit,
            control: Box::new(LocalControl {
                pid: started.pid,
                resources: started.resources,
                oom,
            }),
        })
    }
}

/// Stops one local worker process and frees its cgroup and socket.
struct LocalControl {
    pid: u32,
    resources: Option<WorkerResources>,
    /// What the system looked like at its start, to tell an OOM kill from another SIGKILL.
    oom: OomWatch,
}

#[async_trait]
impl WorkerControl for LocalControl {
    async fn stop(&mut self, grace: Duration, gone: &mut Gone) {
        let pid = self.pid;
        let snapshot = platform::subtree(pid);
        platform::kill_group(pid, platform::SIGTERM);
        if tokio::time::timeout(grace, &mut *gone).await.is_err() {
            platform::kill_group(pid, platform::SIGKILL);
            let _ = gone.await;
        }
        sweep(pid, &snapshot);
    }

    fn killer(&self) -> Option<Killer> {
        let pid = self.pid;
        Some(Killer::new(move || {
            platform::kill_group(pid, platform::SIGKILL)
        }))
    }

    async fn release(&mut self) {
        sweep(self.pid, &[]);
        if let Some(r) = self.resources.take() {
            r.release().await;
        }
    }

    fn out_of_memory(&self) -> Option<String> {
        self.oom.evidence()
    }
}

/// Kills what is left of a worker's subtree: the processes seen before, and any still in its
/// session or process group.
fn sweep(pid: u32, snapshot: &[u32]) {
    platform::kill_group(pid, platform::SIGKILL);
    for p in snapshot.iter().copied().chain(platform::subtree(pid)) {
        if platform::is_alive(p) {
            platform::kill(p, platform::SIGKILL);
        }
    }
}
