//! The multiplexed calls wire's client side (feature `calls_mux`; the framing is
//! `cjm_core::wire::mux`): one connection to a native worker's calls socket carries all of its
//! `POST /execute` calls at once, each frame naming its call by id.
//!
//! Two tasks run the connection: a writer that sends the frames queued since its last write
//! in one system call, and a reader that hands each answer to the call waiting for it. A call
//! made while no other waits on the connection and the writer holds nothing writes its frame
//! itself, which spares a lone call the hand-off to the writer. A call
//! that is dropped before its answer (its deadline passed, its caller went away) leaves the
//! table of waiting calls and sends a cancel frame, which cancels it in the worker. When the
//! connection ends, every waiting call fails with a lost-connection error, which the worker's
//! exit status then explains, as it does for HTTP.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use cjm_core::wire::mux;
use cjm_core::PluginError;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use cjm_sys::quiet_stream::QuietUnixStream;

/// Calls in a row that came one at a time, after which a connection's calls are lone calls
/// (each written by its caller) as long as they keep coming so.
const ONE_AT_A_TIME: u32 = 4;

/// An answer as it came: status, whether its body is a frame, the body.
#[derive(Debug)]
pub(crate) struct MuxAnswer {
    pub(crate) status: u16,
    pub(crate) frame: bool,
    pub(crate) body: Bytes,
}

/// A multiplexed connection to one worker's calls socket.
#[derive(Debug)]
pub(crate) struct MuxClient {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
    out: mpsc::UnboundedSender<Vec<Bytes>>,
    /// Frames handed to the writer task and not yet written whole: while there are any, no
    /// caller writes its own (it would go before them, or into the middle of one).
    queued: AtomicUsize,
    /// Held for each write to the socket, by the writer task or a caller. Callers only try it,
    /// and only for a lone call: under load only the writer task takes it.
    write: Mutex<WriteSide>,
}

#[derive(Debug)]
struct WriteSide {
    /// The socket (a second descriptor for it, non-blocking), for a caller's own write.
    socket: std::os::unix::net::UnixStream,
    /// The rest of a frame a caller began to write and the socket did not take whole: the
    /// writer task writes it before anything else.
    front: VecDeque<Bytes>,
    /// Frames callers wrote whole themselves, ever.
    written_by_callers: u64,
}

#[derive(Debug, Default)]
struct Waiting {
    calls: HashMap<u64, oneshot::Sender<MuxAnswer>>,
    /// The most calls waiting at once since the table was last empty.
    peak: usize,
    /// How many times in a row the table has been emptied with a peak of one: calls that came
    /// one at a time.
    one_at_a_time: u32,
    /// The connection ended: no call may wait on it any more.
    ended: bool,
}

impl Waiting {
    /// Takes call `id` out of the table.
    fn remove(&mut self, id: u64) -> Option<oneshot::Sender<MuxAnswer>> {
        let waiter = self.calls.remove(&id);
        if waiter.is_some() && self.calls.is_empty() {
            self.one_at_a_time = match std::mem::take(&mut self.peak) {
                0 | 1 => self.one_at_a_time.saturating_add(1),
                _ => 0,
            };
        }
        waiter
    }

    /// Puts call `id` in the table; whether it is a lone call: none other waits, and the last
    /// [`ONE_AT_A_TIME`] calls came one at a time too. (Calls that overlap are left to the
    /// writer task, which sends those queued together in one system call: a burst's first
    /// call written on its own would split the batch. Under load a connection empties now and
    /// then; a run of single calls is what tells calls made one after another.)
    fn insert(&mut self, id: u64, tx: oneshot::Sender<MuxAnswer>) -> bool {
        let lone = self.calls.is_empty() && self.one_at_a_time >= ONE_AT_A_TIME;
        self.calls.insert(id, tx);
        self.peak = self.peak.max(self.calls.len());
        lone
    }
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_side(&self) -> MutexGuard<'_, WriteSide> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `frame` (its buffers in order). With `now`, and if the writer task holds nothing,
    /// the caller writes it itself, as far as the socket takes it at once; the rest, or all of
    /// it otherwise, goes to the writer task. False if the connection has ended.
    fn send(&self, frame: Vec<Bytes>, now: bool) -> bool {
        let side = if now && self.queued.load(Ordering::Acquire) == 0 {
            self.write.try_lock().ok()
        } else {
            None
        };
        // Checked again under the lock: a frame queued meanwhile may be partly written.
        let Some(mut side) = side.filter(|_| self.queued.load(Ordering::Acquire) == 0) else {
            self.queued.fetch_add(1, Ordering::AcqRel);
            return self.out.send(frame).is_ok();
        };
        let mut frame = VecDeque::from(frame);
        loop {
            match (&side.socket).write_vectored(&mux::io_slices(&frame)) {
                Ok(n) if n > 0 => {
                    mux::consume(&mut frame, n);
                    if frame.is_empty() {
                        side.written_by_callers += 1;
                        return true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A full socket, or a failure, which the writer task meets and reports.
                _ => break,
            }
        }
        // The rest goes first, before any frame queued meanwhile; an empty message wakes the
        // writer task for it.
        side.front = frame;
        self.queued.fetch_add(1, Ordering::AcqRel);
        drop(side);
        self.out.send(Vec::new()).is_ok()
    }

    /// Marks the connection ended and lets every waiting call go (each then fails).
    fn end(&self) {
        let dropped = {
            let mut w = self.waiting();
            w.ended = true;
            std::mem::take(&mut w.calls)
        };
        drop(dropped);
    }
}

/// Ends the connection when a task of it stops, however it stops (its runtime may drop it).
struct EndOnDrop(Arc<Shared>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Drop for MuxClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl MuxClient {
    /// Connects to the calls socket at `path` and opens the multiplexed wire, presenting
    /// `token`.
    pub(crate) async fn connect(path: &Path, token: Option<&str>) -> std::io::Result<Self> {
        let s = tokio::net::UnixStream::connect(path).await?;
        if let Err(e) = cjm_sys::fd::set_send_buffer(
            std::os::fd::AsFd::as_fd(&s),
            cjm_sys::fd::CALLS_SEND_BUFFER,
        ) {
            tracing::debug!("cannot enlarge a calls connection's send buffer: {e}");
        }
        let mut s = QuietUnixStream::from_tokio(s)?;
        s.write_all(&mux::preface(token)).await?;
        let socket = s.get_ref().try_clone()?;
        let (rd, wr) = tokio::io::split(s);
        let (out, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
            out,
            queued: AtomicUsize::new(0),
            write: Mutex::new(WriteSide {
                socket,
                front: VecDeque::new(),
                written_by_callers: 0,
            }),
        });
        let reader = tokio::spawn(read(rd, EndOnDrop(Arc::clone(&shared))));
        let writer = tokio::spawn(write(wr, rx, EndOnDrop(Arc::clone(&shared))));
        Ok(Self {
            shared,
            reader,
            writer,
        })
    }

    /// Whether the connection has ended (a new one is needed).
    pub(crate) fn ended(&self) -> bool {
        self.shared.waiting().ended
    }

    /// Sends one call (`body`: what `POST /execute`'s body would be) and waits for its answer.
    /// Dropping the future before the answer cancels the call in the worker.
    pub(crate) async fn call(
        &self,
        head: &mux::CallHead,
        body: Vec<Bytes>,
    ) -> Result<MuxAnswer, PluginError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let lone = {
            let mut w = self.shared.waiting();
            if w.ended {
                return Err(crate::transport::closed());
            }
            w.insert(id, tx)
        };
        let mut pending = Pending {
            shared: &self.shared,
            id,
            answered: false,
        };
        let len = body.iter().map(Bytes::len).sum();
        let mut frame = Vec::with_capacity(1 + body.len());
        frame.push(mux::call_head(id, head, len));
        frame.extend(body);
        if !self.shared.send(frame, lone) {
            return Err(crate::transport::closed());
        }
        let answer = rx.await.map_err(|_| crate::transport::closed());
        pending.answered = true;
        answer
    }
}

/// A call sent and not yet answered: dropped early, it leaves the table and is cancelled.
struct Pending<'a> {
    shared: &'a Shared,
    id: u64,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let still_waiting = self.shared.waiting().remove(self.id).is_some();
        if still_waiting {
            let _ = self.shared.send(vec![mux::cancel(self.id)], false);
        }
    }
}

/// The reader task: hands each answer to its call until the connection ends.
async fn read(mut rd: ReadHalf<QuietUnixStream>, end: EndOnDrop) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut decoder = mux::Decoder::new(u64::from(u32::MAX));
    loop {
        loop {
            match decoder.next(&mut buf) {
                Ok(None) => break,
                Ok(Some(mux::Frame::Answer {
                    id,
                    status,
                    frame,
                    body,
                })) => {
                    let waiter = end.0.waiting().remove(id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(MuxAnswer {
                            status,
                            frame,
                            body,
                        });
                    }
                }
                Ok(Some(other)) => {
                    tracing::warn!("the worker sent a frame a host does not take: {other:?}");
                    return;
                }
                Err(e) => {
                    tracing::warn!("the worker broke the multiplexed calls wire: {e}");
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        match tokio::io::AsyncReadExt::read_buf(&mut rd, &mut buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("multiplexed calls connection ended: {e}");
                return;
            }
        }
    }
}

/// The writer task: sends the frames queued since its last write together.
async fn write(
    mut wr: WriteHalf<QuietUnixStream>,
    mut rx: mpsc::UnboundedReceiver<Vec<Bytes>>,
    end: EndOnDrop,
) {
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    while let Some(frame) = rx.recv().await {
        batch.extend(frame);
        let mut frames = 1;
        while batch.len() < mux::MAX_SLICES {
            match rx.try_recv() {
                Ok(more) => {
                    batch.extend(more);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = write_all(&mut wr, &mut batch, &end.0).await {
            tracing::debug!("multiplexed calls connection ended: {e}");
            return;
        }
        end.0.queued.fetch_sub(frames, Ordering::AcqRel);
    }
}

/// Writes every buffer of `batch`, after the rest of a caller's frame if there is one
/// ([`WriteSide::front`]), several per system call, each write under `shared`'s write lock.
async fn write_all<W: AsyncWrite + Unpin>(
    wr: &mut W,
    batch: &mut VecDeque<Bytes>,
    shared: &Shared,
) -> std::io::Result<()> {
    loop {
        let n = std::future::poll_fn(|cx| {
            let mut side = shared.write_side();
            // Only a caller that found nothing queued fills it, so none of `batch` has been
            // written yet when it is there.
            while let Some(b) = side.front.pop_back() {
                batch.push_front(b);
            }
            if batch.is_empty() {
                return Poll::Ready(Ok(None));
            }
            std::pin::Pin::new(&mut *wr)
                .poll_write_vectored(cx, &mux::io_slices(batch))
                .map_ok(Some)
        })
        .await?;
        match n {
            None => return Ok(()),
            Some(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Some(n) => mux::consume(batch, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{UnixListener, UnixStream};

    /// A fake worker end: the accepted connection with its preface read.
    struct Worker {
        s: UnixStream,
        buf: BytesMut,
        decoder: mux::Decoder,
    }

    impl Worker {
        async fn accept(l: &UnixListener) -> (Self, Vec<u8>) {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let token = loop {
                match mux::read_preface(&buf) {
                    mux::Preface::Mux { len, token } => {
                        let _ = buf.split_to(len);
                        break token;
                    }
                    mux::Preface::Partial => assert!(s.read_buf(&mut buf).await.unwrap() > 0),
                    mux::Preface::Http => panic!("not a preface"),
                }
            };
            let w = Self {
                s,
                buf,
                decoder: mux::Decoder::new(1 << 20),
            };
            (w, token)
        }

        async fn next(&mut self) -> mux::Frame {
            loop {
                if let Some(f) = self.decoder.next(&mut self.buf).unwrap() {
                    return f;
                }
                assert!(self.s.read_buf(&mut self.buf).await.unwrap() > 0);
            }
        }

        async fn answer(&mut self, id: u64, body: &[u8]) {
            let mut b = BytesMut::new();
            mux::put_answer_head(&mut b, id, 200, false, body.len()).unwrap();
            b.extend_from_slice(body);
            self.s.write_all(&b).await.unwrap();
        }
    }

    fn call_id(f: &mux::Frame) -> u64 {
        match f {
            mux::Frame::Call { id, .. } => *id,
            other => panic!("not a call: {other:?}"),
        }
    }

    async fn pair() -> (Arc<MuxClient>, Worker, Vec<u8>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.sock");
        let l = UnixListener::bind(&path).unwrap();
        let (client, (worker, token)) =
            tokio::join!(MuxClient::connect(&path, Some("tok")), Worker::accept(&l));
        (Arc::new(client.unwrap()), worker, token, dir)
    }

    fn body(s: &'static str) -> Vec<Bytes> {
        vec![Bytes::from_static(s.as_bytes())]
    }

    #[tokio::test]
    async fn answers_in_any_order_reach_their_own_calls() {
        let (client, mut w, token, _dir) = pair().await;
        assert_eq!(token, b"tok");
        let head = mux::CallHead {
            frame: false,
            timeout_ms: Some(5),
            tag: Some("t".into()),
        };
        let (a, b) = (Arc::clone(&client), Arc::clone(&client));
        let (h1, h2) = (head.clone(), head.clone());
        let first = tokio::spawn(async move { a.call(&h1, body("1")).await });
        let second = tokio::spawn(async move { b.call(&h2, body("2")).await });
        let mut ids = Vec::new();
        for _ in 0..2 {
            match w.next().await {
                mux::Frame::Call {
                    id,
                    head: got,
                    body,
                } => {
                    assert_eq!(got, head);
                    ids.push((id, body));
                }
                other => panic!("{other:?}"),
            }
        }
        // Answered in the reverse order, each with its own call's body.
        for (id, body) in ids.iter().rev() {
            w.answer(*id, body).await;
        }
        let (first, second) = (
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        );
        assert_eq!((first.status, &first.body[..]), (200, &b"1"[..]));
        assert_eq!(&second.body[..], b"2");
        assert!(client.shared.waiting().calls.is_empty());
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_is_cancelled_and_forgotten() {
        let (client, mut w, _, _dir) = pair().await;
        let c = Arc::clone(&client);
        let call = tokio::spawn(async move { c.call(&mux::CallHead::default(), body("x")).await });
        let id = call_id(&w.next().await);
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(w.next().await, mux::Frame::Cancel { id });
        assert!(client.shared.waiting().calls.is_empty());
        // A late answer to it is dropped; the connection goes on.
        w.answer(id, b"late").await;
        let c = Arc::clone(&client);
        let next = tokio::spawn(async move { c.call(&mux::CallHead::default(), body("y")).await });
        let id2 = call_id(&w.next().await);
        assert_ne!(id2, id);
        w.answer(id2, b"y").await;
        assert_eq!(&next.await.unwrap().unwrap().body[..], b"y");
    }

    #[tokio::test]
    async fn the_connection_ending_fails_every_waiting_call_as_lost() {
        let (client, mut w, _, _dir) = pair().await;
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let c = Arc::clone(&client);
                tokio::spawn(async move { c.call(&mux::CallHead::default(), body("z")).await })
            })
            .collect();
        for _ in 0..3 {
            call_id(&w.next().await);
        }
        drop(w);
        for c in calls {
            let e = c.await.unwrap().unwrap_err();
            assert!(crate::transport::is_connection_failure(&e), "{e}");
        }
        assert!(client.ended());
        // A call on an ended connection fails at once.
        let e = client
            .call(&mux::CallHead::default(), body("z"))
            .await
            .unwrap_err();
        assert!(crate::transport::is_connection_failure(&e), "{e}");
    }

    /// Makes one call with `body`, answers it with the same, and checks the answer.
    async fn one_call(client: &Arc<MuxClient>, w: &mut Worker, body: Bytes) {
        let c = Arc::clone(client);
        let sent = body.clone();
        let call = tokio::spawn(async move { c.call(&mux::CallHead::default(), vec![sent]).await });
        let id = call_id(&w.next().await);
        w.answer(id, &body).await;
        assert_eq!(call.await.unwrap().unwrap().body, body);
    }

    fn written_by_callers(client: &MuxClient) -> u64 {
        client.shared.write_side().written_by_callers
    }

    #[tokio::test]
    async fn lone_calls_write_their_own_frames_and_calls_that_overlap_leave_them_to_the_writer() {
        let (client, mut w, _, _dir) = pair().await;
        // Calls one at a time: after a few, each writes its own frame.
        for n in 0..ONE_AT_A_TIME {
            one_call(&client, &mut w, Bytes::from(n.to_string())).await;
            assert_eq!(written_by_callers(&client), 0);
        }
        one_call(&client, &mut w, Bytes::from_static(b"lone")).await;
        assert_eq!(written_by_callers(&client), 1);
        assert_eq!(client.shared.queued.load(Ordering::Acquire), 0);

        // A lone call larger than the socket's buffers: the caller's own write takes part of
        // it, the writer task the rest, and a call made meanwhile goes after it, whole.
        let big: Bytes = (0..(8u32 << 20))
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let (c1, c2) = (Arc::clone(&client), Arc::clone(&client));
        let sent = big.clone();
        let first =
            tokio::spawn(async move { c1.call(&mux::CallHead::default(), vec![sent]).await });
        // In a current-thread runtime the call has written what it could once it waits.
        while client.shared.waiting().calls.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(
            client.shared.queued.load(Ordering::Acquire) > 0,
            "the rest went to the writer"
        );
        let second =
            tokio::spawn(async move { c2.call(&mux::CallHead::default(), body("after")).await });
        w.decoder = mux::Decoder::new(16 << 20);
        let (id1, got) = match w.next().await {
            mux::Frame::Call { id, body, .. } => (id, body),
            other => panic!("{other:?}"),
        };
        assert!(got == big, "the large body arrived whole and unmixed");
        let (id2, got) = match w.next().await {
            mux::Frame::Call { id, body, .. } => (id, body),
            other => panic!("{other:?}"),
        };
        assert_eq!(&got[..], b"after");
        w.answer(id1, b"1").await;
        w.answer(id2, b"2").await;
        assert_eq!(&first.await.unwrap().unwrap().body[..], b"1");
        assert_eq!(&second.await.unwrap().unwrap().body[..], b"2");
        assert_eq!(client.shared.queued.load(Ordering::Acquire), 0);
        assert_eq!(
            written_by_callers(&client),
            1,
            "neither was written whole by its caller"
        );

        // Calls overlapped: the next ones go to the writer until calls came one at a time again.
        for n in 0..ONE_AT_A_TIME {
            one_call(&client, &mut w, Bytes::from(n.to_string())).await;
            assert_eq!(written_by_callers(&client), 1);
        }
        one_call(&client, &mut w, Bytes::from_static(b"lone")).await;
        assert_eq!(written_by_callers(&client), 2);
    }

    #[tokio::test]
    async fn a_frame_a_host_does_not_take_ends_the_connection() {
        let (client, mut w, _, _dir) = pair().await;
        let c = Arc::clone(&client);
        let call = tokio::spawn(async move { c.call(&mux::CallHead::default(), body("x")).await });
        call_id(&w.next().await);
        w.s.write_all(&mux::cancel(1)).await.unwrap();
        let e = call.await.unwrap().unwrap_err();
        assert!(crate::transport::is_connection_failure(&e), "{e}");
        assert!(client.ended());
    }
}
