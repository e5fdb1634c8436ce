//! File-descriptor hand-over: adopting an inherited listening socket, and pidfds.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The kind of socket behind an inherited file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `AF_UNIX`.
    Unix,
    /// `AF_INET` or `AF_INET6`.
    Tcp,
}

/// Takes ownership of the inherited listening socket `fd` after checking that it is an open
/// socket of the expected family, and marks it close-on-exec so that processes the plugin
/// spawns do not inherit it.
///
/// The caller promises that nothing else in the process owns `fd` (it was handed over by
/// number, e.g. in `CJM_LISTEN_FD`).
pub fn adopt_listener_fd(fd: RawFd, kind: SocketKind) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is negative"),
        ));
    }
    // SAFETY: fstat only writes into the zeroed stat buffer we own; an invalid fd yields EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("file descriptor {fd} is not open: {e}"),
        ));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is not a socket"),
        ));
    }
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is large enough for any address and `len` says so.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let family = i32::from(addr.ss_family);
    let ok = match kind {
        SocketKind::Unix => family == libc::AF_UNIX,
        SocketKind::Tcp => family == libc::AF_INET || family == libc::AF_INET6,
    };
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is a socket of another family than {kind:?}"),
        ));
    }
    // SAFETY: fcntl on a checked, open descriptor; F_SETFD only changes the close-on-exec flag.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (fstat succeeded), is a socket, and was handed to this
    // process to own (the caller's promise): nothing else refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd for `pid` (Linux 5.3+): it becomes readable once the process has exited.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pidfd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The send buffer both ends of a calls-socket connection ask for: 1 MiB (the kernel's default
/// is about 208 KiB). The bench's 8 MiB echo went from 534–600 to 613–684 MB/s with it (four
/// alternated runs); a send buffer holds only what is queued, so an idle connection costs
/// nothing more.
pub const CALLS_SEND_BUFFER: usize = 1 << 20;

/// Asks for a send buffer of `bytes` on the socket `fd` (`SO_SNDBUF`). The kernel doubles the
/// figure for its bookkeeping and caps it at `net.core.wmem_max`, so the buffer got may be
/// smaller; a larger one lets a big body cross a Unix socket in fewer hand-offs between writer
/// and reader.
pub fn set_send_buffer(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&v`, which lives across the
    // call; a bad fd or option yields an error, not undefined behaviour.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn only_a_listening_socket_of_the_right_family_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let fd = OwnedFd::from(l).into_raw_fd();
        let err = adopt_listener_fd(fd, SocketKind::Tcp).unwrap_err();
        assert!(err.to_string().contains("another family"), "{err}");
        let owned = adopt_listener_fd(fd, SocketKind::Unix).unwrap();
        drop(owned);
        assert!(adopt_listener_fd(fd, SocketKind::Unix).is_err());
        assert!(adopt_listener_fd(-1, SocketKind::Unix).is_err());
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let err = adopt_listener_fd(std::os::fd::AsRawFd::as_raw_fd(&file), SocketKind::Unix)
            .unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }

    #[test]
    fn pidfd_of_self_opens() {
        assert!(pidfd_open(std::process::id()).is_ok());
        assert!(pidfd_open(0).is_err());
    }

    /// `SO_SNDBUF` of `fd` as the kernel reports it.
    fn send_buffer(fd: std::os::fd::BorrowedFd<'_>) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        v
    }

    #[test]
    fn a_calls_connection_gets_a_larger_send_buffer_and_a_file_an_error() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let before = send_buffer(a.as_fd());
        set_send_buffer(a.as_fd(), CALLS_SEND_BUFFER).unwrap();
        let after = send_buffer(a.as_fd());
        assert!(after > before, "{before} -> {after}");
        let f = tempfile::tempfile().unwrap();
        let e = set_send_buffer(f.as_fd(), CALLS_SEND_BUFFER).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTSOCK), "{e}");
    }
}
