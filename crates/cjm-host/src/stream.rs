//! Reading a worker's NDJSON stream into chunks: control lines (end, error) are interpreted per
//! worker flavor, and an error is always an `Err` item, never a data chunk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cjm_core::wire::StreamDecoder;
use cjm_core::{CallContext, PluginError};
use futures::Stream;
use hyper::body::{Body, Incoming};
use serde_json::Value;
use tokio::time::Sleep;

use cjm_core::ChunkStream;

use crate::client::WorkerClient;
use crate::stats::{CallGuard, Outcome};
use crate::transport::Conn;

/// The owned future of the call's cancellation token.
type CancelFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A stream of chunks from `POST /execute_stream`: the body's data frames go through a
/// [`StreamDecoder`] (which holds the protocol's line rules and its line cap), while this type
/// adds the I/O around it: the connection, the call's cancellation and its deadline.
pub(crate) struct NdjsonStream {
    client: Arc<WorkerClient>,
    body: Incoming,
    conn: Option<Conn>,
    cancel: CancelFuture,
    deadline: Option<Pin<Box<Sleep>>>,
    decoder: StreamDecoder,
    finished: bool,
}

impl NdjsonStream {
    /// Reads `body`; `conn` goes back to the pool after a clean end.
    pub(crate) fn new(
        client: Arc<WorkerClient>,
        body: Incoming,
        conn: Conn,
        ctx: CallContext,
    ) -> Self {
        let token = ctx.cancellation().clone();
        let decoder = StreamDecoder::new(client.flavor());
        Self {
            client,
            body,
            conn: Some(conn),
            cancel: Box::pin(async move { token.cancelled_owned().await }),
            deadline: ctx
                .deadline()
                .map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            decoder,
            finished: false,
        }
    }

    fn fail(&mut self, e: PluginError) -> Poll<Option<Result<Value, PluginError>>> {
        self.finished = true;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for NdjsonStream {
    type Item = Result<Value, PluginError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The connection hands each frame to the body from inside this poll: answered here,
        // not by the runtime (`cjm_core::repoll`).
        match this.conn.as_ref().map(Conn::repoll) {
            Some(repoll) => repoll.poll(cx, |cx| this.poll_lines(cx)),
            None => this.poll_lines(cx),
        }
    }
}

impl NdjsonStream {
    /// The next chunk: one already decoded, or what the connection brings.
    fn poll_lines(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Value, PluginError>>> {
        let this = self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            // Chunks already received go out first, without polling anything else.
            match this.decoder.next_item() {
                Some(Ok(v)) => return Poll::Ready(Some(Ok(v))),
                Some(Err(_)) if this.decoder.ended_without_end() => {
                    // Said as a lost connection, so that the worker's exit can explain it.
                    return this.fail(crate::transport::ended_early());
                }
                Some(Err(e)) => return this.fail(e),
                None if this.decoder.is_over() => {
                    this.finished = true;
                    if let Some(conn) = this.conn.take() {
                        this.client.transport().give_back(conn);
                    }
                    return Poll::Ready(None);
                }
                None => {}
            }
            if this.cancel.as_mut().poll(cx).is_ready() {
                this.client.cancel_original();
                return this.fail(PluginError::cancelled("the stream was cancelled"));
            }
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    this.client.cancel_original();
                    return this.fail(PluginError::timeout("the stream's deadline passed"));
                }
            }
            // The connection's I/O runs here: the worker's lines are read in the reader's own
            // task.
            let running = this.conn.as_mut().is_none_or(|c| c.drive(cx));
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending if !running => return this.fail(crate::transport::ended_early()),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.decoder.push(data);
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.fail(crate::transport::lost(e)),
                Poll::Ready(None) => this.decoder.close(),
            }
        }
    }
}

impl Drop for NdjsonStream {
    fn drop(&mut self) {
        if !self.finished && tokio::runtime::Handle::try_current().is_ok() {
            // Dropping `conn` and `body` closes the connection: a cjm worker cancels the call.
            self.client.cancel_original();
        }
    }
}

/// A call's stream with its accounting: the [`CallGuard`] is settled at the stream's end (as a
/// success), at its first error item (as that error), or when the stream is dropped before
/// either (as a cancellation: abandoning a stream is neither a success nor a failure of the
/// plugin).
pub(crate) struct GuardedStream {
    inner: ChunkStream,
    guard: Option<CallGuard>,
}

impl GuardedStream {
    pub(crate) fn new(inner: ChunkStream, guard: CallGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl Stream for GuardedStream {
    type Item = Result<Value, PluginError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = std::task::ready!(this.inner.as_mut().poll_next(cx));
        let outcome = match &item {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(Outcome::of_error(e)),
            None => Some(Outcome::Ok),
        };
        if let Some(outcome) = outcome {
            if let Some(g) = this.guard.take() {
                g.finish(outcome);
            }
        }
        Poll::Ready(item)
    }
}
