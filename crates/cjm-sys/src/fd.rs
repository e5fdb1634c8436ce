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
}
