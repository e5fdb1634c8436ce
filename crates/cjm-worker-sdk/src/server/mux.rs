//! The multiplexed calls wire's server side (feature `calls_mux`; the framing is
//! `cjm_core::wire::mux`): one connection of the calls socket carries many `/execute` calls at
//! once. A task on the plugin runtime serves it: it reads frames, runs each call's handler
//! ([`calls::execute_read`], the same as HTTP's) beside the others, and writes the answers
//! that are ready, several in one system call.
//!
//! As on an HTTP connection of the calls socket, a new call's plugin side is polled in place
//! first, in the connection's task, and becomes a task of its own only if it has to wait: a
//! quick call costs no task and wakes no other thread. Plugin code that holds its thread in
//! that first poll would hold up every other call of the connection, so the connection's state
//! lives outside its task, and each in-place poll is a *spell* the watchdog (`watchdog.rs`)
//! can see: a spell that lasts a tick makes the watchdog start a new task that takes the
//! connection over. The held task hands its call's answer over when its poll returns, if it
//! ever does, and stops.
//!
//! A cancel frame drops its call's handler, which cancels the call as a closed HTTP connection
//! does. When the worker shuts down the connection stops reading, answers the calls it holds
//! and closes.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use cjm_core::wire::{content_types, mux};
use cjm_core::PluginError;
use futures::future::{AbortHandle, Abortable, Aborted, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use futures::{FutureExt, StreamExt};
use http::header::CONTENT_TYPE;
use http::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::calls;
use super::decode::{body_limit, call_tag, decode_call, too_large, BodyKind, Rejection};
use super::respond::error;
use super::state::State;
use super::stream::Body;
use super::watchdog::Rescuable;

/// Calls one connection runs at once; past it, it reads no more until one is answered.
const MAX_CALLS: usize = 4096;

/// Answer bytes waiting to be written past which the connection reads no more calls.
const MAX_UNWRITTEN: usize = 16 << 20;

/// How much room a read is given at the least.
const READ_ROOM: usize = 64 << 10;

/// The longest an in-place poll of a call's plugin side may take to count as quick
/// ([`Quick`]).
const QUICK: Duration = Duration::from_micros(100);

/// Slow in-place polls in a row after which a connection spawns its calls' plugin sides: more
/// than one, since a busy machine that takes the thread away in the middle of a quick poll makes
/// it look slow now and then.
const SLOW_IN_A_ROW: u32 = 3;

/// How long a connection spawns its calls' plugin sides once they have been slow.
const SPAWNING: Duration = Duration::from_secs(1);

/// Whether a connection's new calls are polled in place. The connection's task runs an in-place
/// poll to its end before it reads the next call, so calls of a plugin that computes would run
/// one after another there, not side by side on the plugin threads. So after
/// [`SLOW_IN_A_ROW`] polls longer than [`QUICK`] the connection's calls are tasks of their own
/// for [`SPAWNING`]; then it tries again. A quick plugin's calls stay in place.
#[derive(Debug, Default)]
struct Quick {
    slow: u32,
    spawning_until: Option<std::time::Instant>,
}

impl Quick {
    /// Whether a new call is polled in place.
    fn in_place(&mut self) -> calls::InPlace {
        match self.spawning_until {
            Some(until) if std::time::Instant::now() < until => calls::InPlace::Never,
            Some(_) => {
                self.spawning_until = None;
                calls::InPlace::Allowed
            }
            None => calls::InPlace::Allowed,
        }
    }

    /// An in-place poll that began at `began` has just ended.
    fn polled(&mut self, began: std::time::Instant) {
        let now = std::time::Instant::now();
        if now.saturating_duration_since(began) <= QUICK {
            self.slow = 0;
            return;
        }
        self.slow += 1;
        if self.slow >= SLOW_IN_A_ROW {
            self.slow = 0;
            self.spawning_until = Some(now + SPAWNING);
        }
    }
}

/// Serves one multiplexed connection whose preface has been read (`rest`: the bytes read past
/// it) until the host closes it, or, once `stop` is cancelled, until the calls it holds are
/// answered. Returns when the connection has ended, whichever task served it last.
pub(super) async fn serve<I>(io: I, rest: BytesMut, state: Arc<State>, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = state.max_json_body.max(state.max_frame_body);
    let mut conn = Conn {
        io,
        decoder: mux::Decoder::new(limit.saturating_add(512).min(u64::from(u32::MAX))),
        rbuf: rest,
        fresh: VecDeque::new(),
        calls: FuturesUnordered::new(),
        in_hand: 0,
        running: HashMap::new(),
        out: VecDeque::new(),
        unwritten: 0,
        reading: true,
        stop: Box::pin(stop.cancelled_owned()),
        quick: Quick::default(),
        state: Arc::clone(&state),
    };
    // The calls that came with the preface.
    if let Err(e) = conn.take_frames() {
        tracing::debug!("multiplexed calls connection ended: {e}");
        return;
    }
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
        spell: AtomicU64::new(0),
        waker: AtomicWaker::new(),
        ended: CancellationToken::new(),
        plugin_rt: state.plugin_rt.clone(),
    });
    let watched: Arc<dyn Rescuable> = Arc::clone(&shared) as Arc<dyn Rescuable>;
    state.watchdog.watch(Arc::downgrade(&watched));
    drop(watched);
    if shared.run(0).await == Served::TakenOver {
        // Another task serves the connection now; this one stays until it ends, so that the
        // calls socket's graceful stop waits for it.
        shared.ended.cancelled().await;
    }
}

type CallFuture = Abortable<BoxFuture<'static, (u64, Response<Body>)>>;

/// How a serving task stopped.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// The connection has ended.
    Ended,
    /// A newer task serves the connection.
    TakenOver,
}

/// A connection's state, shared by the task serving it and any task that took it over.
struct Shared<I> {
    conn: Mutex<Conn<I>>,
    /// The serving task's generation (high 32 bits) and the count of its in-place polls begun
    /// and ended (low 32 bits): odd while it polls a new call in place. Only the serving task
    /// counts; only the watchdog moves the generation on ([`Rescuable::rescue_if_held`]).
    spell: AtomicU64,
    /// The serving task, woken by a task taken over that hands its call's answer over.
    waker: AtomicWaker,
    /// Cancelled when the connection has ended.
    ended: CancellationToken,
    plugin_rt: tokio::runtime::Handle,
}

const LOW: u64 = u32::MAX as u64;

fn generation(spell: u64) -> u64 {
    spell >> 32
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Shared<I> {
    fn conn(&self) -> MutexGuard<'_, Conn<I>> {
        super::state::lock(&self.conn)
    }

    /// Counts one step (the start or the end of an in-place poll) for the serving task of
    /// generation `gen`; false if the connection was taken over from it.
    fn step(&self, gen: u64) -> bool {
        self.spell
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (generation(s) == gen).then(|| (s & !LOW) | (s.wrapping_add(1) & LOW))
            })
            .is_ok()
    }

    /// Serves the connection as generation `gen` until it ends or is taken over.
    async fn run(self: &Arc<Self>, gen: u64) -> Served {
        let served = std::future::poll_fn(|cx| self.poll_serve(gen, cx)).await;
        if let Err(e) = &served {
            tracing::debug!("multiplexed calls connection ended: {e}");
        }
        match served {
            Ok(Served::TakenOver) => Served::TakenOver,
            _ => {
                self.ended.cancel();
                Served::Ended
            }
        }
    }

    fn poll_serve(&self, gen: u64, cx: &mut Context<'_>) -> Poll<std::io::Result<Served>> {
        self.waker.register(cx.waker());
        loop {
            let (id, mut call) = {
                let mut c = self.conn();
                if generation(self.spell.load(Ordering::Acquire)) != gen {
                    return Poll::Ready(Ok(Served::TakenOver));
                }
                if c.fresh.is_empty() {
                    if let Poll::Ready(r) = c.poll(cx) {
                        return Poll::Ready(r.map(|()| Served::Ended));
                    }
                }
                match c.fresh.pop_front() {
                    Some(next) => {
                        c.in_hand += 1;
                        next
                    }
                    None => return Poll::Pending,
                }
            };
            // The spell: the call's plugin side may run here, without the connection's lock.
            if !self.step(gen) {
                let mut c = self.conn();
                c.in_hand -= 1;
                c.fresh.push_front((id, call));
                return Poll::Ready(Ok(Served::TakenOver));
            }
            let began = std::time::Instant::now();
            let polled = call.poll_unpin(cx);
            let still_serving = self.step(gen);
            {
                let mut c = self.conn();
                c.in_hand -= 1;
                c.quick.polled(began);
                match polled {
                    Poll::Ready(Ok((_, resp))) => {
                        c.running.remove(&id);
                        c.answer(id, resp);
                    }
                    // Cancelled by the host, which waits for no answer.
                    Poll::Ready(Err(Aborted)) => {}
                    Poll::Pending => c.calls.push(call),
                }
            }
            if !still_serving {
                // Taken over while the plugin held this task: the answer is the new task's to
                // write.
                self.waker.wake();
                return Poll::Ready(Ok(Served::TakenOver));
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Rescuable for Shared<I> {
    fn rescue_if_held(self: Arc<Self>, seen: &mut u64) {
        let now = self.spell.load(Ordering::Acquire);
        // Odd: in a spell; the same value as a tick ago: the same spell.
        if now & 1 == 1 && now == *seen {
            let next = (generation(now) + 1) << 32;
            if self
                .spell
                .compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::debug!(
                    "plugin code has held a multiplexed connection's task for a tick: \
                     another task takes the connection over"
                );
                let rt = self.plugin_rt.clone();
                drop(rt.spawn(async move {
                    let _ = self.run(generation(next)).await;
                }));
                *seen = next;
                return;
            }
        }
        *seen = now;
    }
}

struct Conn<I> {
    io: I,
    state: Arc<State>,
    decoder: mux::Decoder,
    rbuf: BytesMut,
    /// New calls, not polled yet: each is polled once in place, outside the lock.
    fresh: VecDeque<(u64, CallFuture)>,
    /// Calls that have been polled and wait.
    calls: FuturesUnordered<CallFuture>,
    /// Calls taken out of `fresh` for their first poll and not back yet (one, or more while
    /// tasks taken over from still hold theirs).
    in_hand: usize,
    /// Each running call's handle, by id, for a cancel frame.
    running: HashMap<u64, AbortHandle>,
    /// Answers waiting to be written.
    out: VecDeque<Bytes>,
    unwritten: usize,
    /// Still reading: not at end of file, not stopped.
    reading: bool,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    quick: Quick,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Reads, collects answers and writes until nothing moves (`Pending`, also when new calls
    /// wait in `fresh` for their first poll), or the connection has ended (`Ready`).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reading && self.stop.as_mut().poll(cx).is_ready() {
            self.reading = false;
        }
        loop {
            let mut progress = false;
            let held = self.calls.len() + self.fresh.len() + self.in_hand;
            if self.reading && held < MAX_CALLS && self.unwritten < MAX_UNWRITTEN {
                progress |= self.poll_read(cx)?;
            }
            while let Poll::Ready(Some(done)) = self.calls.poll_next_unpin(cx) {
                progress = true;
                // An aborted call was cancelled by the host, which waits for no answer.
                if let Ok((id, resp)) = done {
                    self.running.remove(&id);
                    self.answer(id, resp);
                }
            }
            progress |= self.poll_write(cx)?;
            if !self.fresh.is_empty() {
                return Poll::Pending;
            }
            if !self.reading && self.calls.is_empty() && self.in_hand == 0 && self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Reads what is there and starts the calls it completes; whether anything was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> std::io::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM / 4 {
            self.rbuf.reserve(READ_ROOM);
        }
        let read = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Pending => return Ok(false),
            Poll::Ready(r) => r?,
        };
        if read == 0 {
            self.reading = false;
            return Ok(true);
        }
        self.take_frames()?;
        Ok(true)
    }

    /// Starts every call whose frame is whole in the read buffer.
    fn take_frames(&mut self) -> std::io::Result<()> {
        loop {
            let frame = self
                .decoder
                .next(&mut self.rbuf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            match frame {
                None => return Ok(()),
                Some(mux::Frame::Call { id, head, body }) => {
                    let read = self.read_call(head, body);
                    self.start(id, read);
                }
                Some(mux::Frame::TooLarge { id, len }) => {
                    let limit = self.state.max_json_body.max(self.state.max_frame_body);
                    tracing::debug!("a multiplexed call of {len} bytes is over the limit");
                    self.start(id, Err(too_large(limit)));
                }
                Some(mux::Frame::Cancel { id }) => {
                    if let Some(h) = self.running.remove(&id) {
                        h.abort();
                    }
                }
                Some(mux::Frame::Answer { .. }) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the host sent an answer frame",
                    ))
                }
            }
        }
    }

    /// A call frame's request, as `read_call` decodes an HTTP one.
    fn read_call(
        &self,
        head: mux::CallHead,
        body: Bytes,
    ) -> Result<super::decode::CallRequest, Rejection> {
        let kind = if head.frame {
            BodyKind::Frame
        } else {
            BodyKind::Json
        };
        let limit = body_limit(&self.state, kind);
        if body.len() as u64 > limit {
            return Err(too_large(limit));
        }
        let tag = match head.tag {
            None => None,
            Some(t) => Some(call_tag(Some(&t))?),
        };
        let deadline = head
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(u64::from(ms)));
        decode_call(&self.state, kind, body, deadline, tag)
    }

    fn start(&mut self, id: u64, read: Result<super::decode::CallRequest, Rejection>) {
        let state = Arc::clone(&self.state);
        let in_place = self.quick.in_place();
        let work = async move {
            let answer = calls::execute_read(state, read, in_place).await;
            (id, answer)
        }
        .boxed();
        let (handle, registration) = AbortHandle::new_pair();
        if let Some(earlier) = self.running.insert(id, handle) {
            // The host reused an id still running: the earlier call is no longer awaited.
            earlier.abort();
        }
        let call = Abortable::new(work, registration);
        match in_place {
            calls::InPlace::Allowed => self.fresh.push_back((id, call)),
            // Its first poll runs no plugin code.
            calls::InPlace::Never => self.calls.push(call),
        }
    }

    /// Queues `resp` as the answer to call `id`.
    fn answer(&mut self, id: u64, resp: Response<Body>) {
        let status = resp.status().as_u16();
        let frame = resp
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(content_types::FRAME.as_bytes()));
        let parts: Vec<Bytes> = match resp.into_body() {
            Body::Full(b) => b.into_iter().collect(),
            Body::Parts(q) => q.into(),
            Body::Stream { .. } => {
                let e = PluginError::fatal("an /execute answer cannot be a stream");
                return self.answer(id, error(&e));
            }
        };
        let len = parts.iter().map(Bytes::len).sum();
        let mut head = BytesMut::with_capacity(mux::FRAME_HEAD + 3);
        if mux::put_answer_head(&mut head, id, status, frame, len).is_none() {
            let e = PluginError::fatal(format!(
                "the answer of {len} bytes is too large for the multiplexed calls wire"
            ));
            return self.answer(id, error(&e));
        }
        self.unwritten += head.len() + len;
        self.out.push_back(head.freeze());
        self.out.extend(parts);
    }

    /// Writes queued answers as far as the socket takes them; whether anything was written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> std::io::Result<bool> {
        let mut wrote = false;
        while !self.out.is_empty() {
            let slices = mux::io_slices(&self.out);
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices) {
                Poll::Pending => break,
                Poll::Ready(r) => r?,
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            wrote = true;
            self.unwritten -= n;
            mux::consume(&mut self.out, n);
        }
        Ok(wrote)
    }
}

/// How a calls-socket connection starts: the bytes read while telling a preface from HTTP.
pub(super) enum Opening {
    /// An HTTP connection; these bytes were read from it already.
    Http(BytesMut),
    /// A multiplexed connection whose preface carried `token`; `rest` was read past it.
    Mux { token: Vec<u8>, rest: BytesMut },
}

/// Reads the first bytes of a calls-socket connection until they show whether it is
/// multiplexed (an HTTP request's first bytes tell at once).
pub(super) async fn opening<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Opening> {
    let mut got = BytesMut::with_capacity(READ_ROOM);
    loop {
        match mux::read_preface(&got) {
            mux::Preface::Http => return Ok(Opening::Http(got)),
            mux::Preface::Mux { len, token } => {
                got.advance(len);
                return Ok(Opening::Mux { token, rest: got });
            }
            mux::Preface::Partial => {
                let read = std::future::poll_fn(|cx| {
                    tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut got)
                });
                if read.await? == 0 {
                    // Closed before it said: whatever came is HTTP's to refuse.
                    return Ok(Opening::Http(got));
                }
            }
        }
    }
}

/// A connection whose first bytes were read already: they are read again first.
pub(super) struct Rewound<I> {
    first: BytesMut,
    io: I,
}

impl<I> Rewound<I> {
    pub(super) fn new(first: BytesMut, io: I) -> Self {
        Self { first, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewound<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewound<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    #[test]
    fn calls_stay_in_place_until_some_are_slow_in_a_row_then_spawn_for_a_while() {
        let mut q = Quick::default();
        assert_eq!(q.in_place(), calls::InPlace::Allowed);
        let long_ago = StdInstant::now().checked_sub(QUICK * 10).unwrap();
        // Slow polls with a quick one between change nothing.
        for _ in 1..SLOW_IN_A_ROW {
            q.polled(long_ago);
        }
        q.polled(StdInstant::now());
        for _ in 1..SLOW_IN_A_ROW {
            q.polled(long_ago);
        }
        assert_eq!(q.in_place(), calls::InPlace::Allowed);
        // One more slow one in a row: the next calls spawn.
        q.polled(long_ago);
        assert_eq!(q.in_place(), calls::InPlace::Never);
        assert_eq!(q.in_place(), calls::InPlace::Never);
        // Once the spell is over, in place again.
        q.spawning_until = StdInstant::now().checked_sub(Duration::from_millis(1));
        assert_eq!(q.in_place(), calls::InPlace::Allowed);
        assert_eq!(q.spawning_until, None);
    }
}
