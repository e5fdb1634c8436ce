//! Polling again at once what woke itself while being polled, instead of through the
//! scheduler.
//!
//! An HTTP connection polled in the same task as the request it serves wakes that task from
//! inside its own poll: hyper hands a request body, a request or an answer between the
//! connection and its user through channels, and the side that sends wakes the side that
//! waits, which is the task being polled. Tokio's multi-threaded scheduler takes such a wake
//! for a yield: the task goes to the back of the run queue and an idle thread of the runtime is
//! woken to help with it, to find nothing to do once the task has run again. That is one
//! needless thread wake-up (and its context switches) per message, on both sides of a call.
//!
//! [`Repoll::poll`] runs a poll with a waker of its own. A wake that comes while the poll runs
//! makes it poll again at once, up to [`MAX_REPOLLS`] times, after which the task yields as it
//! would have; a wake that comes later goes to the task's waker as usual. Nothing is lost: a
//! wake during the poll is answered by the next poll, which it would have got anyway.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// How many times in a row one poll is repeated for wakes during it before the task yields
/// through its scheduler (as hyper's connection yields after 16 rounds of its own).
pub const MAX_REPOLLS: usize = 8;

/// Set while a poll runs.
const POLLING: u8 = 1;
/// Set by a wake; read (and cleared) by the poll that was running.
const WOKEN: u8 = 2;

/// The waker given to the polled future: marks a wake during a poll, forwards the others.
#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // One read-modify-write: either the running poll's closing swap sees the mark (and
        // polls again), or no poll was running and the task is woken.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

/// Polls through a waker that notices wakes during the poll; see the [module docs](self). One
/// per future (or connection) it polls, which may move between tasks.
#[derive(Debug, Clone)]
pub struct Repoll {
    shared: Arc<Shared>,
    waker: Waker,
}

impl Default for Repoll {
    fn default() -> Self {
        Self::new()
    }
}

impl Repoll {
    /// A new one.
    pub fn new() -> Self {
        let shared = Arc::new(Shared::default());
        let waker = Waker::from(Arc::clone(&shared));
        Self { shared, waker }
    }

    /// Calls `poll` with a context whose waker is this one's, again at once while it is
    /// pending and was woken during the call (up to [`MAX_REPOLLS`] times in all).
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.shared.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..MAX_REPOLLS {
            self.shared.state.store(POLLING, Ordering::Release);
            let out = poll(&mut inner);
            let woken = self.shared.state.swap(0, Ordering::AcqRel) & WOKEN != 0;
            if out.is_ready() || !woken {
                return out;
            }
        }
        // Still waking itself: let the scheduler run others first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Polls `poll` through [`Repoll::poll`] until it is ready.
    pub async fn run<T>(&self, mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
        std::future::poll_fn(|cx| self.poll(cx, &mut poll)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes it gets.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_cx() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter::default());
        (Arc::clone(&c), Waker::from(c))
    }

    /// A task's counting waker and a fresh `Repoll`.
    fn setup() -> (Arc<Counter>, Waker, Repoll) {
        let (count, waker) = counting_cx();
        (count, waker, Repoll::new())
    }

    /// A poll that is pending and wakes itself twice, then ready with its count of polls.
    fn wakes_itself_twice() -> impl FnMut(&mut Context<'_>) -> Poll<i32> {
        let mut polls = 0;
        move |cx| {
            polls += 1;
            if polls < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        }
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_without_waking_the_task() {
        let (count, waker, r) = setup();
        let mut cx = Context::from_waker(&waker);
        let out = r.poll(&mut cx, wakes_itself_twice());
        assert_eq!(out, Poll::Ready(3));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the task was not woken");
    }

    #[test]
    fn run_polls_until_ready() {
        let r = Repoll::new();
        let out = futures::executor::block_on(r.run(wakes_itself_twice()));
        assert_eq!(out, 3);
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task() {
        let (count, waker, r) = setup();
        let mut cx = Context::from_waker(&waker);
        let mut kept = None;
        let out: Poll<()> = r.poll(&mut cx, |cx| {
            kept = Some(cx.waker().clone());
            Poll::Pending
        });
        assert!(out.is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        kept.unwrap().wake();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the later wake went through"
        );
    }

    #[test]
    fn a_future_that_always_wakes_itself_yields_after_a_bound() {
        let (count, waker, r) = setup();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let out: Poll<()> = r.poll(&mut cx, |cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(out.is_pending());
        assert_eq!(polls, MAX_REPOLLS);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "it yields through the task"
        );
    }

    #[test]
    fn wakes_reach_the_task_of_the_latest_poll() {
        let r = Repoll::new();
        let mut kept = None;
        let (first, w1) = counting_cx();
        let _: Poll<()> = r.poll(&mut Context::from_waker(&w1), |cx| {
            kept = Some(cx.waker().clone());
            Poll::Pending
        });
        // Polled next from another task: a wake goes there.
        let (second, w2) = counting_cx();
        let _: Poll<()> = r.poll(&mut Context::from_waker(&w2), |_| Poll::Pending);
        kept.unwrap().wake();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wake_from_another_thread_during_the_poll_is_not_lost() {
        // Woken from a thread while the poll runs: either polled again at once or the task is
        // woken; never neither.
        for _ in 0..200 {
            let (count, waker, r) = setup();
            let mut cx = Context::from_waker(&waker);
            let mut polls = 0;
            let out: Poll<()> = r.poll(&mut cx, |cx| {
                polls += 1;
                if polls == 1 {
                    let w = cx.waker().clone();
                    std::thread::spawn(move || w.wake()).join().unwrap();
                }
                Poll::Pending
            });
            assert!(out.is_pending());
            assert!(polls == 2 || count.0.load(Ordering::SeqCst) == 1);
        }
    }
}
