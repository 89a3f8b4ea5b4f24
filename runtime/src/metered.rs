//! Metering of futures: every poll of a task is charged to its service's [`CpuMeter`] (its CPU time) and
//! host memory account (what it allocates), and host work that runs no guest code can be held back while
//! the service owes CPU.

use crate::cpu::CpuMeter;
use crate::identity::{AsUser, FileUser};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Runs a guest future metered by `meter`, bounded by `timeout` and polled with `user`'s file rights.
pub(crate) async fn run_metered<R>(
    meter: &Arc<CpuMeter>,
    timeout: Option<Duration>,
    user: Option<Arc<FileUser>>,
    run: impl Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    let run = AsUser::new(run, user);
    Metered::new(crate::deadline::with_timeout(timeout, run), meter.clone()).await
}

/// A future whose every poll is charged to a [`CpuMeter`]. Wrapping whole tasks (a connection, an
/// instance from setup to teardown) charges the host work a request causes, as a cgroup would. A poll
/// inside another metered poll on the same thread is charged once, by the outer one.
pub(crate) struct Metered<F> {
    /// `None` once finished: the future is dropped inside the last metered poll, so closing its sockets
    /// and freeing its buffers is charged too.
    inner: Option<Pin<Box<F>>>,
    meter: Arc<CpuMeter>,
    /// Whether the task waits out the meter's debt between polls (see [`Metered::throttled`]).
    throttled: bool,
    /// Whether what it allocates is the service's clients' rather than its instances' (see
    /// [`Metered::for_clients`]).
    for_clients: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

thread_local! {
    /// Set while a [`Metered`] poll runs on this thread.
    static METERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Clears [`METERING`] when the outer poll ends, a panicking one included.
struct MeteringGuard;

impl Drop for MeteringGuard {
    fn drop(&mut self) {
        METERING.set(false);
    }
}

impl<F: Future> Metered<F> {
    pub(crate) fn new(inner: F, meter: Arc<CpuMeter>) -> Self {
        Metered {
            inner: Some(Box::pin(inner)),
            meter,
            throttled: false,
            for_clients: false,
            pause: None,
        }
    }

    /// Charges what the task allocates to the service's clients, not its instances: for the accept loop
    /// and connections, whose memory counts against the limit but is no instance's doing.
    pub(crate) fn for_clients(self) -> Self {
        Metered {
            for_clients: true,
            ..self
        }
    }

    /// Metered, and held back while the meter is in debt: after a poll that leaves the bucket owing, the
    /// task is not polled again until the debt is paid. For host work that runs no guest code (parsing,
    /// refusing, writing responses, outbound I/O), which the epoch callback that parks instances never
    /// sees.
    pub(crate) fn throttled(inner: F, meter: Arc<CpuMeter>) -> Self {
        Metered {
            throttled: true,
            ..Self::new(inner, meter)
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Some(pause) = this.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        let Some(inner) = this.inner.as_mut() else {
            panic!("a Metered future was polled after it finished");
        };
        if METERING.get() {
            let result = inner.as_mut().poll(cx);
            if result.is_ready() {
                this.inner = None;
            }
            return result;
        }
        METERING.set(true);
        let guard = MeteringGuard;
        let stats = this.meter.stats();
        let account = if this.for_clients {
            stats.client_account()
        } else {
            stats.host_account()
        };
        let _charging = account.charging();
        let start = Instant::now();
        let result = inner.as_mut().poll(cx);
        if result.is_ready() {
            this.inner = None;
        }
        let end = Instant::now();
        drop(guard);
        this.meter.charge(end - start, end);
        if this.throttled
            && result.is_pending()
            && let Some(wait) = this.meter.throttle_for()
        {
            let mut pause = Box::pin(tokio::time::sleep(wait));
            if pause.as_mut().poll(cx).is_pending() {
                this.pause = Some(pause);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn spin(for_: Duration) {
        let start = Instant::now();
        while start.elapsed() < for_ {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn metering_counts_cpu_not_waiting() {
        let meter = Arc::new(CpuMeter::new(Arc::new(Stats::default()), None, None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            Metered::new(tokio::time::sleep(Duration::from_millis(50)), meter.clone()).await
        });
        assert!(meter.stats().snapshot().cpu_time < Duration::from_millis(20));
        rt.block_on(Metered::new(
            async { spin(Duration::from_millis(30)) },
            meter.clone(),
        ));
        assert!(meter.stats().snapshot().cpu_time >= Duration::from_millis(25));
    }

    #[test]
    fn a_throttled_task_waits_out_the_debt_between_polls() {
        let meter = Arc::new(CpuMeter::new(Arc::new(Stats::default()), Some(0.5), None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // One poll of 100 ms (a refused request's parsing, say), then one more after a yield.
        let started = Instant::now();
        rt.block_on(Metered::throttled(
            async {
                spin(Duration::from_millis(100));
                tokio::task::yield_now().await;
            },
            meter.clone(),
        ));
        // 50 ms of burst minus 100 ms used = 50 ms of debt, repaid at 0.5 CPU: 100 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
        // Unthrottled, the same task does not wait.
        let meter = Arc::new(CpuMeter::new(Arc::new(Stats::default()), Some(0.5), None));
        let started = Instant::now();
        rt.block_on(Metered::new(
            async {
                spin(Duration::from_millis(100));
                tokio::task::yield_now().await;
            },
            meter,
        ));
        assert!(started.elapsed() < Duration::from_millis(150));
    }

    #[test]
    fn a_poll_inside_a_metered_poll_is_charged_once() {
        let meter = Arc::new(CpuMeter::new(Arc::new(Stats::default()), None, None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inner = Metered::new(async { spin(Duration::from_millis(40)) }, meter.clone());
        rt.block_on(Metered::new(inner, meter.clone()));
        let charged = meter.stats().snapshot().cpu_time;
        assert!(
            charged >= Duration::from_millis(40) && charged < Duration::from_millis(70),
            "{charged:?}"
        );
    }
}
