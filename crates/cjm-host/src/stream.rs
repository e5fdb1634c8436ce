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
        // Lines already received go out first, without touching the connection or the task's
        // waker: most chunks of a fast stream arrive several to a frame.
        if let Some(decoded) = this.decoded() {
            return decoded;
        }
        // The connection hands each frame to the body from inside this poll: answered here,
        // not by the runtime (`cjm_core::repoll`).
        match this.conn.as_ref().map(Conn::repoll) {
            Some(repoll) => repoll.poll(cx, |cx| this.poll_lines(cx)),
            None => this.poll_lines(cx),
        }
    }
}

impl NdjsonStream {
    /// What the lines received so far give: a chunk, the stream's error or its end; `None`
    /// when more input is needed.
    fn decoded(&mut self) -> Option<Poll<Option<Result<Value, PluginError>>>> {
        if self.finished {
            return Some(Poll::Ready(None));
        }
        match self.decoder.next_item() {
            Some(Ok(v)) => Some(Poll::Ready(Some(Ok(v)))),
            Some(Err(_)) if self.decoder.ended_without_end() => {
                // Said as a lost connection, so that the worker's exit can explain it.
                Some(self.fail(crate::transport::ended_early()))
            }
            Some(Err(e)) => Some(self.fail(e)),
            None if self.decoder.is_over() => {
                self.finished = true;
                if let Some(conn) = self.conn.take() {
                    self.client.transport().give_back(conn);
                }
                Some(Poll::Ready(None))
            }
            None => None,
        }
    }

    /// The next chunk: one already decoded, or what the connection brings.
    fn poll_lines(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Value, PluginError>>> {
        let this = self;
        loop {
            if let Some(decoded) = this.decoded() {
                return decoded;
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

/// How an [`ExplainedStream`] explains a failure: a future of the explained error.
pub(crate) type Explanation = Pin<Box<dyn Future<Output = PluginError> + Send>>;

/// A worker's stream whose error item is first explained (a lost connection becomes "the
/// worker crashed", with its exit status, once the supervisor knows); chunks pass straight
/// through, with no future made for them.
pub(crate) struct ExplainedStream<F> {
    inner: ChunkStream,
    explain: F,
    explaining: Option<Explanation>,
}

impl<F> ExplainedStream<F>
where
    F: FnMut(PluginError) -> Explanation,
{
    pub(crate) fn new(inner: ChunkStream, explain: F) -> Self {
        Self {
            inner,
            explain,
            explaining: None,
        }
    }
}

impl<F> Stream for ExplainedStream<F>
where
    F: FnMut(PluginError) -> Explanation + Unpin,
{
    type Item = Result<Value, PluginError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.explaining.is_none() {
            match std::task::ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Err(e)) => this.explaining = Some((this.explain)(e)),
                other => return Poll::Ready(other),
            }
        }
        let Some(explaining) = this.explaining.as_mut() else {
            return Poll::Ready(None);
        };
        let e = std::task::ready!(explaining.as_mut().poll(cx));
        this.explaining = None;
        Poll::Ready(Some(Err(e)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    #[tokio::test]
    async fn chunks_pass_through_and_the_error_is_explained() {
        let items = vec![
            Ok(json!(1)),
            Ok(json!(2)),
            Err(PluginError::transient("lost")),
        ];
        let mut explained = 0;
        let s = ExplainedStream::new(Box::pin(futures::stream::iter(items)), |e| {
            explained += 1;
            Box::pin(async move {
                tokio::task::yield_now().await;
                PluginError::fatal(format!("explained: {}", e.message))
            })
        });
        let got: Vec<_> = s.collect().await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().ok(), Some(&json!(1)));
        assert_eq!(got[1].as_ref().ok(), Some(&json!(2)));
        let e = got[2].as_ref().unwrap_err();
        assert_eq!(e.message, "explained: lost");
        assert_eq!(e.category, cjm_core::ErrorCategory::Fatal);
        assert_eq!(explained, 1);
    }
}
