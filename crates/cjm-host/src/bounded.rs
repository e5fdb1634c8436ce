//! A call's start raced against its deadline and its cancellation token ([`Bounded`]), for
//! `/execute` and `/execute_stream`.
//!
//! A hand-written future rather than an `async fn` with `select!`: an `async fn` that takes the
//! work by value keeps it as an argument and again inside its `select!`, and the compiler lays
//! the two out side by side. That made every `/execute` future three times the size of the
//! request it waits for (13.5 KB of the 15 KB that `PluginManager::execute` returned), and the
//! whole future is copied each time a caller moves it: into a task, a `FuturesUnordered`, a
//! box. This one holds the work once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use cjm_core::{CallContext, ErrorCategory, PluginError};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFuture;

use crate::client::WorkerClient;

pin_project! {
    /// `work` until the call's token is cancelled or its deadline passes, whichever comes
    /// first; a ready answer is taken before either. Ending with a cancellation or a timeout
    /// (the work's own included) sends an original worker `POST /cancel` in the background
    /// ([`WorkerClient::cancel_original`]): it does not notice the abandoned connection.
    pub(crate) struct Bounded<'a, F> {
        #[pin]
        work: F,
        #[pin]
        late: Option<Sleep>,
        #[pin]
        cancelled: WaitForCancellationFuture<'a>,
        client: &'a Arc<WorkerClient>,
    }
}

impl<'a, F> Bounded<'a, F> {
    /// `work` for the call of `ctx`, made by `client`.
    pub(crate) fn new(client: &'a Arc<WorkerClient>, ctx: &'a CallContext, work: F) -> Self {
        Self {
            work,
            late: ctx
                .deadline()
                .map(|d: Instant| tokio::time::sleep_until(d.into())),
            cancelled: ctx.cancellation().cancelled(),
            client,
        }
    }
}

impl<T, F> Future for Bounded<'_, F>
where
    F: Future<Output = Result<T, PluginError>>,
{
    type Output = Result<T, PluginError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = if let Poll::Ready(r) = this.work.poll(cx) {
            r
        } else if this
            .late
            .as_pin_mut()
            .is_some_and(|s| s.poll(cx).is_ready())
        {
            Err(PluginError::timeout("the call's deadline passed"))
        } else if this.cancelled.poll(cx).is_ready() {
            Err(PluginError::cancelled("the call was cancelled"))
        } else {
            return Poll::Pending;
        };
        if let Err(e) = &result {
            if matches!(
                e.category,
                ErrorCategory::Cancelled | ErrorCategory::Timeout
            ) {
                this.client.cancel_original();
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use cjm_core::Call;

    use super::*;

    /// The size of a [`Bounded`] around `work`'s type.
    fn bounded_size<F>(_work: &F) -> usize {
        std::mem::size_of::<Bounded<'static, F>>()
    }

    #[test]
    fn the_work_is_held_once() {
        let work = async {
            let buf = [0u8; 4096];
            tokio::task::yield_now().await;
            Ok::<_, PluginError>(buf.len())
        };
        let work_size = std::mem::size_of_val(&work);
        let overhead = bounded_size(&std::future::ready(()));
        assert!(
            overhead < 512,
            "the deadline and token take {overhead} bytes"
        );
        let size = bounded_size(&work);
        assert!(
            size <= work_size + overhead,
            "{size} bytes around {work_size} bytes of work"
        );
    }

    #[test]
    fn an_execute_future_stays_small() {
        // It was 15 KB when the start was an `async fn` racing its work with `select!`; every
        // caller that spawns or boxes it copies it whole.
        let m = crate::PluginManager::builder()
            .build()
            .expect("a manager with no search paths");
        let call = Call::new(vec![serde_json::json!("echo")]);
        let f = m.execute("p", call);
        let size = std::mem::size_of_val(&f);
        assert!(
            size < 8 << 10,
            "PluginManager::execute's future is {size} bytes"
        );
    }
}
