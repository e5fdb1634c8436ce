//! Response bodies (a whole buffer, frame parts sent without copying, or an NDJSON stream) and
//! the pump that turns a plugin's chunk stream into NDJSON lines.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use cjm_core::wire::{is_reserved_chunk, StreamLine, STREAM_CONTROL_KEY};
use cjm_core::{CancellationToken, ChunkStream, PluginError};
use futures::{FutureExt, StreamExt};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::DropGuard;

/// How many NDJSON lines may wait for a slow reader before the plugin's stream is paused.
pub(crate) const STREAM_BUFFER: usize = 256;

/// Lines already produced are joined into frames of up to this many bytes.
const BATCH_BYTES: usize = 64 * 1024;

/// A response body.
#[derive(Debug)]
pub(crate) enum Body {
    /// One buffer (JSON answers).
    Full(Option<Bytes>),
    /// Buffers sent one after another without being joined (frames).
    Parts(VecDeque<Bytes>),
    /// NDJSON lines as the plugin produces them. Dropping the body (the client went away)
    /// cancels the call through the guard.
    Stream {
        rx: mpsc::Receiver<Bytes>,
        _guard: DropGuard,
    },
}

impl Body {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }

    pub(crate) fn parts(parts: Vec<Bytes>) -> Self {
        Self::Parts(parts.into_iter().filter(|p| !p.is_empty()).collect())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Parts(q) => Poll::Ready(q.pop_front().map(|b| Ok(Frame::data(b)))),
            Self::Stream { rx, .. } => rx.poll_recv(cx).map(|o| {
                o.map(|first| {
                    // Send every line already waiting in one frame: one write instead of one
                    // per line when the plugin produces faster than the socket drains.
                    let mut batch: Option<bytes::BytesMut> = None;
                    while batch.as_ref().map_or(first.len(), |b| b.len()) < BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(next) => batch
                                .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                                .extend_from_slice(&next),
                            Err(_) => break,
                        }
                    }
                    Ok(Frame::data(batch.map_or(first, bytes::BytesMut::freeze)))
                })
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Parts(q) => q.is_empty(),
            Self::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Parts(q) => SizeHint::with_exact(q.iter().map(|b| b.len() as u64).sum()),
            Self::Stream { .. } => SizeHint::default(),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_owned()
    }
}

/// Appends `v` as one NDJSON line.
fn push_line(buf: &mut bytes::BytesMut, v: &serde_json::Value) {
    use bytes::BufMut;
    let start = buf.len();
    let mut w = buf.writer();
    if serde_json::to_writer(&mut w, v).is_err() {
        // Not for a `Value` (its keys are strings, and memory does not fail to write).
        let buf = w.get_mut();
        buf.truncate(start);
        buf.extend_from_slice(b"null");
    }
    w.into_inner().put_u8(b'\n');
}

/// How a pumped stream ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PumpEnd {
    /// All chunks and the end line were sent.
    Completed,
    /// An error line was sent (or could not be, the client being gone).
    Failed(PluginError),
    /// The client went away.
    Disconnected,
}

/// Drives `stream`, writing one NDJSON line per chunk into `tx`, then the end line; a failing
/// chunk, a reserved chunk, a panic or the deadline ends it with an error line. The client
/// going away (the receiver dropped) or the deadline cancels `token`.
///
/// Lines the plugin has ready at once are gathered into one buffer (up to [`BATCH_BYTES`]) and
/// handed over together; the buffer goes out as soon as the plugin has nothing more ready, so
/// a slow stream's chunks are not held back. One hand-over, and one wake-up of the server's
/// thread, per burst instead of per chunk.
pub(crate) async fn pump(
    mut stream: ChunkStream,
    tx: mpsc::Sender<Bytes>,
    token: CancellationToken,
    deadline: Option<Instant>,
) -> PumpEnd {
    let mut sent: u64 = 0;
    let mut batch = bytes::BytesMut::new();
    let failure = loop {
        // What the plugin has ready now; when nothing is, what was gathered goes out first.
        let ready = AssertUnwindSafe(stream.next())
            .catch_unwind()
            .now_or_never();
        let next = match ready {
            Some(next) => next,
            None => {
                if !batch.is_empty() && tx.send(batch.split().freeze()).await.is_err() {
                    token.cancel();
                    return PumpEnd::Disconnected;
                }
                tokio::select! {
                    biased;
                    () = tx.closed() => {
                        token.cancel();
                        return PumpEnd::Disconnected;
                    }
                    () = super::calls::sleep_until_opt(deadline) => {
                        token.cancel();
                        break PluginError::timeout("the call's deadline passed during the stream");
                    }
                    next = AssertUnwindSafe(stream.next()).catch_unwind() => next,
                }
            }
        };
        match next {
            Err(payload) => {
                let msg = panic_message(payload.as_ref());
                tracing::error!("plugin panicked in its stream: {msg}");
                break PluginError::fatal(format!("plugin panicked: {msg}"));
            }
            Ok(None) => {
                push_line(&mut batch, &StreamLine::End { chunks: sent }.to_json());
                return if tx.send(batch.freeze()).await.is_ok() {
                    PumpEnd::Completed
                } else {
                    token.cancel();
                    PumpEnd::Disconnected
                };
            }
            Ok(Some(Err(e))) => break e,
            Ok(Some(Ok(chunk))) if is_reserved_chunk(&chunk) => {
                break PluginError::fatal(format!(
                    "the plugin sent a chunk with the reserved top-level key `{STREAM_CONTROL_KEY}`"
                ));
            }
            Ok(Some(Ok(chunk))) => {
                push_line(&mut batch, &chunk);
                sent += 1;
                if batch.len() >= BATCH_BYTES {
                    if tx.send(batch.split().freeze()).await.is_err() {
                        token.cancel();
                        return PumpEnd::Disconnected;
                    }
                    // Let the connection write the batch now. Woken from this thread, its task
                    // waits in the scheduler's LIFO slot, which no other thread may take, so
                    // without a yield a stream that is always ready would be written only when
                    // it ends (or its task budget runs out), and the reader would idle until then.
                    tokio::task::yield_now().await;
                    // A stream that is always ready never reaches the select above.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        token.cancel();
                        break PluginError::timeout("the call's deadline passed during the stream");
                    }
                }
            }
        }
    };
    push_line(&mut batch, &StreamLine::Error(failure.clone()).to_json());
    let _ = tx.send(batch.freeze()).await;
    PumpEnd::Failed(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use serde_json::json;

    async fn collect(stream: ChunkStream, deadline: Option<Instant>) -> (String, PumpEnd) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let token = CancellationToken::new();
        let body = Body::Stream {
            rx,
            _guard: token.clone().drop_guard(),
        };
        let pump = tokio::spawn(pump(stream, tx, token, deadline));
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            String::from_utf8(bytes.to_vec()).unwrap(),
            pump.await.unwrap(),
        )
    }

    #[tokio::test]
    async fn lines_then_end() {
        let s: ChunkStream = Box::pin(futures::stream::iter(vec![
            Ok(json!({"a": 1})),
            Ok(json!(2)),
        ]));
        let (text, end) = collect(s, None).await;
        assert_eq!(text, "{\"a\":1}\n2\n{\"$cjm\":{\"end\":{\"chunks\":2}}}\n");
        assert_eq!(end, PumpEnd::Completed);
    }

    #[tokio::test]
    async fn errors_and_reserved_chunks_end_the_stream() {
        let s: ChunkStream = Box::pin(futures::stream::iter(vec![
            Ok(json!(1)),
            Err(PluginError::transient("flaky")),
            Ok(json!(3)),
        ]));
        let (text, end) = collect(s, None).await;
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["error"], "flaky");
        assert_eq!(v["$cjm"]["error"]["category"], "transient");
        assert!(matches!(end, PumpEnd::Failed(_)));

        let s: ChunkStream = Box::pin(futures::stream::iter(vec![Ok(json!({"$cjm": 1}))]));
        let (text, _) = collect(s, None).await;
        assert!(text.contains("reserved"), "{text}");
        assert_eq!(text.lines().count(), 1);
    }

    #[tokio::test]
    async fn a_panicking_stream_ends_with_an_error_line() {
        let s: ChunkStream = Box::pin(futures::stream::poll_fn(|_| -> Poll<Option<_>> {
            panic!("kaboom")
        }));
        let (text, _) = collect(s, None).await;
        assert!(text.contains("plugin panicked: kaboom"), "{text}");
    }

    #[tokio::test]
    async fn a_stream_that_is_always_ready_still_meets_its_deadline() {
        let s: ChunkStream = Box::pin(futures::stream::repeat_with(|| Ok(json!("x"))));
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let (text, end) = collect(s, Some(deadline)).await;
        assert!(
            matches!(end, PumpEnd::Failed(ref e) if e.category == cjm_core::ErrorCategory::Timeout),
            "{end:?}"
        );
        assert!(text.starts_with("\"x\"\n"));
        assert!(
            text.trim_end().ends_with("}}"),
            "the last line is the error"
        );
    }

    #[tokio::test]
    async fn a_chunk_goes_out_while_the_plugin_prepares_the_next() {
        // One chunk, then nothing for ever: the client has the chunk all the same.
        let s: ChunkStream = Box::pin(
            futures::stream::iter(vec![Ok(json!({"first": true}))])
                .chain(futures::stream::pending()),
        );
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let token = CancellationToken::new();
        let mut body = Body::Stream {
            rx,
            _guard: token.clone().drop_guard(),
        };
        let pump = tokio::spawn(pump(s, tx, token, None));
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b"{\"first\":true}\n");
        drop(body);
        assert_eq!(pump.await.unwrap(), PumpEnd::Disconnected);
    }

    #[tokio::test]
    async fn an_always_ready_stream_is_written_while_it_runs() {
        // A current-thread runtime: the body's reader runs only when the pump lets it, as the
        // connection's task, woken by the pump, waits on a plugin thread. Every chunk records
        // how many frames the reader had taken when the chunk was made.
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let frames = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = frames.clone();
        let pad = "x".repeat(1024);
        let batches = 10;
        let s: ChunkStream = Box::pin(
            futures::stream::iter(0..batches * (BATCH_BYTES / 1024))
                .map(move |_| Ok(json!({"seen": seen.load(Relaxed), "pad": pad}))),
        );
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let token = CancellationToken::new();
        let mut body = Body::Stream {
            rx,
            _guard: token.clone().drop_guard(),
        };
        let reader = tokio::spawn(async move {
            let mut text = Vec::new();
            while let Some(frame) = body.frame().await {
                text.extend_from_slice(&frame.unwrap().into_data().unwrap());
                frames.fetch_add(1, Relaxed);
            }
            String::from_utf8(text).unwrap()
        });
        assert_eq!(pump(s, tx, token, None).await, PumpEnd::Completed);
        let text = reader.await.unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), batches * (BATCH_BYTES / 1024) + 1);
        // The last batch's chunks were made after the reader had taken the batches before it
        // (all but a few, whatever the batching). Without a yield after each full batch it
        // would have taken none: everything would be written at the end.
        let last = lines[lines.len() - 2]["seen"].as_u64().unwrap();
        assert!(last as usize >= batches / 2, "the reader had {last} frames");
    }

    #[tokio::test]
    async fn frame_parts_have_an_exact_size() {
        let b = Body::parts(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"c"),
        ]);
        assert_eq!(b.size_hint().exact(), Some(3));
        assert_eq!(
            b.collect().await.unwrap().to_bytes(),
            Bytes::from_static(b"abc")
        );
    }
}
