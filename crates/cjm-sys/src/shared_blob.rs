//! Blobs as [`Bytes`] backed by sealed memfds, and the way back from such a [`Bytes`] to its
//! descriptor.
//!
//! A [`Bytes`] made here ([`BlobBuf::freeze`], [`share`], [`from_memfd`]) reads a read-only
//! mapping of a sealed memfd. While it (or any slice of it) lives, the mapping is listed in a
//! process-wide table keyed by address, so [`memfd_of`] can tell, for any [`Bytes`], whether its
//! bytes lie in such a mapping, and which descriptor and offset they are. That is how a blob
//! travels without a copy: a plugin that answers with the blob it was given, or a slice of it,
//! sends the descriptor back, never the bytes.
//!
//! The table is consulted only with a [`Bytes`] in hand, which keeps its mapping (and so its
//! entry and descriptor) alive: an entry leaves the table before its mapping is unmapped.

use std::collections::BTreeMap;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;

use bytes::Bytes;

use crate::blob::{self, MappedBlob};

/// Mapping start address → (length, descriptor) of every live memfd-backed [`Bytes`].
static MAPPINGS: Mutex<BTreeMap<usize, (usize, RawFd)>> = Mutex::new(BTreeMap::new());

fn table() -> std::sync::MutexGuard<'static, BTreeMap<usize, (usize, RawFd)>> {
    match MAPPINGS.lock() {
        Ok(g) => g,
        // The table holds plain numbers: a panic elsewhere cannot leave it inconsistent.
        Err(p) => p.into_inner(),
    }
}

/// The owner behind a memfd-backed [`Bytes`]: listed in the table for as long as it lives.
struct Listed(MappedBlob);

impl AsRef<[u8]> for Listed {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        // Unlisted first; the mapping is unmapped right after, when the field drops.
        table().remove(&(self.0.as_bytes().as_ptr() as usize));
    }
}

/// A [`Bytes`] over `mapped`, listed so that [`memfd_of`] finds it (empty blobs are not listed:
/// they have no mapping and travel inline).
pub fn into_bytes(mapped: MappedBlob) -> Bytes {
    if mapped.is_empty() {
        return Bytes::new();
    }
    let key = mapped.as_bytes().as_ptr() as usize;
    table().insert(key, (mapped.len(), mapped.fd().as_raw_fd()));
    Bytes::from_owner(Listed(mapped))
}

/// Maps a received descriptor (refused unless it is a memfd carrying every seal of
/// [`blob::BLOB_SEALS`]) as a listed [`Bytes`].
pub fn from_memfd(fd: OwnedFd) -> io::Result<Bytes> {
    MappedBlob::map(fd).map(into_bytes)
}

/// Copies `data` into a fresh sealed memfd (one pass) and maps it as a listed [`Bytes`].
pub fn share(data: &[u8]) -> io::Result<Bytes> {
    from_memfd(blob::sealed_memfd(c"cjm-blob", data)?)
}

/// Moves every blob of at least `min` bytes that does not already lie in a memfd into a fresh
/// sealed one (one copy each). A blob that cannot be moved (no memory for a memfd) stays as it
/// is and travels in the body.
pub fn share_large(blobs: &mut [Bytes], min: usize) {
    for b in blobs.iter_mut() {
        if b.len() >= min && memfd_of(b).is_none() {
            match share(b) {
                Ok(shared) => *b = shared,
                Err(e) => tracing::debug!("a {}-byte blob stays in the body: {e}", b.len()),
            }
        }
    }
}

/// The memfd behind `b` and the offset of `b`'s first byte in it, when `b` lies in a listed
/// mapping. The descriptor stays open as long as `b` is borrowed.
pub fn memfd_of(b: &Bytes) -> Option<(BorrowedFd<'_>, u64)> {
    if b.is_empty() {
        return None;
    }
    let addr = b.as_ptr() as usize;
    let t = table();
    let (&start, &(len, fd)) = t.range(..=addr).next_back()?;
    if addr + b.len() > start + len {
        return None;
    }
    // SAFETY: `b` lies inside the listed mapping, so `b` holds a reference to the `Listed`
    // owner of that mapping, which owns `fd`: the descriptor stays open while `b` is borrowed,
    // which the returned lifetime enforces.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    Some((fd, (addr - start) as u64))
}

/// A blob being written in place: a memfd mapped read-write. [`BlobBuf::freeze`] seals it and
/// gives it back as a listed [`Bytes`], without copying it, so a plugin (or a host) that builds
/// its payload here sends it with no copy at all.
#[derive(Debug)]
pub struct BlobBuf {
    ptr: *mut libc::c_void,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the buffer is a private read-write mapping owned by this value alone; it moves
// between threads like a `Vec<u8>` does.
unsafe impl Send for BlobBuf {}
// SAFETY: shared access only reads (`Deref`); writes need `&mut`.
unsafe impl Sync for BlobBuf {}

impl BlobBuf {
    /// A zero-filled buffer of `len` bytes.
    pub fn new(len: usize) -> io::Result<Self> {
        let file = blob::sized_memfd(c"cjm-blob", len)?;
        let fd = OwnedFd::from(file);
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len,
                fd,
            });
        }
        // SAFETY: a fresh shared read-write mapping of the whole file, which is exactly `len`
        // bytes long and is not shrunk while mapped (only this value can, and it does not).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len, fd })
    }

    /// Seals the blob (its bytes can never change again) and maps it read-only as a listed
    /// [`Bytes`]; the pages written stay where they are.
    pub fn freeze(mut self) -> io::Result<Bytes> {
        // A writable shared mapping would make the write seal fail: unmap it first.
        self.unmap();
        let fd = self.fd.try_clone()?;
        blob::seal(fd.as_fd())?;
        from_memfd(fd)
    }

    fn unmap(&mut self) {
        if self.len > 0 && !self.ptr.is_null() {
            // SAFETY: `ptr`/`len` is the mapping made in `new`, unmapped once: `ptr` is
            // cleared right after.
            unsafe { libc::munmap(self.ptr, self.len) };
            self.ptr = std::ptr::null_mut();
        }
    }
}

impl Deref for BlobBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: `ptr` maps `len` bytes, readable and writable, for as long as `self` lives;
        // the shared borrow excludes writes through `self` meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl DerefMut for BlobBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: as in `deref`; the exclusive borrow makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for BlobBuf {
    fn drop(&mut self) {
        self.unmap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_blob_is_found_with_its_offset_and_forgotten_when_dropped() {
        let mut buf = BlobBuf::new(1 << 20).unwrap();
        buf[0] = 1;
        buf[(1 << 20) - 1] = 2;
        let b = buf.freeze().unwrap();
        assert_eq!((b[0], b[(1 << 20) - 1], b.len()), (1, 2, 1 << 20));
        let (_, off) = memfd_of(&b).unwrap();
        assert_eq!(off, 0);
        let tail = b.slice(4096..8192);
        let (fd, off) = memfd_of(&tail).unwrap();
        assert_eq!(off, 4096);
        // The descriptor is the sealed memfd itself: mapping a duplicate gives the same bytes.
        let again = from_memfd(fd.try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(again, b);
        let addr = b.as_ptr() as usize;
        drop((b, tail, again));
        assert!(
            table().get(&addr).is_none(),
            "the entry left with its mapping"
        );
    }

    #[test]
    fn heap_and_empty_bytes_are_not_memfds() {
        assert!(memfd_of(&Bytes::from(vec![1u8; 4096])).is_none());
        assert!(memfd_of(&Bytes::new()).is_none());
        assert!(memfd_of(&BlobBuf::new(0).unwrap().freeze().unwrap()).is_none());
    }

    #[test]
    fn a_shared_copy_holds_the_same_bytes_and_cannot_be_written() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let b = share(&data).unwrap();
        assert_eq!(&b[..], &data[..]);
        let (fd, _) = memfd_of(&b).unwrap();
        let mut f = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        assert!(
            std::io::Write::write_all(&mut f, b"x").is_err(),
            "sealed against writes"
        );
    }
}
