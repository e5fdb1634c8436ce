//! Large receive buffers that keep their pages between uses.
//!
//! A fresh 256 MiB buffer costs far more to fill than a warm one: every 4 KiB page faults and is
//! zeroed on first touch (on a small VM, about 1.9 GB/s against 11 GB/s for a copy into warm
//! pages). Bodies of a megabyte or more are therefore read into buffers taken from this pool;
//! when the last [`Bytes`] over one is dropped, its mapping comes back here and the next large
//! body is read into pages already there.
//!
//! Memory stays bounded: the pool keeps at most [`MAX_POOLED`] mappings and [`MAX_POOLED_BYTES`]
//! in all, marks the pages of a mapping unused for [`FREE_AFTER`] `MADV_FREE`, so that the kernel
//! takes them back under memory pressure (a page it took reads as zero and faults again on its
//! next use), and unmaps a mapping unused for [`IDLE_FOR`]. A small thread of the pool's
//! (`cjm-bufpool`, started when the pool first keeps a mapping) does both on time, whether or not
//! the pool is used again.
//!
//! The advice waits for an idle spell because it is not free for the next user: after
//! `MADV_FREE` every page faults again on its next write, even when the kernel took none of
//! them. Writing 8 MiB into kept pages took 0.31 ms, and 1.03 ms after the advice; a large
//! call's body crosses four pooled buffers (both sides' writers and readers).

use std::io;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Bodies at least this long are read into pooled buffers.
pub const POOL_MIN: usize = 1 << 20;

/// Most mappings kept for reuse.
pub const MAX_POOLED: usize = 4;

/// Most bytes kept for reuse, all mappings together.
pub const MAX_POOLED_BYTES: usize = 1 << 30;

/// A kept mapping unused for this long is unmapped.
pub const IDLE_FOR: Duration = Duration::from_secs(30);

/// A kept mapping unused for this long has its pages marked `MADV_FREE`.
#[cfg(not(test))]
pub const FREE_AFTER: Duration = Duration::from_secs(1);
/// A kept mapping unused for this long has its pages marked `MADV_FREE` (short in tests).
#[cfg(test)]
pub const FREE_AFTER: Duration = Duration::from_millis(50);

/// Granularity of mapping sizes (so that near sizes share mappings).
const STEP: usize = 2 << 20;

struct Mapping {
    ptr: *mut libc::c_void,
    cap: usize,
}

// SAFETY: a private anonymous mapping owned by exactly one value at a time.
unsafe impl Send for Mapping {}
// SAFETY: shared access only reads.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(cap: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, cap })
    }
}

impl Mapping {
    /// Owns nothing: what a [`Frozen`] holds once its mapping went back to the pool.
    const NONE: Self = Self {
        ptr: std::ptr::null_mut(),
        cap: 0,
    };
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: `ptr`/`cap` is the mapping made in `new`, unmapped once, here.
            unsafe { libc::munmap(self.ptr, self.cap) };
        }
    }
}

/// A mapping in the pool: since when it is unused, and whether its pages were marked
/// `MADV_FREE` yet.
struct Kept {
    at: Instant,
    map: Mapping,
    freed: bool,
}

impl Kept {
    /// When the sweeper next has something to do with this mapping.
    fn due(&self) -> Instant {
        self.at + if self.freed { IDLE_FOR } else { FREE_AFTER }
    }
}

/// The pool, and how its sweeper thread stands.
struct Pool {
    kept: Vec<Kept>,
    sweeper: Sweeper,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweeper {
    /// Not started yet.
    None,
    /// Running, or woken: it sweeps before it waits again.
    Running,
    /// Waiting until this instant: a mapping given back that is due sooner must wake it.
    Until(Instant),
    /// Waiting with nothing due: a mapping given back must wake it.
    Idle,
    /// Could not be started: mappings are marked `MADV_FREE` as they come back.
    Failed,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    kept: Vec::new(),
    sweeper: Sweeper::None,
});
static SWEEP: Condvar = Condvar::new();

fn pool() -> MutexGuard<'static, Pool> {
    match POOL.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Marks `map`'s pages `MADV_FREE`.
fn advise_free(map: &Mapping) {
    // SAFETY: advice on a mapping we own, which no buffer is using; MADV_FREE only lets the
    // kernel drop its pages.
    unsafe { libc::madvise(map.ptr, map.cap, libc::MADV_FREE) };
}

impl Pool {
    /// Marks the mappings unused for [`FREE_AFTER`] `MADV_FREE`, and takes out those unused for
    /// [`IDLE_FOR`] (for the caller to unmap once the lock is released).
    fn sweep(&mut self, now: Instant) -> Vec<Kept> {
        let (stale, kept) = std::mem::take(&mut self.kept)
            .into_iter()
            .partition(|k| now.duration_since(k.at) >= IDLE_FOR);
        self.kept = kept;
        for k in &mut self.kept {
            if !k.freed && now.duration_since(k.at) >= FREE_AFTER {
                advise_free(&k.map);
                k.freed = true;
            }
        }
        stale
    }
}

/// The sweeper thread: marks and unmaps kept mappings as they come due.
fn sweeper() {
    let mut p = pool();
    loop {
        let stale = p.sweep(Instant::now());
        if !stale.is_empty() {
            // Unmapped without the lock held.
            drop(p);
            drop(stale);
            p = pool();
            continue;
        }
        let due = p.kept.iter().map(Kept::due).min();
        p.sweeper = match due {
            Some(d) => Sweeper::Until(d),
            None => Sweeper::Idle,
        };
        p = match due {
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now());
                match SWEEP.wait_timeout(p, wait) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                }
            }
            None => match SWEEP.wait(p) {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            },
        };
        p.sweeper = Sweeper::Running;
    }
}

/// Starts the sweeper thread, or notes that it cannot be had.
fn start_sweeper(p: &mut Pool) {
    let started = std::thread::Builder::new()
        .name("cjm-bufpool".into())
        .stack_size(64 << 10)
        .spawn(sweeper);
    p.sweeper = match started {
        Ok(_) => Sweeper::Running,
        Err(e) => {
            tracing::debug!("no buffer pool sweeper thread ({e}): kept pages are freed at once");
            Sweeper::Failed
        }
    };
}

/// A buffer of at least the length asked for, from the pool or new.
pub struct PooledBuf {
    map: Mapping,
    len: usize,
    filled: usize,
}

impl std::fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBuf")
            .field("len", &self.len)
            .field("cap", &self.map.cap)
            .finish()
    }
}

impl PooledBuf {
    /// A buffer of `len` bytes (contents unspecified: the caller overwrites them).
    pub fn take(len: usize) -> io::Result<Self> {
        let cap = len.max(1).div_ceil(STEP) * STEP;
        let reused = {
            let mut p = pool();
            // The smallest kept mapping that fits and is not more than twice as large.
            let best = p
                .kept
                .iter()
                .enumerate()
                .filter(|(_, k)| k.map.cap >= cap && k.map.cap <= 2 * cap)
                .min_by_key(|(_, k)| k.map.cap)
                .map(|(i, _)| i);
            best.map(|i| p.kept.swap_remove(i).map)
        };
        let map = match reused {
            Some(m) => m,
            None => Mapping::new(cap)?,
        };
        Ok(Self {
            map,
            len,
            filled: 0,
        })
    }

    /// Appends `data` after what [`push`](Self::push) appended before; false (and nothing
    /// appended) when it would not fit in the length.
    pub fn push(&mut self, data: &[u8]) -> bool {
        let Some(end) = self
            .filled
            .checked_add(data.len())
            .filter(|&e| e <= self.len)
        else {
            return false;
        };
        let start = self.filled;
        self[start..end].copy_from_slice(data);
        self.filled = end;
        true
    }

    /// The bytes appended so far.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// The bytes after those appended, up to the length, for a writer to fill in place
    /// ([`advance`](Self::advance) then counts them as appended).
    pub(crate) fn spare_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        let filled = self.filled;
        let spare = &mut self.deref_mut()[filled..];
        // SAFETY: the same memory, borrowed from `self` exclusively, and any byte is a valid
        // `MaybeUninit<u8>`. The mapping's bytes are all initialized (zero or earlier data);
        // the only user, `BodyWriter`, hands this view to writers that write initialized bytes.
        unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), spare.len()) }
    }

    /// Counts the next `n` bytes, written through [`spare_mut`](Self::spare_mut), as appended.
    ///
    /// # Safety
    /// Those `n` bytes were written, and `n` is at most the spare length.
    pub(crate) unsafe fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.len - self.filled);
        self.filled += n;
    }

    /// Makes the first `filled` bytes (at most the length) a [`Bytes`]; the mapping returns to
    /// the pool when the last reference to them is dropped.
    pub fn freeze(self, filled: usize) -> Bytes {
        let len = filled.min(self.len);
        Bytes::from_owner(Frozen { map: self.map, len })
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping holds `cap >= len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.map.ptr.cast::<u8>(), self.len) }
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; the exclusive borrow makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.map.ptr.cast::<u8>(), self.len) }
    }
}

/// The owner of a frozen buffer: gives its mapping back to the pool when dropped.
struct Frozen {
    map: Mapping,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the mapping holds `cap >= len` bytes, no longer written, while `self` lives.
        unsafe { std::slice::from_raw_parts(self.map.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        give_back(std::mem::replace(&mut self.map, Mapping::NONE));
    }
}

/// Unmaps every kept mapping now (a worker does it once it is idle, so that its resident size
/// drops back whatever its largest body was).
pub fn clear() {
    let kept = std::mem::take(&mut pool().kept);
    drop(kept);
}

fn give_back(map: Mapping) {
    let mut p = pool();
    let kept: usize = p.kept.iter().map(|k| k.map.cap).sum();
    if p.kept.len() >= MAX_POOLED || kept + map.cap > MAX_POOLED_BYTES {
        drop(p);
        return; // `map` is unmapped as it drops, after the lock.
    }
    if p.sweeper == Sweeper::None {
        start_sweeper(&mut p);
    }
    let at = Instant::now();
    let freed = p.sweeper == Sweeper::Failed;
    // With no sweeper, stale mappings go here, as a mapping comes back.
    let stale = if freed {
        advise_free(&map);
        p.sweep(at)
    } else {
        Vec::new()
    };
    p.kept.push(Kept { at, map, freed });
    let wake = match p.sweeper {
        Sweeper::Idle => true,
        Sweeper::Until(d) => d > at + FREE_AFTER,
        Sweeper::None | Sweeper::Running | Sweeper::Failed => false,
    };
    if wake {
        p.sweeper = Sweeper::Running;
        SWEEP.notify_one();
    }
    drop(p);
    drop(stale);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The pool to one test at a time (the tests look at what it keeps).
    pub(crate) fn exclusive() -> std::sync::MutexGuard<'static, ()> {
        static ONE: Mutex<()> = Mutex::new(());
        ONE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn a_dropped_buffer_is_reused_and_sizes_are_kept_apart() {
        let _pool = exclusive();
        clear();
        let mut b = PooledBuf::take(3 << 20).unwrap();
        b.fill(9);
        let addr = b.as_ptr() as usize;
        let frozen = b.freeze(1 << 20);
        assert_eq!(frozen.len(), 1 << 20);
        assert!(frozen.iter().all(|&x| x == 9));
        let slice = frozen.slice(10..20);
        drop(frozen);
        // Still referenced by the slice: not back in the pool yet.
        let other = PooledBuf::take(3 << 20).unwrap();
        assert_ne!(other.as_ptr() as usize, addr);
        drop((slice, other));
        // Back now (an unfrozen buffer is simply unmapped), and taken again for a body of a
        // near size.
        let again = PooledBuf::take(4 << 20).unwrap();
        assert_eq!(again.as_ptr() as usize, addr);
        assert_eq!(again.len(), 4 << 20);
        // Appending stops at the length.
        let mut p = PooledBuf::take(5).unwrap();
        assert!(p.push(b"abc") && p.push(b"de"));
        assert!(!p.push(b"f"));
        assert_eq!(p.filled(), 5);
        assert_eq!(&p.freeze(5)[..], b"abcde");
        // A frozen buffer dropped is kept; cleared, nothing is.
        drop(again);
        drop(PooledBuf::take(1 << 20).unwrap().freeze(0));
        assert!(!pool().kept.is_empty());
        clear();
        assert!(pool().kept.is_empty());
        // A much smaller body does not take a huge mapping.
        let small = PooledBuf::take(1).unwrap();
        assert!(small.map.cap <= STEP);
    }

    #[test]
    fn kept_pages_are_advised_free_only_after_an_idle_spell() {
        let _pool = exclusive();
        clear();
        let mut b = PooledBuf::take(2 << 20).unwrap();
        b.fill(3);
        let addr = b.as_ptr() as usize;
        let returned = Instant::now();
        drop(b.freeze(2 << 20));
        {
            let p = pool();
            assert_eq!(p.kept.len(), 1);
            // Not advised at once (unless this thread was held up past the idle spell).
            if returned.elapsed() < FREE_AFTER {
                assert!(!p.kept[0].freed, "advised as it came back");
            }
        }
        // The sweeper advises it once it has been unused for `FREE_AFTER`, with no pool call.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pool().kept.first().is_some_and(|k| k.freed) {
            assert!(Instant::now() < deadline, "never advised");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(returned.elapsed() >= FREE_AFTER);
        // Still reused, and usable.
        let mut again = PooledBuf::take(2 << 20).unwrap();
        assert_eq!(again.as_ptr() as usize, addr);
        again.fill(4);
        assert!(again.iter().all(|&x| x == 4));
        let returned = Instant::now();
        drop(again.freeze(1));
        let freed = pool().kept[0].freed;
        if returned.elapsed() < FREE_AFTER {
            assert!(!freed, "a reused mapping comes back unadvised");
        }
        clear();
    }
}
