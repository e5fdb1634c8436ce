//! The blob channel: a `SOCK_SEQPACKET` socket pair between a host and one native worker that
//! carries sealed memfds beside the HTTP connections (PROTOCOL.md, "Blobs as memfds").
//!
//! HTTP bodies cannot carry descriptors, so a call's memfds travel as one message on this
//! channel, tagged with a token that the call's frame header names. The sender sends the
//! message *before* it writes the HTTP message that names it; a message on a local socket is in
//! the receiver's queue when `sendmsg` returns, so by the time the receiver reads the header the
//! descriptors are already waiting, and [`BlobChannel::take`] never has to wait for them: it
//! drains what is queued, keeps the messages of other calls for their own `take`, and fails at
//! once when the token is not there.
//!
//! Every operation is non-blocking and synchronous, so nothing here can be left half-done by a
//! dropped future. A message nobody takes (its call was abandoned between the two sends) is
//! closed after [`STALE_AFTER`], or when keeping it would hold more than
//! [`MAX_WAITING_FDS`] descriptors (so a peer that floods the channel cannot exhaust this
//! process's descriptors).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::blob::{recv_with_fds_flags, send_with_fds_flags, MAX_FDS_PER_MESSAGE};
use crate::shared_blob;

/// How long descriptors nobody takes are kept before they are closed.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Most descriptors kept in messages waiting for their `take`; beyond it the oldest messages
/// (the lowest tokens: a sender numbers its messages in order) are closed.
pub const MAX_WAITING_FDS: usize = 256;

/// One end of a blob channel.
#[derive(Debug)]
pub struct BlobChannel {
    sock: OwnedFd,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, (Instant, Vec<OwnedFd>)>>,
}

impl BlobChannel {
    fn new(sock: OwnedFd) -> Self {
        Self {
            sock,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// A new channel: this end, and the peer's end (close-on-exec; a spawn that hands it to a
    /// child clears that in the child only).
    pub fn pair() -> io::Result<(Self, OwnedFd)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: socketpair writes two descriptors into the array we own.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Self::new(a), b))
    }

    /// Adopts an inherited end by number, after checking that it is a Unix `SOCK_SEQPACKET`
    /// socket; marks it close-on-exec so that the plugin's own children do not inherit it.
    pub fn adopt(fd: RawFd) -> io::Result<Self> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if fd < 3 {
            return Err(invalid(format!("descriptor {fd} is a standard stream")));
        }
        let int_opt = |opt: libc::c_int| -> io::Result<libc::c_int> {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("descriptor {fd} is not a socket: {e}"),
                ));
            }
            Ok(v)
        };
        let (ty, domain) = (int_opt(libc::SO_TYPE)?, int_opt(libc::SO_DOMAIN)?);
        if ty != libc::SOCK_SEQPACKET || domain != libc::AF_UNIX {
            return Err(invalid(format!(
                "descriptor {fd} is not a Unix SOCK_SEQPACKET socket (type {ty}, domain {domain})"
            )));
        }
        // SAFETY: F_SETFD with an int touches no memory.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was handed to this process to own (checked above to be open
        // and a socket); nothing else in the process uses it.
        Ok(Self::new(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `fds` (1 to [`MAX_FDS_PER_MESSAGE`]) as one message; returns its token. Never
    /// blocks: a full queue is an error (`WouldBlock`), and the caller sends the bytes instead.
    pub fn send(&self, fds: &[BorrowedFd<'_>]) -> io::Result<u64> {
        if fds.is_empty() || fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a blob message carries 1 to {MAX_FDS_PER_MESSAGE} descriptors, not {}",
                    fds.len()
                ),
            ));
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        send_with_fds_flags(
            self.sock.as_fd(),
            &token.to_le_bytes(),
            fds,
            libc::MSG_DONTWAIT,
        )?;
        Ok(token)
    }

    /// The descriptors of the message `token`, which the peer sent before it named the token.
    pub fn take(&self, token: u64) -> io::Result<Vec<OwnedFd>> {
        let mut waiting = match self.waiting.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        waiting.retain(|_, (at, _)| now.duration_since(*at) < STALE_AFTER);
        if let Some((_, fds)) = waiting.remove(&token) {
            return Ok(fds);
        }
        let mut buf = [0u8; 16];
        loop {
            match recv_with_fds_flags(self.sock.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the peer closed the blob channel",
                    ))
                }
                Ok((8, fds)) => {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&buf[..8]);
                    let t = u64::from_le_bytes(t);
                    if t == token {
                        return Ok(fds);
                    }
                    let mut held: usize = waiting.values().map(|(_, f)| f.len()).sum();
                    while held + fds.len() > MAX_WAITING_FDS {
                        let oldest = waiting.keys().min().copied();
                        match oldest.and_then(|k| waiting.remove(&k)) {
                            Some((_, closed)) => held -= closed.len(),
                            None => break,
                        }
                    }
                    waiting.insert(t, (now, fds));
                }
                // Not a message of this protocol: its descriptors are closed as `fds` drops.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the descriptors of blob message {token} were never sent"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the memfds behind those of `blobs` that lie in one ([`shared_blob::memfd_of`];
    /// each memfd once, at most [`MAX_FDS_PER_MESSAGE`]) as one message. Returns its token and,
    /// per blob, the index of its descriptor in the message and its offset there (`None`: the
    /// blob travels in the body); `Ok(None)` when no blob lies in a memfd.
    #[allow(clippy::type_complexity)]
    pub fn send_blobs(
        &self,
        blobs: &[Bytes],
    ) -> io::Result<Option<(u64, Vec<Option<(usize, u64)>>)>> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let mut places = Vec::with_capacity(blobs.len());
        for b in blobs {
            let place = shared_blob::memfd_of(b).and_then(|(fd, offset)| {
                let i = match fds.iter().position(|f| f.as_raw_fd() == fd.as_raw_fd()) {
                    Some(i) => i,
                    None if fds.len() < MAX_FDS_PER_MESSAGE => {
                        fds.push(fd);
                        fds.len() - 1
                    }
                    None => return None,
                };
                Some((i, offset))
            });
            places.push(place);
        }
        if fds.is_empty() {
            return Ok(None);
        }
        Ok(Some((self.send(&fds)?, places)))
    }

    /// [`take`](Self::take), each descriptor checked and mapped ([`shared_blob::from_memfd`]).
    pub fn take_mapped(&self, token: u64) -> io::Result<Vec<Bytes>> {
        self.take(token)?
            .into_iter()
            .map(shared_blob::from_memfd)
            .collect()
    }

    /// How many received messages wait for their `take`.
    pub fn waiting(&self) -> usize {
        match self.waiting.lock() {
            Ok(g) => g.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    /// This end's descriptor number.
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::sealed_memfd;

    fn peer(end: OwnedFd) -> BlobChannel {
        BlobChannel::new(end)
    }

    #[test]
    fn messages_are_taken_by_token_in_any_order() {
        let (a, b) = BlobChannel::pair().unwrap();
        let b = peer(b);
        let m1 = sealed_memfd(c"t", b"one").unwrap();
        let m2 = sealed_memfd(c"t", b"two").unwrap();
        let t1 = a.send(&[m1.as_fd()]).unwrap();
        let t2 = a.send(&[m2.as_fd(), m1.as_fd()]).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(b.take(t2).unwrap().len(), 2);
        assert_eq!(b.waiting(), 1, "the first message waits for its take");
        assert_eq!(b.take(t1).unwrap().len(), 1);
        let e = b.take(99).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("99"), "{e}");
        // Both directions work on the same pair.
        let t = b.send(&[m2.as_fd()]).unwrap();
        assert_eq!(a.take(t).unwrap().len(), 1);
    }

    #[test]
    fn memfd_blobs_are_sent_once_each_and_others_stay_inline() {
        let (a, b) = BlobChannel::pair().unwrap();
        let b = peer(b);
        let shared = shared_blob::share(&[5u8; 10_000]).unwrap();
        let heap = Bytes::from(vec![1u8; 10]);
        assert!(a.send_blobs(std::slice::from_ref(&heap)).unwrap().is_none());
        let (token, places) = a
            .send_blobs(&[shared.slice(100..200), heap, shared.clone()])
            .unwrap()
            .unwrap();
        assert_eq!(places, vec![Some((0, 100)), None, Some((0, 0))]);
        let mapped = b.take_mapped(token).unwrap();
        assert_eq!(mapped, vec![shared]);
        // A descriptor that is not a sealed memfd is refused.
        let f = tempfile::tempfile().unwrap();
        let t = a.send(&[f.as_fd()]).unwrap();
        assert!(b.take_mapped(t).is_err());
    }

    #[test]
    fn a_flood_of_messages_nobody_takes_holds_a_bounded_number_of_descriptors() {
        let (a, b) = BlobChannel::pair().unwrap();
        let b = peer(b);
        let m = sealed_memfd(c"t", b"x").unwrap();
        let many = [m.as_fd(); MAX_FDS_PER_MESSAGE];
        let first = a.send(&many).unwrap();
        let mut last = first;
        for _ in 0..(MAX_WAITING_FDS / MAX_FDS_PER_MESSAGE + 4) {
            last = a.send(&many).unwrap();
        }
        // Taking the last drains the rest into the waiting list, which stays within bounds:
        // the oldest messages were closed.
        assert_eq!(b.take(last).unwrap().len(), MAX_FDS_PER_MESSAGE);
        assert_eq!(b.waiting(), MAX_WAITING_FDS / MAX_FDS_PER_MESSAGE);
        assert_eq!(b.take(first).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(b.take(last - 1).unwrap().len(), MAX_FDS_PER_MESSAGE);
    }

    #[test]
    fn a_closed_peer_and_bad_descriptors_are_errors() {
        let (a, b) = BlobChannel::pair().unwrap();
        drop(b);
        assert_eq!(a.take(1).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert!(a.send(&[]).is_err());
        let f = tempfile::tempfile().unwrap();
        let e = BlobChannel::adopt(f.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert!(BlobChannel::adopt(1).is_err());
    }
}
