//! Everything platform-specific in the worker, as a thin user of `cjm-sys`: adopting the
//! inherited socket, `/proc` readings in the SDK's units, parent watching, ending leftover
//! processes, and the allocator tuning that is the SDK's own.

use std::io;
use std::os::fd::OwnedFd;

pub(crate) use cjm_sys::fd::{adopt_listener_fd, pidfd_open, SocketKind};
pub(crate) use cjm_sys::proc::{descendants, parent_pid, process_exists};

/// Resolves once the process behind `pidfd` has exited. Call inside a tokio runtime.
pub(crate) async fn pidfd_exited(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: `pidfd` is an open descriptor owned by the AsyncFd for its whole lifetime, and
    // an OwnedFd always returns the same descriptor from as_raw_fd.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// Readings of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcSample {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time in seconds (for the worker itself, reaped children too).
    pub cpu_seconds: f64,
    /// Threads.
    pub threads: u32,
}

/// Reads `/proc/<pid>/stat`. `with_children` adds the CPU time of reaped children.
pub(crate) fn sample(pid: u32, with_children: bool) -> Option<ProcSample> {
    let s = cjm_sys::proc::stat(pid)?;
    let mut ticks = s.cpu_ticks();
    if with_children {
        ticks = ticks.saturating_add(s.cutime).saturating_add(s.cstime);
    }
    Some(ProcSample {
        rss_bytes: s.rss_pages.saturating_mul(cjm_sys::proc::page_size()),
        cpu_seconds: ticks as f64 / cjm_sys::proc::clock_ticks() as f64,
        threads: s.threads,
    })
}

/// Ends what the worker leaves behind: its descendants and, when it leads its own process
/// group (a host-spawned worker does), the group's other members. `SIGTERM` first, `SIGKILL`
/// for those still running after `patience`. Returns how many processes were signalled.
pub(crate) fn end_leftovers(patience: std::time::Duration) -> usize {
    let me = std::process::id();
    let mut pids = descendants(me);
    if cjm_sys::proc::process_group() == me {
        for p in cjm_sys::proc::group_members(me) {
            if p != me && !pids.contains(&p) {
                pids.push(p);
            }
        }
    }
    if pids.is_empty() {
        return 0;
    }
    cjm_sys::signal::terminate(&pids, patience, true);
    pids.len()
}

/// Has the standard library detect the CPU's features now. The HTTP parser picks its SIMD
/// code when it parses its first request, and the detection behind that choice asks the CPU
/// with `cpuid` several times; under a hypervisor each such instruction traps (about 7 µs each
/// on the 2-core VM the bench runs on, 0.09 ms in all), so the first `/health` of every worker
/// waited for it. Called on a plugin thread at start, it runs while the HTTP thread sets up; the
/// answer is cached for the process.
pub(crate) fn detect_cpu_features() {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = std::arch::is_x86_feature_detected!("sse4.2");
    }
}

/// Tunes glibc's allocator for a worker process:
/// - two arenas (glibc gives every thread that allocates its own, which keeps memory from bursts
///   of concurrent calls resident; two are plenty for a worker whose heavy lifting is the
///   plugin's own);
/// - blocks under 32 MiB come from the heap, and up to 64 MiB of freed heap is kept, so that
///   the buffers of one large call (an 8 MiB argument parsed, its answer written) are warm for
///   the next instead of fresh pages faulted in and zeroed each time: about +18% on the 8 MiB
///   echo. What is kept is given back once the worker is idle ([`release_free_memory`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Nothing to tune on other platforms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune_allocator() {}

/// Gives the allocator's free memory back to the system (glibc's `malloc_trim`), after a burst
/// of calls: an idle worker stays small whatever its largest call was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn release_free_memory() {
    // SAFETY: malloc_trim only returns free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Nothing to release on other platforms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() {}

/// Whether the worker is still idle, asked again just before the code pages go.
pub(crate) type StillIdle = Box<dyn Fn() -> bool + Send>;

/// Unmaps the resident pages of the worker's program and libraries ([`cjm_sys::code_pages`])
/// once it idles: they stay in the page cache and map again on the next call.
///
/// A thread of its own does it, [`SETTLE`] after being asked and only if `still_idle` then
/// says so: by then the runtime's threads have gone back to sleep, so the code they ran to get
/// there is not mapped again right away (about 1.5 MiB when the releasing thread was one of
/// them). That thread then sleeps until the next idle spell, in a `recv` whose code is the
/// little it maps again.
#[cfg(target_os = "linux")]
pub(crate) fn release_code_pages(still_idle: StillIdle) {
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::OnceLock;
    static RELEASER: OnceLock<Option<SyncSender<StillIdle>>> = OnceLock::new();
    let releaser = RELEASER.get_or_init(|| {
        let (tx, rx) = sync_channel::<StillIdle>(1);
        let spawned = std::thread::Builder::new()
            .name("cjm-idle".into())
            .stack_size(64 << 10)
            .spawn(move || {
                while let Ok(still_idle) = rx.recv() {
                    std::thread::sleep(SETTLE);
                    if !still_idle() {
                        continue;
                    }
                    let program;
                    let within = match STARTUP_CODE.get() {
                        Some(code) => code,
                        None => {
                            program = cjm_sys::code_pages::LoadedCode::program();
                            &program
                        }
                    };
                    match cjm_sys::code_pages::release(within) {
                        Ok(bytes) => {
                            tracing::debug!("idle: {} KiB of code pages unmapped", bytes / 1024)
                        }
                        Err(e) => tracing::debug!("idle: cannot unmap code pages: {e}"),
                    }
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::debug!("idle: no thread to unmap code pages: {e}");
                None
            }
        }
    });
    if let Some(tx) = releaser {
        // Full: a release is already pending, which is as good.
        let _ = tx.try_send(still_idle);
    }
}

/// The objects loaded when the worker program started, before any plugin code ran: the only
/// libraries whose pages the idle release unmaps (see [`cjm_sys::code_pages::LoadedCode`]).
/// Without it (a server embedded in another program) only the program's own pages are.
#[cfg(target_os = "linux")]
static STARTUP_CODE: std::sync::OnceLock<cjm_sys::code_pages::LoadedCode> =
    std::sync::OnceLock::new();

/// Notes the objects loaded now as those loaded at start; call before any plugin code runs.
#[cfg(target_os = "linux")]
pub(crate) fn note_startup_code() {
    let _ = STARTUP_CODE.set(cjm_sys::code_pages::LoadedCode::now());
}

/// Nothing to note on other platforms.
#[cfg(not(target_os = "linux"))]
pub(crate) fn note_startup_code() {}

/// How long the releasing thread lets the runtime's threads settle before it unmaps.
#[cfg(target_os = "linux")]
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// Nothing to unmap on other platforms.
#[cfg(not(target_os = "linux"))]
pub(crate) fn release_code_pages(_still_idle: StillIdle) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_sampled() {
        let me = std::process::id();
        let s = sample(me, true).unwrap();
        assert!(s.rss_bytes > 0 && s.threads >= 1);
        assert!(s.cpu_seconds >= sample(me, false).unwrap().cpu_seconds - 1e-9);
        assert!(process_exists(me));
        assert!(!descendants(me).contains(&me));
    }
}
