//! A Unix stream socket for async I/O that does not wake its reactor each time the peer reads.
//!
//! Tokio registers a socket with epoll for reading and writing at once (edge-triggered). On a
//! Unix stream socket the kernel reports "writable" every time the peer takes data off it:
//! freeing what the peer read calls the writer's `sk_write_space`, which wakes every epoll
//! instance that watches the socket for `EPOLLOUT`, whether or not anyone is waiting to write.
//! So each answer a host reads wakes the worker's thread that sleeps in `epoll_wait`, to find
//! nothing to do, and each request a worker reads wakes the host's reactor thread alike: one
//! needless thread wake-up (a pair of context switches, dear on a VM) per message and side.
//! TCP does not do this (it reports space only to a writer that ran out of it).
//!
//! [`QuietUnixStream`] registers the socket for reading only. A write goes straight to the
//! socket; only when the socket's buffer is full (`EAGAIN`) does it register a second
//! descriptor for the same socket (a `dup`) for writability, wait on that, and drop it again
//! once a write goes through. Small messages never register for writing at all.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connected Unix stream socket registered with the current tokio reactor for reading only;
/// see the [module docs](self). Implements tokio's `AsyncRead` and `AsyncWrite`.
#[derive(Debug)]
pub struct QuietUnixStream {
    /// A second descriptor for the socket, registered for writability while a write waits for
    /// room. Declared first, so that it is deregistered before the socket's own descriptor.
    write: Option<AsyncFd<OwnedFd>>,
    read: AsyncFd<UnixStream>,
}

impl QuietUnixStream {
    /// Takes a connected socket, sets it non-blocking and registers it with the reactor of
    /// the current tokio runtime (there must be one, with I/O enabled) for reading.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            write: None,
            read: register(stream, Interest::READABLE)?,
        })
    }

    /// Takes over a tokio `UnixStream` (which is deregistered from its reactor first).
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Self::new(stream.into_std()?)
    }

    /// The socket.
    pub fn get_ref(&self) -> &UnixStream {
        self.read.get_ref()
    }

    /// Tries `write` until it goes through, waiting for room (through a writability
    /// registration made for the wait) whenever the socket's buffer is full.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match write(self.read.get_ref()) {
                Ok(n) => {
                    // Room again: stop watching for it, or every read by the peer would wake
                    // the reactor once more.
                    self.write = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let waiter = match &mut self.write {
                        Some(w) => w,
                        // Registered after the write failed: epoll reports a socket that
                        // became writable in between at once, so no wake-up is lost.
                        None => self.write.insert(register(
                            OwnedFd::from(self.read.get_ref().try_clone()?),
                            Interest::WRITABLE,
                        )?),
                    };
                    let mut guard = ready!(waiter.poll_write_ready(cx))?;
                    // Try again; if the buffer is still full, the next poll waits for the
                    // next report of room.
                    guard.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// `fd` registered with the current reactor for `interest`.
fn register<T: std::os::fd::AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` is a `UnixStream` or an `OwnedFd`, which owns its descriptor: it stays open,
    // and `as_raw_fd` keeps returning it, for as long as the `AsyncFd` holds it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

impl AsFd for QuietUnixStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.get_ref().as_fd()
    }
}

impl AsyncRead for QuietUnixStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.read.poll_read_ready(cx))?;
            // Read straight into the buffer's spare room, initialized or not: hyper hands
            // over its whole spare capacity (up to hundreds of KiB while a large body is
            // read), and zeroing it before each read cost as much as the read's own copy.
            // SAFETY: only bytes `read` wrote are marked initialized (`assume_init(n)`), and
            // nothing is read out of the unfilled part.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            match guard.try_io(|s| read_uninit(s.get_ref(), unfilled)) {
                Ok(Ok(n)) => {
                    // A read that did not fill the room emptied the socket (a stream socket's
                    // read takes all that is queued, up to the room). Forget the readiness
                    // now, as tokio's own sockets do: the next read then waits for epoll's
                    // next report instead of trying first and getting `EAGAIN`, one system
                    // call saved per message. Data that arrives meanwhile is reported anew
                    // (edge-triggered), and a report newer than this read is not cleared.
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    // SAFETY: `read` wrote the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Nothing to read after all: readiness was cleared, wait for the next.
                Err(_would_block) => {}
            }
        }
    }
}

/// `read(2)` from `s` into `dst`, which need not be initialized: the bytes read.
fn read_uninit(s: &UnixStream, dst: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `dst` is valid for writes of `dst.len()` bytes for the length of the call, and
    // `read` writes at most that many.
    let n = unsafe { libc::read(s.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl AsyncWrite for QuietUnixStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut s| Write::write(&mut s, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut s| Write::write_vectored(&mut s, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.read.get_ref().shutdown(Shutdown::Write) {
            // The peer already went away: nothing left to shut.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (QuietUnixStream, QuietUnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            QuietUnixStream::new(a).unwrap(),
            QuietUnixStream::new(b).unwrap(),
        )
    }

    #[tokio::test]
    async fn messages_cross_both_ways_and_end_with_a_shutdown() {
        let (mut a, mut b) = pair();
        a.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        b.write_all_buf(&mut &b"pong"[..]).await.unwrap();
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        a.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(b.read_to_end(&mut rest).await.unwrap(), 0, "end of file");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_the_reader() {
        // 16 MiB through buffers of a few hundred KiB: the writer must wait for room many
        // times, and each wait must be woken by the reader's progress.
        let (mut a, mut b) = pair();
        let data: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            assert!(a.write.is_none(), "no writability registration is left");
            a.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == data, "the bytes arrive whole and in order");
    }

    #[tokio::test]
    async fn a_read_fills_uninitialized_room_and_marks_only_what_it_read() {
        // hyper reads into the spare capacity of its buffer, never initialized.
        let (mut a, mut b) = pair();
        a.write_all(b"twelve bytes").await.unwrap();
        let mut room = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let mut buf = ReadBuf::uninit(&mut room);
        std::future::poll_fn(|cx| Pin::new(&mut b).poll_read(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(buf.filled(), b"twelve bytes");
        assert_eq!(buf.initialized().len(), 12, "the rest stays uninitialized");
        assert_eq!(buf.remaining(), 52);
    }

    #[tokio::test]
    async fn after_a_read_that_emptied_the_socket_new_data_still_wakes_the_reader() {
        let (mut a, mut b) = pair();
        let mut buf = [0u8; 64];
        a.write_all(b"one").await.unwrap();
        // A short read: the readiness it found is forgotten.
        assert_eq!(b.read(&mut buf).await.unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        // The next read waits (it is pending, with its waker registered) until data comes.
        let mut read = std::pin::pin!(b.read(&mut buf));
        let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "nothing was sent yet: {first:?}");
        a.write_all(b"two").await.unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), read)
            .await
            .expect("the data sent woke the pending read");
        assert_eq!(n.unwrap(), 3);
        assert_eq!(&buf[..3], b"two");
    }

    #[tokio::test]
    async fn a_read_that_fills_its_room_leaves_the_rest_readable() {
        // A full read may leave data queued: its readiness must stay, or the rest would wait
        // for data that never comes.
        let (mut a, mut b) = pair();
        a.write_all(b"twelve bytes").await.unwrap();
        let mut got = Vec::new();
        let mut room = [0u8; 4];
        for _ in 0..3 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), b.read(&mut room))
                .await
                .expect("the queued bytes are read without new data")
                .unwrap();
            assert_eq!(n, 4);
            got.extend_from_slice(&room);
        }
        assert_eq!(got, b"twelve bytes");
    }

    #[tokio::test]
    async fn vectored_writes_send_every_slice() {
        let (mut a, mut b) = pair();
        let bufs = [IoSlice::new(b"head "), IoSlice::new(b"body")];
        let n = std::future::poll_fn(|cx| Pin::new(&mut a).poll_write_vectored(cx, &bufs))
            .await
            .unwrap();
        assert_eq!(n, 9);
        let mut buf = [0u8; 9];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"head body");
    }

    /// The event masks the epoll instances of this process hold for descriptor `fd`
    /// (`/proc/self/fdinfo` of each `[eventpoll]` descriptor lists its watches; the reactor
    /// has two descriptors for its one instance, so every watch shows twice), deduplicated.
    fn epoll_masks(fd: i32) -> Vec<u32> {
        let mut masks = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().contains("eventpoll"));
            if !is_epoll {
                continue;
            }
            let name = entry.file_name();
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", name.to_string_lossy()))
                    .unwrap_or_default();
            for line in info.lines() {
                let mut words = line.split_whitespace();
                if words.next() == Some("tfd:")
                    && words.next().and_then(|t| t.parse::<i32>().ok()) == Some(fd)
                    && words.next() == Some("events:")
                {
                    masks.push(u32::from_str_radix(words.next().unwrap(), 16).unwrap());
                }
            }
        }
        masks.dedup();
        masks
    }

    /// `s` moved to a descriptor number of at least `min`, which no other test uses (tests
    /// run in parallel, each runtime with an epoll instance of its own).
    fn renumbered(s: UnixStream, min: i32) -> UnixStream {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1), which we then own.
        let fd = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        assert!(fd >= min);
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        unsafe { UnixStream::from_raw_fd(fd) }
    }

    #[tokio::test]
    async fn the_socket_is_watched_for_reading_only() {
        use std::os::fd::AsRawFd;
        let (a, _b) = UnixStream::pair().unwrap();
        let a = QuietUnixStream::new(renumbered(a, 900)).unwrap();
        let masks = epoll_masks(a.as_fd().as_raw_fd());
        assert_eq!(masks.len(), 1, "one watch: {masks:x?}");
        assert_ne!(masks[0] & libc::EPOLLIN as u32, 0, "{:x}", masks[0]);
        assert_eq!(
            masks[0] & libc::EPOLLOUT as u32,
            0,
            "no EPOLLOUT, so the peer's reads wake nobody: {:x}",
            masks[0]
        );
        // A plain tokio socket is watched for both, which is what this type avoids.
        let (c, _d) = UnixStream::pair().unwrap();
        let c = renumbered(c, 950);
        c.set_nonblocking(true).unwrap();
        let c = tokio::net::UnixStream::from_std(c).unwrap();
        let masks = epoll_masks(c.as_fd().as_raw_fd());
        assert_eq!(masks.len(), 1, "one watch: {masks:x?}");
        assert_ne!(masks[0] & libc::EPOLLOUT as u32, 0, "{:x}", masks[0]);
    }

    #[tokio::test]
    async fn a_closed_peer_reads_as_end_of_file_and_fails_writes() {
        let (mut a, b) = pair();
        drop(b);
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).await.unwrap(), 0);
        let e = a.write_all(b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    }
}
