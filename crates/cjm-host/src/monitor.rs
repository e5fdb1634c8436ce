//! System readings for the scheduler, the UI and metrics: RAM, CPU load and NVIDIA GPUs.
//!
//! [`HostMonitor`] (the default) reads RAM and CPU load from `/proc` and GPUs through NVML
//! loaded at run time (no NVIDIA driver: no GPUs, not an error). `FakeMonitor` (the `testing`
//! feature's `cjm_host::testing::FakeMonitor`) returns readings a test sets, and tells waiting
//! schedulers when they change.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::gpu::Gpus;
use crate::platform;

/// One process's memory on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// The process.
    pub pid: u32,
    /// GPU memory it uses, MB (0 when the driver does not say).
    pub used_mb: u64,
}

/// One GPU's readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuReading {
    /// NVML's index (PCI bus order); what `CUDA_VISIBLE_DEVICES` is set to on placement.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// The GPU's UUID, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Memory, MB.
    pub total_mb: u64,
    /// Unallocated memory, MB.
    pub free_mb: u64,
    /// Allocated memory, MB.
    pub used_mb: u64,
    /// Percent of the last sample period during which a kernel ran, when known.
    pub utilization_percent: Option<u32>,
    /// Processes holding memory on it.
    pub processes: Vec<GpuProcess>,
}

impl GpuReading {
    /// A GPU with `total_mb` of which `free_mb` is free, no processes (for tests).
    pub fn new(index: u32, total_mb: u64, free_mb: u64) -> Self {
        Self {
            index,
            name: format!("GPU {index}"),
            uuid: None,
            total_mb,
            free_mb,
            used_mb: total_mb.saturating_sub(free_mb),
            utilization_percent: None,
            processes: Vec::new(),
        }
    }

    /// GPU memory used on this GPU by any of `pids`, MB.
    pub fn used_by(&self, pids: &[u32]) -> u64 {
        self.processes
            .iter()
            .filter(|p| pids.contains(&p.pid))
            .map(|p| p.used_mb)
            .sum()
    }
}

/// The machine's readings at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemSnapshot {
    /// Installed RAM, MB (0 when unknown: RAM is then not checked).
    pub ram_total_mb: u64,
    /// RAM available to new allocations without swapping, MB.
    pub ram_available_mb: u64,
    /// CPU load over all cores since the previous reading, percent.
    pub cpu_percent: f32,
    /// NVIDIA GPUs (empty without NVML).
    pub gpus: Vec<GpuReading>,
}

impl SystemSnapshot {
    /// The GPU with NVML index `index`.
    pub fn gpu(&self, index: u32) -> Option<&GpuReading> {
        self.gpus.iter().find(|g| g.index == index)
    }

    /// GPU memory used by any of `pids`, per GPU index (GPUs where they use none are left
    /// out).
    pub fn gpu_memory_of(&self, pids: &[u32]) -> Vec<(u32, u64)> {
        self.gpus
            .iter()
            .map(|g| (g.index, g.used_by(pids)))
            .filter(|&(_, mb)| mb > 0)
            .collect()
    }
}

/// What one loaded plugin holds (see [`crate::PluginManager::resource_usage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginResourceUsage {
    /// The plugin.
    pub plugin: String,
    /// The GPU it was placed on (its `CUDA_VISIBLE_DEVICES`).
    pub gpu: Option<u32>,
    /// VRAM reserved for it, MB.
    pub reserved_vram_mb: u64,
    /// System RAM reserved for it, MB.
    pub reserved_ram_mb: u64,
    /// GPU memory its worker's process subtree uses, per GPU index, MB.
    pub gpu_memory_mb: Vec<(u32, u64)>,
    /// Resident RAM of its worker's process subtree, MB (0 in-process).
    pub ram_mb: u64,
}

/// A source of system readings.
pub trait SystemMonitor: Send + Sync + std::fmt::Debug {
    /// The current readings. May block briefly (the manager calls it off the async threads).
    fn snapshot(&self) -> SystemSnapshot;

    /// Resident RAM of `pids` together, MB (a worker's whole process subtree).
    fn process_ram_mb(&self, pids: &[u32]) -> u64 {
        platform::usage(pids).0.round() as u64
    }

    /// A channel that changes whenever the readings do, for monitors that know (a fake one).
    /// Waiting schedulers then re-check at once instead of at their next poll.
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// The real machine: RAM and CPU load from `/proc`, GPUs through NVML.
#[derive(Debug)]
pub struct HostMonitor {
    /// The previous CPU sample `(busy, total)`, for the load since then.
    cpu: Mutex<Option<(u64, u64)>>,
    gpus: Gpus,
}

impl Default for HostMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl HostMonitor {
    /// A monitor; nothing is read until the first snapshot.
    pub fn new() -> Self {
        Self {
            cpu: Mutex::new(None),
            gpus: Gpus::default(),
        }
    }

    /// CPU load since the previous reading (since boot on the first one), percent.
    fn cpu_percent(&self) -> f32 {
        let Some((busy, total)) = platform::cpu_times() else {
            return 0.0;
        };
        let prev = self
            .cpu
            .lock()
            .ok()
            .and_then(|mut g| g.replace((busy, total)));
        let (b0, t0) = prev.unwrap_or((0, 0));
        let (db, dt) = (busy.saturating_sub(b0), total.saturating_sub(t0));
        if dt == 0 {
            0.0
        } else {
            (db as f64 * 100.0 / dt as f64) as f32
        }
    }
}

impl SystemMonitor for HostMonitor {
    fn snapshot(&self) -> SystemSnapshot {
        let (ram_total_mb, ram_available_mb) = platform::meminfo_mb().unwrap_or_else(|| {
            tracing::debug!("/proc/meminfo is not readable: RAM is not checked");
            (0, 0)
        });
        SystemSnapshot {
            ram_total_mb,
            ram_available_mb,
            cpu_percent: self.cpu_percent(),
            gpus: self.gpus.read(),
        }
    }
}

/// Readings set by a test. Each [`set`](Self::set) or [`update`](Self::update) wakes queued
/// calls so they re-check at once. Process RAM is what [`set_process_ram`](Self::set_process_ram)
/// says (0 by default), never `/proc`.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct FakeMonitor {
    state: Mutex<FakeState>,
    changes: watch::Sender<u64>,
}

#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
struct FakeState {
    snapshot: SystemSnapshot,
    process_ram: Vec<(u32, u64)>,
}

#[cfg(any(test, feature = "testing"))]
impl FakeMonitor {
    /// A monitor reporting `snapshot`.
    pub fn new(snapshot: SystemSnapshot) -> Self {
        Self {
            state: Mutex::new(FakeState {
                snapshot,
                process_ram: Vec::new(),
            }),
            changes: watch::channel(0).0,
        }
    }

    /// `ram_total_mb` of RAM with `ram_available_mb` available, and these GPUs.
    pub fn with(ram_total_mb: u64, ram_available_mb: u64, gpus: Vec<GpuReading>) -> Self {
        Self::new(SystemSnapshot {
            ram_total_mb,
            ram_available_mb,
            cpu_percent: 0.0,
            gpus,
        })
    }

    /// Replaces the readings.
    pub fn set(&self, snapshot: SystemSnapshot) {
        self.update(|s| *s = snapshot);
    }

    /// Changes the readings in place.
    pub fn update(&self, f: impl FnOnce(&mut SystemSnapshot)) {
        if let Ok(mut g) = self.state.lock() {
            f(&mut g.snapshot);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Reports `mb` of resident RAM for `pid`.
    pub fn set_process_ram(&self, pid: u32, mb: u64) {
        if let Ok(mut g) = self.state.lock() {
            g.process_ram.retain(|&(p, _)| p != pid);
            g.process_ram.push((pid, mb));
        }
        self.changes.send_modify(|n| *n += 1);
    }
}

#[cfg(any(test, feature = "testing"))]
impl SystemMonitor for FakeMonitor {
    fn snapshot(&self) -> SystemSnapshot {
        self.state
            .lock()
            .map(|g| g.snapshot.clone())
            .unwrap_or_default()
    }

    fn process_ram_mb(&self, pids: &[u32]) -> u64 {
        self.state
            .lock()
            .map(|g| {
                g.process_ram
                    .iter()
                    .filter(|(p, _)| pids.contains(p))
                    .map(|&(_, mb)| mb)
                    .sum()
            })
            .unwrap_or(0)
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_monitor_reads_ram() {
        let m = HostMonitor::new();
        let s = m.snapshot();
        assert!(s.ram_total_mb > 0);
        assert!(s.ram_available_mb <= s.ram_total_mb);
        // GPUs are whatever this machine has; reading them twice must not fail.
        let again = m.snapshot();
        assert_eq!(s.gpus.len(), again.gpus.len());
    }

    #[test]
    fn fake_monitor_reports_and_notifies() {
        let m = FakeMonitor::with(1000, 500, vec![GpuReading::new(0, 8000, 6000)]);
        let rx = m.subscribe().expect("fake monitors notify");
        m.update(|s| s.gpus[0].free_mb = 100);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(m.snapshot().gpus[0].free_mb, 100);
        m.set_process_ram(7, 30);
        assert_eq!(m.process_ram_mb(&[7, 8]), 30);
        assert_eq!(m.snapshot().gpu(0).map(|g| g.used_mb), Some(2000));
    }
}
