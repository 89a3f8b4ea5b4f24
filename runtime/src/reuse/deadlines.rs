//! The request deadlines of one WASI 0.3 instance, kept behind one timer.
//!
//! tokio wakes its own driver (a write to the worker's eventfd, and one more turn of its poll loop)
//! whenever a timer is registered earlier than every timer it already waits for. A timer per request did
//! that on every request an instance took after going quiet, which under load is most of them: the
//! instance's idle timer lies further out than a request deadline. Here the instance's one timer stays at
//! the earliest deadline it was given until it fires, even after that request is gone, so a later request
//! with a later deadline registers nothing. When the timer fires it wakes the requests past their
//! deadline and moves on to the earliest deadline still waiting: one registration per request timeout,
//! not per request.

use futures::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// Entries are swept of finished requests when there are this many, or twice as many as the last sweep
/// kept: the list stays within twice the requests in flight, at a constant cost per request.
const FIRST_SWEEP: usize = 64;

/// The deadlines of the requests an instance serves, and the one timer behind them.
pub(super) struct Deadlines {
    timer: Pin<Box<Sleep>>,
    /// When the timer is set to fire, if it is set.
    armed: Option<Instant>,
    /// One entry per request with a deadline, roughly in the order they came.
    waiting: Vec<Arc<Expiry>>,
    /// The length at which `waiting` is next swept of finished requests.
    sweep_at: usize,
    /// How often the timer was set earlier than it was: what tokio pays a driver wake-up for.
    armed_earlier: u64,
}

/// One request's deadline, shared between the instance's list and the request.
struct Expiry {
    at: Instant,
    passed: AtomicBool,
    waker: AtomicWaker,
}

/// Completes when its request's deadline has passed; never, for a request without one.
pub(super) struct Expiration(Option<Arc<Expiry>>);

impl Default for Deadlines {
    fn default() -> Self {
        // Not armed: the timer's instant only matters once `armed` is set.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        Self {
            timer: Box::pin(tokio::time::sleep_until(far.into())),
            armed: None,
            waiting: Vec::new(),
            sweep_at: FIRST_SWEEP,
            armed_earlier: 0,
        }
    }
}

impl Deadlines {
    /// A request with deadline `at` (or none) starts: what completes when that deadline has passed.
    pub(super) fn start(&mut self, at: Option<Instant>) -> Expiration {
        let Some(at) = at else {
            return Expiration(None);
        };
        if self.waiting.len() >= self.sweep_at {
            self.waiting.retain(|e| Arc::strong_count(e) > 1);
            self.sweep_at = FIRST_SWEEP.max(2 * self.waiting.len());
        }
        let expiry = Arc::new(Expiry {
            at,
            passed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        self.waiting.push(expiry.clone());
        if self.armed.is_none_or(|armed| at < armed) {
            self.arm(at);
            self.armed_earlier += 1;
        }
        Expiration(Some(expiry))
    }

    /// Completes when the timer fires, having woken every request past its deadline and set the timer to
    /// the earliest deadline still waiting. Cancel-safe: nothing changes until the timer has fired.
    pub(super) async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.timer.as_mut().await;
        // tokio's clock: the same as std's, except in tests that pause it.
        self.expire(tokio::time::Instant::now().into_std());
    }

    fn expire(&mut self, now: Instant) {
        self.waiting.retain(|e| {
            if Arc::strong_count(e) == 1 {
                return false;
            }
            if e.at > now {
                return true;
            }
            e.passed.store(true, Release);
            e.waker.wake();
            false
        });
        self.armed = None;
        if let Some(next) = self.waiting.iter().map(|e| e.at).min() {
            self.arm(next);
        }
    }

    fn arm(&mut self, at: Instant) {
        self.timer.as_mut().reset(at.into());
        self.armed = Some(at);
    }
}

impl Future for Expiration {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(expiry) = &self.0 else {
            return Poll::Pending;
        };
        if expiry.passed.load(Acquire) {
            return Poll::Ready(());
        }
        expiry.waker.register(cx.waker());
        // Set between the check and the registration: its wake may have gone to the old waker.
        if expiry.passed.load(Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::collections::VecDeque;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Paused tokio time, as the instants requests carry.
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    #[tokio::test(start_paused = true)]
    async fn later_deadlines_leave_the_timer_where_it_is() {
        let mut deadlines = Deadlines::default();
        let now = now();
        let mut first = deadlines.start(Some(now + secs(5)));
        let mut later: Vec<_> = (1..=100)
            .map(|i| deadlines.start(Some(now + secs(5) + Duration::from_millis(i))))
            .collect();
        assert_eq!(
            deadlines.armed_earlier, 1,
            "only the first deadline sets the timer"
        );
        // One earlier than every other does move it.
        let mut earliest = deadlines.start(Some(now + secs(1)));
        assert_eq!(deadlines.armed_earlier, 2);

        tokio::time::timeout(secs(2), deadlines.fired())
            .await
            .unwrap();
        assert!(
            (&mut earliest).now_or_never().is_some(),
            "1 s deadline passed"
        );
        assert!(
            (&mut first).now_or_never().is_none(),
            "5 s deadline not yet"
        );
        tokio::time::timeout(secs(4), deadlines.fired())
            .await
            .unwrap();
        assert!(first.now_or_never().is_some(), "5 s deadline passed");
        assert!(later.iter_mut().all(|e| e.now_or_never().is_none()));
        assert_eq!(deadlines.armed_earlier, 2, "moving the timer later is free");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_keeps_the_timer_until_it_fires_and_no_entry_after() {
        let mut deadlines = Deadlines::default();
        drop(deadlines.start(Some(now() + secs(5))));
        // A request a second later, after the first finished: the timer is still armed, earlier.
        tokio::time::advance(secs(1)).await;
        let second = deadlines.start(Some(now() + secs(5)));
        assert_eq!(deadlines.armed_earlier, 1);
        tokio::time::timeout(secs(5), deadlines.fired())
            .await
            .unwrap();
        assert_eq!(
            deadlines.waiting.len(),
            1,
            "the finished request's entry is gone"
        );
        tokio::time::timeout(secs(2), deadlines.fired())
            .await
            .unwrap();
        second.await;
        // Nothing waits: the timer is not armed, and `fired` never completes.
        assert!(deadlines.waiting.is_empty());
        assert!(
            tokio::time::timeout(secs(60), deadlines.fired())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_list_stays_within_twice_the_requests_in_flight() {
        let mut deadlines = Deadlines::default();
        let mut in_flight = VecDeque::new();
        for _ in 0..10_000 {
            in_flight.push_back(deadlines.start(Some(now() + secs(30))));
            if in_flight.len() > 10 {
                in_flight.pop_front();
            }
            assert!(deadlines.waiting.len() <= FIRST_SWEEP.max(2 * 10) + 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_never_expires() {
        let mut deadlines = Deadlines::default();
        let never = deadlines.start(None);
        assert!(deadlines.waiting.is_empty() && deadlines.armed.is_none());
        assert!(tokio::time::timeout(secs(3600), never).await.is_err());
    }
}
