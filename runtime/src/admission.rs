//! Admission control: how many requests may run at once, and who waits.

use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Counts running requests of a service against its concurrency limit, with a bounded wait queue.
#[derive(Default)]
pub(crate) struct Admission {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    running: usize,
    waiting: usize,
    paused: bool,
    closed: bool,
}

/// A running slot; released on drop.
pub(crate) struct Permit(Arc<Admission>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.changed.notify_waiters();
    }
}

/// Removes a request from the wait count however its wait ends (admitted, refused, or dropped).
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot, waiting for one if the queue has room; `None` means refuse the request (503).
    pub(crate) async fn admit(
        self: &Arc<Self>,
        max_running: Option<usize>,
        queue_depth: usize,
    ) -> Option<Permit> {
        let mut waiting = None;
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if !state.paused && max_running.is_none_or(|max| state.running < max) {
                    state.running += 1;
                    return Some(Permit(self.clone()));
                }
                if waiting.is_none() {
                    if state.waiting >= queue_depth {
                        return None;
                    }
                    state.waiting += 1;
                    waiting = Some(Waiting(self));
                }
            }
            notified.await;
        }
    }

    /// Stops admitting (requests queue as if the service were full) or starts again.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.changed.notify_waiters();
    }

    /// Refuses every request from now on, including those waiting.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// (running, waiting) now.
    pub(crate) fn load(&self) -> (usize, usize) {
        let state = self.lock();
        (state.running, state.waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_queue_is_bounded_and_drains_in_order() {
        let admission = Arc::new(Admission::default());
        let first = admission.admit(Some(1), 1).await.unwrap();
        let queued = tokio::spawn({
            let a = admission.clone();
            async move { a.admit(Some(1), 1).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(admission.load(), (1, 1));
        assert!(
            admission.admit(Some(1), 1).await.is_none(),
            "queue full → refused"
        );
        drop(first);
        assert!(
            queued.await.unwrap(),
            "the queued request runs once the slot frees"
        );
        assert_eq!(admission.load(), (0, 0));
    }

    #[tokio::test]
    async fn paused_requests_wait_and_closing_refuses_them() {
        let admission = Arc::new(Admission::default());
        admission.set_paused(true);
        assert!(
            admission.admit(None, 0).await.is_none(),
            "no queue room while paused → refused"
        );
        let waiter = tokio::spawn({
            let a = admission.clone();
            async move { a.admit(None, 4).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        admission.close();
        assert!(!waiter.await.unwrap());
    }
}
