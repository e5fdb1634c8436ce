//! Large receive buffers that keep their pages between uses.
//!
//! A fresh 256 MiB buffer costs far more to fill than a warm one: every 4 KiB page faults and is
//! zeroed on first touch (on a small VM, about 1.9 GB/s against 11 GB/s for a copy into warm
//! pages). Bodies of a megabyte or more are therefore read into buffers taken from this pool;
//! when the last [`Bytes`] over one is dropped, its mapping comes back here and the next large
//! body is read into pages already there.
//!
//! Memory stays bounded: the pool keeps at most [`MAX_POOLED`] mappings and [`MAX_POOLED_BYTES`]
//! in all, drops those idle for more than [`IDLE_FOR`], and marks kept pages `MADV_FREE`, so the
//! kernel takes them back under memory pressure (a page it took reads as zero and faults again
//! on its next use; one it left costs nothing).

use std::io;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
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

static POOL: Mutex<Vec<(Instant, Mapping)>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<(Instant, Mapping)>> {
    match POOL.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
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
            let now = Instant::now();
            p.retain(|(at, _)| now.duration_since(*at) < IDLE_FOR);
            // The smallest kept mapping that fits and is not more than twice as large.
            let best = p
                .iter()
                .enumerate()
                .filter(|(_, (_, m))| m.cap >= cap && m.cap <= 2 * cap)
                .min_by_key(|(_, (_, m))| m.cap)
                .map(|(i, _)| i);
            best.map(|i| p.swap_remove(i).1)
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
    let kept = std::mem::take(&mut *pool());
    drop(kept);
}

fn give_back(map: Mapping) {
    // SAFETY: advice on a mapping we own; MADV_FREE only lets the kernel drop its pages.
    unsafe { libc::madvise(map.ptr, map.cap, libc::MADV_FREE) };
    let mut p = pool();
    let now = Instant::now();
    p.retain(|(at, _)| now.duration_since(*at) < IDLE_FOR);
    let kept: usize = p.iter().map(|(_, m)| m.cap).sum();
    if p.len() < MAX_POOLED && kept + map.cap <= MAX_POOLED_BYTES {
        p.push((now, map));
    }
    // Otherwise `map` is unmapped as it drops, after the lock (arguments drop after locals).
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
        assert!(!pool().is_empty());
        clear();
        assert!(pool().is_empty());
        // A much smaller body does not take a huge mapping.
        let small = PooledBuf::take(1).unwrap();
        assert!(small.map.cap <= STEP);
    }
}
