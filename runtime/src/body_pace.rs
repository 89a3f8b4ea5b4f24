//! A minimum rate for the part of a request body that streams to the guest after admission.
//!
//! [`crate::preread`] reads a body's first 64 KiB before its request takes a slot; the rest arrives while the
//! request runs, holding its slot and instance. Without a pace, a client that sends those 64 KiB and then
//! a byte now and then holds both until `request-timeout`. [`Paced`] allows the guest to wait [`GRACE`] for
//! the rest, plus one second for every `min-request-body-rate` bytes that arrive; past that, the body ends
//! with [`TooSlow`] (the client gets 408). Only time the guest spent *waiting* for the body counts, so a
//! guest that reads slowly never gets its client cut off; nor does a wait during which the service stopped
//! reading its clients ([`crate::client_gate`]), since the bytes that did not arrive were its own doing.

use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How long the guest may wait for the rest of a body before the rate it arrives at counts.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// How often a wait that ran out while reads were paused looks again.
const PAUSED_LOOK: Duration = Duration::from_millis(100);

/// The pace a body is held to.
pub(crate) struct Pace {
    /// Bytes per second; 0 sets no minimum.
    pub(crate) rate: u64,
    /// Whether the service has paused reading its clients.
    pub(crate) paused: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Any body error, boxed as [`http_body_util::Limited`] and wasi-http expect.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a paced body ended: its client fell behind the minimum rate.
#[derive(Debug)]
pub(crate) struct TooSlow {
    rate: u64,
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body arrived slower than min-request-body-rate ({} bytes/s)",
            self.rate
        )
    }
}

impl std::error::Error for TooSlow {}

/// `inner`, ended with [`TooSlow`] once the guest has waited for it longer than its bytes allow.
pub(crate) struct Paced<B> {
    inner: B,
    pace: Pace,
    received: u64,
    /// Time spent waiting in earlier waits.
    waited: Duration,
    /// The current wait's start and the alarm that ends it, while the guest waits.
    wait: Option<(Instant, Pin<Box<Sleep>>)>,
    /// When the body last woke its reader: a wait ends when the data came, not when a busy guest next
    /// looked.
    woke: Option<Arc<WakeClock>>,
}

/// A waker that notes when it was first woken, then wakes the task it stands for.
struct WakeClock {
    woken_at: Mutex<Option<Instant>>,
    task: Waker,
}

impl Wake for WakeClock {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        self.task.wake_by_ref();
    }
}

impl<B> Paced<B> {
    /// Holds `inner` to `pace`.
    pub(crate) fn new(inner: B, pace: Pace) -> Self {
        Paced {
            inner,
            pace,
            received: 0,
            waited: Duration::ZERO,
            wait: None,
            woke: None,
        }
    }

    /// All the waiting the bytes received so far allow (never asked of a rate of 0, which sets no minimum).
    fn allowance(&self) -> Duration {
        GRACE.saturating_add(Duration::from_secs_f64(
            self.received as f64 / self.pace.rate as f64,
        ))
    }

    /// When the body woke its reader since the last poll, if it did.
    fn woken_at(&mut self) -> Option<Instant> {
        let clock = self.woke.take()?;
        *clock.woken_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the current wait, if any, as data arrives: when the body woke its reader (`woken_at`), or now.
    fn arrived(&mut self, bytes: usize, woken_at: Option<Instant>) {
        if let Some((since, _)) = self.wait.take() {
            let ended = woken_at.unwrap_or_else(Instant::now).max(since);
            self.waited += ended - since;
        }
        self.received = self.received.saturating_add(bytes as u64);
    }

    /// Whether the guest, waiting again, has now waited too long; else the alarm will wake it when it has.
    fn out_of_time(&mut self, cx: &mut Context<'_>) -> bool {
        // Fixed within one wait: the allowance changes only as bytes arrive, which ends the wait.
        let left = self.allowance().saturating_sub(self.waited);
        loop {
            let (since, alarm) = self.wait.get_or_insert_with(|| {
                let now = Instant::now();
                (now, Box::pin(tokio::time::sleep_until(now + left)))
            });
            if alarm.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            if (self.pace.paused)() {
                // The wait so far does not count: it restarts now, and looks again soon.
                *since = now;
                alarm.as_mut().reset(now + PAUSED_LOOK);
            } else if now.duration_since(*since) >= left {
                return true;
            } else {
                // A look while paused: the wait goes on to its end.
                alarm.as_mut().reset(*since + left);
            }
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = &mut *self;
        if this.pace.rate == 0 {
            return Pin::new(&mut this.inner)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Into::into)));
        }
        // A wake that brings no data does not end the wait: only one followed by a frame counts.
        let woken_at = this.woken_at();
        let clock = Arc::new(WakeClock {
            woken_at: Mutex::new(None),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(clock.clone());
        this.woke = Some(clock);
        match Pin::new(&mut this.inner).poll_frame(&mut Context::from_waker(&waker)) {
            Poll::Ready(frame) => {
                let bytes = match &frame {
                    Some(Ok(frame)) => frame.data_ref().map_or(0, hyper::body::Buf::remaining),
                    _ => 0,
                };
                this.arrived(bytes, woken_at);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.out_of_time(cx) => {
                this.wait = None;
                // Never polled again after an error, so the inner body is not woken in vain.
                let rate = this.pace.rate;
                Poll::Ready(Some(Err(Box::new(TooSlow { rate }))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body whose chunks a test sends when it likes.
    struct Chunks(mpsc::Receiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    fn paced(rate: u64) -> (mpsc::Sender<Bytes>, Paced<Chunks>) {
        paced_unless(rate, || false)
    }

    fn paced_unless(
        rate: u64,
        paused: impl Fn() -> bool + Send + Sync + 'static,
    ) -> (mpsc::Sender<Bytes>, Paced<Chunks>) {
        let (tx, rx) = mpsc::channel(64);
        let pace = Pace {
            rate,
            paused: Box::new(paused),
        };
        (tx, Paced::new(Chunks(rx), pace))
    }

    /// Reads `body` to its end; the error if it ends with one, and when.
    async fn read_out(mut body: Paced<Chunks>) -> (Option<String>, Duration) {
        let started = Instant::now();
        while let Some(frame) = body.frame().await {
            if let Err(e) = frame {
                return (Some(e.to_string()), started.elapsed());
            }
        }
        (None, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_ends_after_the_grace() {
        let (tx, body) = paced(1024);
        let (error, after) = read_out(body).await;
        drop(tx);
        assert!(error.unwrap().contains("1024 bytes/s"));
        assert_eq!(after, GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn each_chunk_earns_more_waiting_at_the_rate() {
        let (tx, body) = paced(1024);
        let reader = tokio::spawn(read_out(body));
        // 4 s (within the grace), then 2 KiB, which earns 2 s more; 2.5 s later (past the grace) a byte.
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.send(Bytes::from(vec![0; 2048])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        // Allowed 7 s and a byte's worth of waiting in all: the body ends just past 7 s (5 s without the credit).
        let (error, after) = reader.await.unwrap();
        assert!(error.is_some());
        assert!(
            after > Duration::from_secs(7) && after < Duration::from_millis(7010),
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_above_the_rate_is_never_cut() {
        let (tx, body) = paced(1024);
        let reader = tokio::spawn(read_out(body));
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(Bytes::from(vec![0; 1100])).await.unwrap();
        }
        drop(tx);
        let (error, after) = reader.await.unwrap();
        assert_eq!(error, None);
        assert_eq!(after, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_guest_spends_elsewhere_is_not_counted() {
        let (tx, mut body) = paced(1024);
        // The guest does other work for a minute before it reads; the client sent nothing meanwhile.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            tx.send(Bytes::from_static(b"late but in time"))
                .await
                .unwrap();
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "late but in time");
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waits_while_the_service_paused_reads_do_not_count() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let paused = Arc::new(AtomicBool::new(true));
        let flag = paused.clone();
        let (tx, body) = paced_unless(1024, move || flag.load(Ordering::Relaxed));
        let reader = tokio::spawn(read_out(body));
        // Reads stay paused for 30 s, then resume: the client has its whole grace from then.
        tokio::time::sleep(Duration::from_secs(30)).await;
        paused.store(false, Ordering::Relaxed);
        let (error, after) = reader.await.unwrap();
        drop(tx);
        assert!(error.is_some());
        assert!(
            after >= Duration::from_secs(30) + GRACE - PAUSED_LOOK
                && after <= Duration::from_secs(30) + GRACE + PAUSED_LOOK,
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_the_data_came_not_when_a_busy_guest_looked() {
        let (tx, mut body) = paced(1024);
        // Waits 4 s; the chunk comes then, but the guest looks only a minute later.
        assert!(!poll_once(&mut body).await, "nothing has come yet");
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(body.frame().await.unwrap().is_ok());
        // 4 s of the 5 s grace (and a byte's worth) are spent: the next wait ends about 1 s on.
        let (error, after) = read_out(body).await;
        drop(tx);
        assert!(error.is_some());
        assert!(
            after >= Duration::from_secs(1) && after < Duration::from_millis(1010),
            "{after:?}"
        );
    }

    /// Polls `body` once, as a guest that starts waiting and then does something else; whether it had a frame.
    async fn poll_once(body: &mut Paced<Chunks>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_sets_no_minimum() {
        let (tx, mut body) = paced(0);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            tx.send(Bytes::from_static(b"x")).await.unwrap();
        });
        assert!(body.frame().await.unwrap().is_ok());
        sender.await.unwrap();
    }
}
