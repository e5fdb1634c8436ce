//! Zero-copy blobs: sealed `memfd`s, read through a read-only mapping, and passed between
//! processes with `SCM_RIGHTS` over a Unix socket.
//!
//! Rules (PROTOCOL.md, "Blobs as memfds"):
//! - The sender writes the whole blob, then seals it with `F_SEAL_SHRINK | F_SEAL_GROW |
//!   F_SEAL_WRITE | F_SEAL_SEAL` before it sends it: once sent, its bytes can never change.
//! - A receiver refuses a descriptor that is not a memfd sealed that way ([`MappedBlob::map`]
//!   checks), so a peer cannot change bytes under a reader's `&[u8]`.
//! - Every descriptor is close-on-exec on both sides (`MFD_CLOEXEC`, `MSG_CMSG_CLOEXEC`), and
//!   is owned ([`OwnedFd`]) from the moment it exists, so each is closed exactly once: a
//!   received message's descriptors are owned even when the message is then refused.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The seals a blob carries before it leaves its writer.
pub const BLOB_SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;

/// Most descriptors one message carries.
pub const MAX_FDS_PER_MESSAGE: usize = 16;

fn err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A new memfd that allows sealing (named `name` in `/proc/<pid>/fd`, for debugging), `len`
/// zero bytes long.
pub fn sized_memfd(name: &CStr, len: usize) -> io::Result<std::fs::File> {
    // SAFETY: `name` is a valid NUL-terminated string; the call only reads it.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(err("memfd_create"));
    }
    // SAFETY: `raw` was just returned by memfd_create and nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.set_len(len as u64)
        .map_err(|e| io::Error::new(e.kind(), format!("sizing a memfd to {len} bytes: {e}")))?;
    Ok(file)
}

/// Makes a sealed memfd holding `data` (named `name` in `/proc/<pid>/fd`, for debugging).
pub fn sealed_memfd(name: &CStr, data: &[u8]) -> io::Result<OwnedFd> {
    let mut file = sized_memfd(name, data.len())?;
    std::io::Write::write_all(&mut file, data)
        .map_err(|e| io::Error::new(e.kind(), format!("writing a memfd: {e}")))?;
    let fd = OwnedFd::from(file);
    seal(fd.as_fd())?;
    Ok(fd)
}

/// Applies [`BLOB_SEALS`] to a memfd the caller wrote (say through [`MappedBlob`]'s writer).
pub fn seal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we borrow; F_ADD_SEALS takes an int and touches no memory.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, BLOB_SEALS) } != 0 {
        return Err(err("sealing a memfd"));
    }
    Ok(())
}

/// A blob mapped read-only from a sealed memfd; its bytes live as long as it does.
#[derive(Debug)]
pub struct MappedBlob {
    ptr: *mut libc::c_void,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is read-only and sealed against writes and resizing, so sharing or moving
// it between threads cannot race with a change of its bytes.
unsafe impl Send for MappedBlob {}
// SAFETY: see above.
unsafe impl Sync for MappedBlob {}

impl MappedBlob {
    /// Maps `fd` after checking that it carries every seal of [`BLOB_SEALS`]; refuses anything
    /// else (an unsealed memfd, a file, a socket) with an error that says what was missing.
    pub fn map(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fcntl on a descriptor we own; F_GET_SEALS touches no memory.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(err("reading a blob's seals (is it a memfd?)"));
        }
        if seals & BLOB_SEALS != BLOB_SEALS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a blob's memfd is not sealed: seals {seals:#x}, required {BLOB_SEALS:#x}"),
            ));
        }
        // SAFETY: fstat writes only into the zeroed buffer we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(err("fstat of a blob"));
        }
        let len = usize::try_from(st.st_size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob size {}", st.st_size),
            )
        })?;
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len,
                _fd: fd,
            });
        }
        // SAFETY: a fresh read-only shared mapping of `len` bytes of a file of exactly that
        // size that can no longer shrink (sealed), so every byte stays backed.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err("mmap of a blob"));
        }
        Ok(Self { ptr, len, _fd: fd })
    }

    /// The blob's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes that are sealed against change, and the
        // mapping lives until `self` is dropped, which the borrow outlives not.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    /// The sealed memfd behind the mapping.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self._fd.as_fd()
    }

    /// The blob's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for MappedBlob {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Drop for MappedBlob {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` is the mapping made in `map`, unmapped once, here.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// Sends `data` (at least one byte) with `fds` attached over the Unix stream socket `sock`.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    send_with_fds_flags(sock, data, fds, 0)
}

/// [`send_with_fds`] with extra `sendmsg` flags (`MSG_DONTWAIT`).
pub(crate) fn send_with_fds_flags(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    if data.is_empty() || fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a descriptor message needs 1.. data bytes and at most {MAX_FDS_PER_MESSAGE} \
                 descriptors (got {} bytes, {} descriptors)",
                data.len(),
                fds.len()
            ),
        ));
    }
    let raw: Vec<libc::c_int> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let fd_bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cmsg_buf = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr is a valid "empty" header; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` bytes we own, enough for one header holding
        // `fd_bytes` of data (CMSG_SPACE); CMSG_FIRSTHDR is therefore non-null and in bounds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast(), raw.len());
        }
    }
    // SAFETY: `msg` points at live buffers (`iov` → `data`, control → `cmsg_buf`) for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | flags) };
    if n < 0 {
        return Err(err("sendmsg with descriptors"));
    }
    Ok(n as usize)
}

/// Receives into `buf` over the Unix stream socket `sock`, with the descriptors attached (at
/// most [`MAX_FDS_PER_MESSAGE`]; a message that carried more is refused, and what it carried
/// is closed). Returns the bytes read and the descriptors, owned.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_fds_flags(sock, buf, 0)
}

/// [`recv_with_fds`] with extra `recvmsg` flags (`MSG_DONTWAIT`).
pub(crate) fn recv_with_fds_flags(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe {
        libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * std::mem::size_of::<libc::c_int>()) as u32)
    } as usize;
    let mut cmsg_buf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is a valid empty header; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at live buffers we own for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
    if n < 0 {
        return Err(err("recvmsg with descriptors"));
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* walk stays inside them,
    // and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors
    // that are new in this process and owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = bytes / std::mem::size_of::<libc::c_int>();
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // `fds` drops here: what did arrive is closed.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message carried more than {MAX_FDS_PER_MESSAGE} descriptors"),
        ));
    }
    Ok((n as usize, fds))
}
