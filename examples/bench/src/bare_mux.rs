//! A reference for the calls/s figure, not a limit: the same echo, 32 calls in flight over the
//! same ten bare server processes, but over a length-prefixed framing that multiplexes calls
//! on one connection per process, in place of HTTP/1.1's one call per connection at a time.
//! What it measures is what the choice of wire costs per call on this machine: a multiplexed
//! connection lets a server read several requests in one `read` and answer them in one
//! `write`, and a client do the same, so the system calls and the wake-ups between processes
//! are shared by the calls that travel together.
//!
//! A frame is a little-endian `u32` length of the payload, a little-endian `u64` call id, and
//! the payload; the server answers each frame with itself. The client is what a real one would
//! need at the least: a table of the calls waiting for their answers, a writer task that
//! gathers the frames queued since its last write into one, and a reader task that hands each
//! answer to its call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::io;
use cjm_host::PluginError;

/// Length and id.
const HEADER: usize = 12;
/// A frame larger than this ends the connection: the echo's are about 50 bytes.
const MAX_PAYLOAD: usize = 1 << 20;

/// The length of the frame at the start of `buf`, once it is all there; `Err` for a length
/// over [`MAX_PAYLOAD`].
fn whole_frame(buf: &[u8]) -> std::io::Result<Option<usize>> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes (at most {MAX_PAYLOAD})"
        )));
    }
    Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
}

/// Serves one connection: each read's whole frames are answered with one write.
pub(crate) async fn serve(stream: UnixStream) -> std::io::Result<()> {
    let (mut r, mut w) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        if r.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        while let Some(n) = whole_frame(&buf)? {
            out.extend_from_slice(&buf[..n]);
            buf.advance(n);
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
    }
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// A multiplexed connection to one bare server.
#[derive(Clone)]
pub(crate) struct Client {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Waiting,
    next_id: Arc<AtomicU64>,
}

impl Client {
    /// Connects to `sock` and starts the connection's writer and reader tasks, which end when
    /// the connection does (the server exits, or every clone of the client is dropped).
    pub(crate) async fn connect(sock: &std::path::Path) -> Result<Self, PluginError> {
        let (mut r, mut w) = UnixStream::connect(sock).await.map_err(io)?.into_split();
        let (frames, mut queued) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(64 * 1024);
            while let Some(f) = queued.recv().await {
                out.extend_from_slice(&f);
                while let Ok(f) = queued.try_recv() {
                    out.extend_from_slice(&f);
                }
                if w.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        });
        let waiting = Waiting::default();
        let answers = Arc::clone(&waiting);
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            'connection: loop {
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                loop {
                    let n = match whole_frame(&buf) {
                        Ok(Some(n)) => n,
                        Ok(None) => break,
                        // A length over the limit: the stream cannot be followed further.
                        Err(_) => break 'connection,
                    };
                    let mut frame = buf.split_to(n);
                    let id = u64::from_le_bytes(frame[4..HEADER].try_into().unwrap_or_default());
                    let payload = frame.split_off(HEADER).freeze();
                    let call = answers.lock().ok().and_then(|mut w| w.remove(&id));
                    if let Some(call) = call {
                        let _ = call.send(payload);
                    }
                }
            }
            // The calls still waiting see their answer's sender dropped.
            if let Ok(mut w) = answers.lock() {
                w.clear();
            }
        });
        Ok(Self {
            frames,
            waiting,
            next_id: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Sends `payload` and waits for its echo.
    async fn call(&self, payload: &[u8]) -> Result<Bytes, PluginError> {
        let lost = || PluginError::fatal("bare mux: the connection ended");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().map_err(|_| lost())?.insert(id, tx);
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        let len = u32::try_from(payload.len()).map_err(|_| lost())?;
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(payload);
        self.frames.send(frame).map_err(|_| lost())?;
        rx.await.map_err(|_| lost())
    }
}

/// `total` echo calls, 32 in flight, spread over `clients` in turn, each answer parsed as the
/// ping-pong's are: calls per second.
pub(crate) async fn calls_per_s(clients: &[Client], total: usize) -> Result<f64, PluginError> {
    let t = Instant::now();
    let results: Vec<Result<(), PluginError>> = futures::stream::iter(0..total)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            async move {
                crate::limits::check_echo(&c.call(crate::limits::ECHO_BODY).await?, "bare mux")
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_whole_only_once_all_its_bytes_are_there() {
        let mut f = 3u32.to_le_bytes().to_vec();
        f.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(whole_frame(&f[..3]).ok(), Some(None));
        assert_eq!(whole_frame(&f).ok(), Some(None));
        f.extend_from_slice(b"abc");
        assert_eq!(whole_frame(&f).ok(), Some(Some(15)));
        let big = (MAX_PAYLOAD as u32 + 1).to_le_bytes();
        assert!(whole_frame(&big).is_err());
    }

    /// A socket in a new temporary directory (kept while the directory is), and a task that
    /// hands its first connection to `handle`.
    fn serve_first<F, Fut>(
        handle: F,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        tokio::task::JoinHandle<Fut::Output>,
    )
    where
        F: FnOnce(UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let sock = dir.path().join("mux.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            handle(s).await
        });
        (dir, sock, server)
    }

    #[tokio::test]
    async fn calls_on_one_connection_get_their_own_answers() {
        let (_dir, sock, server) = serve_first(serve);
        let c = Client::connect(&sock).await.expect("connect");
        let answers = futures::future::join_all((0..100).map(|i| {
            let c = c.clone();
            async move { (i, c.call(format!("call {i}").as_bytes()).await) }
        }))
        .await;
        for (i, a) in answers {
            assert_eq!(a.expect("answer"), Bytes::from(format!("call {i}")));
        }
        assert!(calls_per_s(&[c], 64).await.expect("rate") > 0.0);
        // The last client gone, its writer closes the connection and the server ends.
        server
            .await
            .expect("the server task")
            .expect("the server ends cleanly");
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_ends_the_connection_and_fails_the_waiting_call() {
        let (_dir, sock, server) = serve_first(|mut s: UnixStream| async move {
            let mut request = [0u8; HEADER + 2];
            s.read_exact(&mut request).await.expect("the request");
            let mut answer = (MAX_PAYLOAD as u32 + 1).to_le_bytes().to_vec();
            answer.extend_from_slice(&request[4..HEADER]);
            s.write_all(&answer).await.expect("the answer");
            // Held open: the client must give up on the frame, not on the connection's end.
            std::future::pending::<()>().await;
        });
        let c = Client::connect(&sock).await.expect("connect");
        // A guard against a hang (what the client did before it gave up on such a frame).
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), c.call(b"hi"));
        let e = waited
            .await
            .expect("the call must fail, not wait")
            .expect_err("no answer can come");
        assert!(e.to_string().contains("connection ended"), "{e}");
        server.abort();
    }
}
