//! NVIDIA GPUs through NVML, loaded at run time.
//!
//! `nvml-wrapper` opens `libnvidia-ml.so.1` with `dlopen` when [`Gpus::read`] first runs, so the
//! host builds and runs on machines without the NVIDIA driver: there the library is missing,
//! initialisation fails once (logged at debug) and the host sees no GPUs.

use std::sync::OnceLock;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use crate::monitor::{GpuProcess, GpuReading};

const MB: u64 = 1_048_576;

/// The GPUs of this machine; NVML is initialised on the first reading, once.
#[derive(Default)]
pub(crate) struct Gpus {
    nvml: OnceLock<Option<Nvml>>,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.nvml.get() {
            None => "not initialised",
            Some(None) => "unavailable",
            Some(Some(_)) => "loaded",
        };
        f.debug_struct("Gpus").field("nvml", &state).finish()
    }
}

impl Gpus {
    fn nvml(&self) -> Option<&Nvml> {
        self.nvml
            .get_or_init(|| match Nvml::init() {
                Ok(n) => {
                    tracing::debug!("NVML loaded");
                    Some(n)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "NVML is not available: no GPUs will be reported");
                    None
                }
            })
            .as_ref()
    }

    /// Every GPU's memory, utilisation and compute/graphics processes. Empty without NVML.
    /// A GPU whose memory cannot be read is left out (logged at debug).
    pub(crate) fn read(&self) -> Vec<GpuReading> {
        let Some(nvml) = self.nvml() else {
            return Vec::new();
        };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "NVML cannot count devices");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(index, error = %e, "NVML cannot open a device");
                    continue;
                }
            };
            let memory = match device.memory_info() {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(index, error = %e, "NVML cannot read a device's memory");
                    continue;
                }
            };
            let mut processes: Vec<GpuProcess> = Vec::new();
            let lists = [
                device.running_compute_processes(),
                device.running_graphics_processes(),
            ];
            for list in lists.into_iter().flatten() {
                for p in list {
                    let used_mb = match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => b / MB,
                        UsedGpuMemory::Unavailable => 0,
                    };
                    // A process doing both compute and graphics is listed twice.
                    match processes.iter_mut().find(|q| q.pid == p.pid) {
                        Some(q) => q.used_mb = q.used_mb.max(used_mb),
                        None => processes.push(GpuProcess {
                            pid: p.pid,
                            used_mb,
                        }),
                    }
                }
            }
            out.push(GpuReading {
                index,
                name: device.name().unwrap_or_else(|_| "unknown".into()),
                uuid: device.uuid().ok(),
                total_mb: memory.total / MB,
                free_mb: memory.free / MB,
                used_mb: memory.used / MB,
                utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
                processes,
            });
        }
        out
    }
}
