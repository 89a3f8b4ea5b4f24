//! CPU accounting and the CPU-rate token bucket.
//!
//! Every poll of a guest future is metered with the thread's CPU clock, so the figure covers guest code
//! and the host calls it makes, and nothing else the thread does. The charge drains a token bucket that
//! refills at the service's CPU rate; while the bucket is in debt, the epoch callback parks instances
//! (see [`crate::instance`]) until it is paid back — throttled like CFS, never killed.

use crate::stats::Stats;
use nix::time::{ClockId, clock_gettime};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The bucket holds at most this much CPU time per CPU of rate: one CFS period's worth.
const BURST_WINDOW: Duration = Duration::from_millis(100);

/// CPU meter of one service: totals into its stats, and an optional rate limit.
pub(crate) struct CpuMeter {
    stats: Arc<Stats>,
    bucket: Mutex<Option<Bucket>>,
}

struct Bucket {
    /// CPU-seconds per second.
    rate: f64,
    /// Available CPU-seconds; negative while in debt.
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate * BURST_WINDOW.as_secs_f64());
        self.refilled = now;
    }
}

impl CpuMeter {
    pub(crate) fn new(stats: Arc<Stats>, rate: Option<f64>) -> Self {
        let meter = CpuMeter {
            stats,
            bucket: Mutex::new(None),
        };
        meter.set_rate(rate);
        meter
    }

    /// Changes the rate for everything that runs from now on (`None` lifts the limit).
    pub(crate) fn set_rate(&self, rate: Option<f64>) {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        match (rate, bucket.as_mut()) {
            (None, _) => *bucket = None,
            (Some(rate), Some(b)) => {
                b.refill(Instant::now());
                b.rate = rate;
            }
            (Some(rate), None) => {
                *bucket = Some(Bucket {
                    rate,
                    tokens: rate * BURST_WINDOW.as_secs_f64(),
                    refilled: Instant::now(),
                })
            }
        }
    }

    fn charge(&self, used: Duration) {
        self.stats.add_cpu(used);
        if let Some(bucket) = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            bucket.refill(Instant::now());
            bucket.tokens -= used.as_secs_f64();
        }
    }

    /// How long to park so the bucket is out of debt, or `None` to keep running.
    pub(crate) fn throttle_for(&self) -> Option<Duration> {
        let mut guard = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = guard.as_mut()?;
        bucket.refill(Instant::now());
        (bucket.tokens < 0.0).then(|| Duration::from_secs_f64(-bucket.tokens / bucket.rate))
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// The error a guest run ends with when the host-side deadline fires while the guest waits on I/O
/// (CPU-bound guests are stopped earlier by the epoch deadline).
#[derive(Debug)]
pub(crate) struct HostTimeout;

impl std::fmt::Display for HostTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request timeout elapsed while the guest was waiting")
    }
}

impl std::error::Error for HostTimeout {}

/// Runs a guest future metered by `meter` and bounded by `timeout`.
pub(crate) async fn run_metered<R>(
    meter: &CpuMeter,
    timeout: Option<Duration>,
    run: impl Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    let metered = Metered::new(run, meter);
    match timeout {
        // A little slack lets the epoch deadline (which knows the guest was computing) fire first.
        Some(t) => tokio::time::timeout(t + Duration::from_millis(20), metered)
            .await
            .unwrap_or_else(|_| Err(wasmtime::Error::new(HostTimeout))),
        None => metered.await,
    }
}

fn thread_cpu_time() -> Duration {
    // The thread CPU clock cannot fail on Linux for the calling thread; zero keeps metering harmless if it did.
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// A future whose every poll is charged to a [`CpuMeter`].
pub(crate) struct Metered<'a, F> {
    inner: Pin<Box<F>>,
    meter: &'a CpuMeter,
}

impl<'a, F: Future> Metered<'a, F> {
    pub(crate) fn new(inner: F, meter: &'a CpuMeter) -> Self {
        Metered {
            inner: Box::pin(inner),
            meter,
        }
    }
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_time();
        let result = self.inner.as_mut().poll(cx);
        self.meter.charge(thread_cpu_time().saturating_sub(start));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_is_paid_back_at_the_rate() {
        let meter = CpuMeter::new(Arc::new(Stats::default()), Some(0.5));
        assert_eq!(
            meter.throttle_for(),
            None,
            "a full bucket does not throttle"
        );
        meter.charge(Duration::from_millis(150));
        // 50 ms of burst minus 150 ms used = 100 ms of debt, repaid at 0.5 CPU → about 200 ms.
        let wait = meter.throttle_for().unwrap();
        assert!(
            wait > Duration::from_millis(180) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        meter.set_rate(None);
        assert_eq!(meter.throttle_for(), None);
        assert_eq!(
            meter.stats().snapshot().cpu_time,
            Duration::from_millis(150)
        );
    }

    #[test]
    fn metering_counts_cpu_not_waiting() {
        let meter = CpuMeter::new(Arc::new(Stats::default()), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            Metered::new(tokio::time::sleep(Duration::from_millis(50)), &meter).await
        });
        assert!(meter.stats().snapshot().cpu_time < Duration::from_millis(20));
        rt.block_on(Metered::new(
            async {
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(30) {
                    std::hint::black_box(0u64);
                }
            },
            &meter,
        ));
        assert!(meter.stats().snapshot().cpu_time >= Duration::from_millis(25));
    }
}
