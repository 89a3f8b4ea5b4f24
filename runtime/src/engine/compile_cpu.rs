//! The CPU time a guest's load takes.
//!
//! A load is charged to the service that runs it (see [`crate::cpu`]). wasmtime compiles a guest's
//! functions in parallel on rayon's global pool, so the loading thread's CPU clock misses most of the work,
//! and the process's clock also counts whatever other services ran meanwhile. The global pool's threads do
//! nothing but compile, so a load's CPU is the loading thread's own plus what the pool's threads used
//! over it (while loads overlap, each is charged the pool's work for both). That needs the pool's threads'
//! clocks, which only a pool built here records: it is built before the process's first compile (a process
//! that only ever loads from the compile cache starts no compiler threads). Should rayon's global pool
//! exist before that, the process's clock is used, as before.

use crate::cpu::{ClockId, cpu_clock};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The CPU-time clocks of rayon's global pool's threads, recorded as each starts (before the pool is
/// built, some may already have).
static POOL_CLOCKS: Mutex<Vec<libc::clockid_t>> = Mutex::new(Vec::new());
/// Whether this module built the global pool, so that [`POOL_CLOCKS`] holds all its threads.
static POOL_COUNTED: OnceLock<bool> = OnceLock::new();

/// Builds rayon's global pool so that its threads' CPU can be read, unless it exists already; once per
/// process, before its first compile.
pub(super) fn count_pool_threads() {
    POOL_COUNTED.get_or_init(|| {
        let built = rayon::ThreadPoolBuilder::new()
            .start_handler(|_| {
                if let Some(clock) = this_thread_cpu_clock() {
                    lock(&POOL_CLOCKS).push(clock);
                }
            })
            .build_global();
        if let Err(e) = &built {
            tracing::debug!("load CPU is taken from the process's clock: {e}");
        }
        built.is_ok()
    });
}

/// Runs `load` on this thread; returns its result and the CPU time it took (see the module's docs).
pub(super) fn measure<R>(load: impl FnOnce() -> R) -> (R, Duration) {
    // Decided once: the pool may be built during this load, for its compile, and its threads start at zero.
    let counted = POOL_COUNTED.get() != Some(&false);
    let clock = || {
        if counted {
            let pool: Duration = lock(&POOL_CLOCKS).iter().map(|&clock| read(clock)).sum();
            pool + cpu_clock(ClockId::ThreadCPUTime)
        } else {
            cpu_clock(ClockId::ProcessCPUTime)
        }
    };
    let before = clock();
    let result = load();
    (result, clock().saturating_sub(before))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The CPU-time clock of the calling thread, readable from any thread while this one lives (the global
/// pool's threads live as long as the process).
fn this_thread_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self` is the calling thread, alive for the call; `clock` is a valid out-pointer.
    let failed = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (failed == 0).then_some(clock)
}

/// A thread CPU clock's reading; zero if it cannot be read.
fn read(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer; an invalid clock is reported as an error, not undefined.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uses `cpu` of this thread's CPU time, however long the machine makes that take.
    fn spin(cpu: Duration) {
        let start = cpu_clock(ClockId::ThreadCPUTime);
        while cpu_clock(ClockId::ThreadCPUTime) - start < cpu {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn work_on_the_pool_and_on_the_loading_thread_is_counted() {
        count_pool_threads();
        assert_eq!(
            POOL_COUNTED.get(),
            Some(&true),
            "the global pool was built here"
        );
        let ((), used) = measure(|| {
            spin(Duration::from_millis(50));
            rayon::join(
                || spin(Duration::from_millis(100)),
                || spin(Duration::from_millis(100)),
            );
        });
        // Other tests of this binary may compile meanwhile: only the lower bound is this test's (the
        // upper one is in `tests/load_cpu.rs`, alone in its process).
        assert!(used >= Duration::from_millis(250), "{used:?}");
    }
}
