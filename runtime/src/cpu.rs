//! CPU accounting and the CPU-rate token bucket.
//!
//! Every poll of a guest future is metered ([`crate::metered`]), so the figure covers guest code and the host calls it makes,
//! and nothing else the thread does. A poll is timed with the monotonic clock rather than the thread's
//! CPU clock: reading the CPU clock is a system call (six per request took ~7% of a loaded server's CPU
//! samples under `perf`), the monotonic one is not, and the two agree except while the thread is
//! preempted mid-poll, when the host is oversubscribed anyway and charging more only keeps the service
//! further under its quota. The charge drains a token bucket that refills at the service's CPU rate;
//! while the bucket is in debt, the epoch callback parks instances (see [`crate::instance`]) until it
//! is paid back — throttled like CFS, never killed.

use crate::knobs::value::MAX_DURATION;
use crate::stats::Stats;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The bucket holds at most this much CPU time per CPU of rate: one CFS period's worth.
const BURST_WINDOW: Duration = Duration::from_millis(100);
/// A service that used CPU this recently counts as contending for it.
const ACTIVE_WINDOW: Duration = Duration::from_millis(50);
/// How long a computed share stays valid; recomputing takes the group's lock.
const SHARE_REFRESH: Duration = Duration::from_millis(10);
/// How often the process's CPU clock is compared with what the meters charged (see [`CpuShares`]).
const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// The services of one [`crate::Runtime`] that divide the host's CPUs by weight when they contend
/// (`cpu.shares`). A service alone on the CPU is not slowed by its weight, as under CFS.
///
/// The group also charges the CPU its services cause outside their metered polls: the event loops'
/// wake-ups, the kernel's work on their sockets, closing connections. Every [`RECONCILE_EVERY`], what the
/// process used beyond what its meters charged is divided among the services by what each charged
/// meanwhile, as a cgroup holding the whole shim would count it.
pub(crate) struct CpuShares {
    capacity: f64,
    origin: Instant,
    members: Mutex<Vec<Weak<Member>>>,
    /// Nanoseconds charged by every member since the start.
    charged_ns: AtomicU64,
    /// Milliseconds since the origin of the last reconciliation.
    reconciled_at: AtomicU64,
    /// The process's CPU clock and `charged_ns` at the last reconciliation; `None` when the process's
    /// unmetered CPU is not charged (see `EngineConfig::charge_whole_process`).
    ledger: Option<Mutex<(Duration, u64)>>,
}

/// One service's place in [`CpuShares`].
struct Member {
    weight: AtomicU64,
    /// Milliseconds since the group's origin when the service last used CPU (`u64::MAX`: never).
    busy_at: AtomicU64,
    /// Milliseconds since the origin when `share` was computed (`u64::MAX`: never).
    share_at: AtomicU64,
    /// The share in CPU-seconds per second as `f64` bits; NaN when nobody else contends.
    share: AtomicU64,
    /// Nanoseconds charged since the last reconciliation.
    recent_ns: AtomicU64,
    /// Nanoseconds of unmetered CPU assigned by a reconciliation, not yet charged.
    owed_ns: AtomicU64,
}

impl CpuShares {
    /// A group dividing `capacity` CPUs; with `whole_process`, it also charges the process's unmetered
    /// CPU to its members.
    pub(crate) fn new(capacity: f64, whole_process: bool) -> Self {
        CpuShares {
            capacity,
            origin: Instant::now(),
            members: Mutex::default(),
            charged_ns: AtomicU64::new(0),
            reconciled_at: AtomicU64::new(0),
            ledger: whole_process.then(|| Mutex::new((cpu_clock(ClockId::ProcessCPUTime), 0))),
        }
    }

    /// Records `used` as charged by `member`; at most every [`RECONCILE_EVERY`], assigns the process's
    /// unmetered CPU since the last time to the members that charged meanwhile.
    fn record(&self, member: &Member, used: Duration, now: Instant) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let used = used.as_nanos() as u64;
        member.recent_ns.fetch_add(used, Relaxed);
        self.charged_ns.fetch_add(used, Relaxed);
        let now_ms = self.millis(now);
        let last = self.reconciled_at.load(Relaxed);
        if now_ms.saturating_sub(last) < RECONCILE_EVERY.as_millis() as u64 {
            return;
        }
        let Ok(mut ledger) = ledger.try_lock() else {
            return;
        };
        self.reconciled_at.store(now_ms, Relaxed);
        let process = cpu_clock(ClockId::ProcessCPUTime);
        let charged = self.charged_ns.load(Relaxed);
        let used = process.saturating_sub(ledger.0).as_nanos() as u64;
        let unmetered = used.saturating_sub(charged.saturating_sub(ledger.1));
        *ledger = (process, charged);
        let members: Vec<(Arc<Member>, u64)> = self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .map(|m| {
                let recent = m.recent_ns.swap(0, Relaxed);
                (m, recent)
            })
            .collect();
        let total: u64 = members.iter().map(|(_, recent)| recent).sum();
        if total == 0 {
            return;
        }
        for (member, recent) in members {
            let share = (u128::from(unmetered) * u128::from(recent) / u128::from(total)) as u64;
            member.owed_ns.fetch_add(share, Relaxed);
        }
    }

    fn join(&self, weight: u64) -> Arc<Member> {
        let member = Arc::new(Member {
            weight: AtomicU64::new(weight.max(1)),
            busy_at: AtomicU64::new(u64::MAX),
            share_at: AtomicU64::new(u64::MAX),
            share: AtomicU64::new(f64::NAN.to_bits()),
            recent_ns: AtomicU64::new(0),
            owed_ns: AtomicU64::new(0),
        });
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&member));
        member
    }

    fn millis(&self, now: Instant) -> u64 {
        now.duration_since(self.origin).as_millis() as u64
    }

    /// `member`'s CPU rate while others contend, or `None` when it has the CPUs to itself.
    fn share_of(&self, member: &Member, now: Instant) -> Option<f64> {
        let now_ms = self.millis(now);
        let computed = member.share_at.load(Relaxed);
        if computed != u64::MAX
            && now_ms.saturating_sub(computed) < SHARE_REFRESH.as_millis() as u64
        {
            let share = f64::from_bits(member.share.load(Relaxed));
            return (!share.is_nan()).then_some(share);
        }
        let active = ACTIVE_WINDOW.as_millis() as u64;
        let own = member.weight.load(Relaxed);
        let (mut total, mut contended) = (own, false);
        for other in self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let Some(other) = other.upgrade() else {
                continue;
            };
            let busy_at = other.busy_at.load(Relaxed);
            if std::ptr::eq(&*other, member)
                || busy_at == u64::MAX
                || now_ms.saturating_sub(busy_at) > active
            {
                continue;
            }
            contended = true;
            total = total.saturating_add(other.weight.load(Relaxed));
        }
        let share = contended.then(|| self.capacity * own as f64 / total as f64);
        member
            .share
            .store(share.unwrap_or(f64::NAN).to_bits(), Relaxed);
        member.share_at.store(now_ms, Relaxed);
        share
    }
}

/// CPU meter of one service: totals into its stats, a rate limit (quota) and a weight (shares).
pub(crate) struct CpuMeter {
    stats: Arc<Stats>,
    bucket: Mutex<Bucket>,
    group: Option<(Arc<CpuShares>, Arc<Member>)>,
}

struct Bucket {
    /// The quota in CPU-seconds per second, if any.
    quota: Option<f64>,
    /// Available CPU-seconds; negative while in debt.
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// Earns tokens at `rate` since the last refill; with no rate there is nothing to owe.
    fn refill(&mut self, now: Instant, rate: Option<f64>) {
        self.tokens = match rate {
            None => 0.0,
            Some(rate) => {
                let earned = now.duration_since(self.refilled).as_secs_f64() * rate;
                (self.tokens + earned).min(rate * BURST_WINDOW.as_secs_f64())
            }
        };
        self.refilled = now;
    }
}

impl CpuMeter {
    /// A meter with quota `rate`; with a `group`, it also gets at most its weighted share under contention.
    pub(crate) fn new(
        stats: Arc<Stats>,
        rate: Option<f64>,
        group: Option<(Arc<CpuShares>, u64)>,
    ) -> Self {
        CpuMeter {
            stats,
            bucket: Mutex::new(Bucket {
                quota: rate,
                // Capped to one burst window at the first refill.
                tokens: f64::INFINITY,
                refilled: Instant::now(),
            }),
            group: group.map(|(group, weight)| {
                let member = group.join(weight);
                (group, member)
            }),
        }
    }

    /// Changes the quota and weight for everything that runs from now on (`None` lifts the quota).
    pub(crate) fn set_rate(&self, rate: Option<f64>, weight: u64) {
        let now = Instant::now();
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.rate_with(bucket.quota, now);
        bucket.refill(now, current);
        bucket.quota = rate;
        if let Some((_, member)) = &self.group {
            member.weight.store(weight.max(1), Relaxed);
            member.share_at.store(u64::MAX, Relaxed);
        }
    }

    /// Charges `used` CPU time, which ended at `now`.
    pub(crate) fn charge(&self, used: Duration, now: Instant) {
        let mut used = used;
        if let Some((group, member)) = &self.group {
            member.busy_at.store(group.millis(now), Relaxed);
            group.record(member, used, now);
            used += Duration::from_nanos(member.owed_ns.swap(0, Relaxed));
        }
        self.stats.add_cpu(used);
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let rate = self.rate_with(bucket.quota, now);
        bucket.refill(now, rate);
        if rate.is_some() {
            bucket.tokens -= used.as_secs_f64();
        }
    }

    /// The rate in force: the quota, lowered to the weighted share while other services contend.
    fn rate_with(&self, quota: Option<f64>, now: Instant) -> Option<f64> {
        let share = self
            .group
            .as_ref()
            .and_then(|(group, member)| group.share_of(member, now));
        match (quota, share) {
            (Some(q), Some(s)) => Some(q.min(s)),
            (q, s) => q.or(s),
        }
    }

    /// How long to park so the bucket is out of debt, or `None` to keep running.
    pub(crate) fn throttle_for(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let rate = self.rate_with(bucket.quota, now)?;
        bucket.refill(now, Some(rate));
        // Saturates rather than panics where the debt over the rate passes what a Duration holds.
        (bucket.tokens < 0.0).then(|| {
            Duration::try_from_secs_f64(-bucket.tokens / rate)
                .map_or(MAX_DURATION, |wait| wait.min(MAX_DURATION))
        })
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

pub(crate) use rustix::time::ClockId;

/// The CPU time on one of the kernel's CPU clocks: the process's (all threads) or the calling thread's. A
/// system call, so for work measured once (a compile, a connect), not per poll.
pub(crate) fn cpu_clock(clock: ClockId) -> Duration {
    let now = rustix::time::clock_gettime(clock);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::DEFAULT_CPU_SHARES;

    #[test]
    fn debt_is_paid_back_at_the_rate() {
        let meter = CpuMeter::new(Arc::new(Stats::default()), Some(0.5), None);
        assert_eq!(
            meter.throttle_for(),
            None,
            "a full bucket does not throttle"
        );
        meter.charge(Duration::from_millis(150), Instant::now());
        // 50 ms of burst minus 150 ms used = 100 ms of debt, repaid at 0.5 CPU → about 200 ms.
        let wait = meter.throttle_for().unwrap();
        assert!(
            wait > Duration::from_millis(180) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        meter.set_rate(None, DEFAULT_CPU_SHARES);
        assert_eq!(meter.throttle_for(), None);
        assert_eq!(
            meter.stats().snapshot().cpu_time,
            Duration::from_millis(150)
        );
    }

    #[test]
    fn a_debt_too_large_for_a_duration_parks_for_the_longest_a_knob_allows() {
        // No knob goes below 1m CPUs, but a weighted share can be far smaller.
        let meter = CpuMeter::new(Arc::new(Stats::default()), Some(1e-300), None);
        meter.charge(Duration::from_secs(1), Instant::now());
        assert_eq!(meter.throttle_for(), Some(MAX_DURATION));
    }

    fn spin(for_: Duration) {
        let start = Instant::now();
        while start.elapsed() < for_ {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn a_whole_process_group_charges_cpu_used_outside_metered_polls() {
        let group = Arc::new(CpuShares::new(2.0, true));
        let meter = CpuMeter::new(
            Arc::new(Stats::default()),
            None,
            Some((group.clone(), DEFAULT_CPU_SHARES)),
        );
        meter.charge(Duration::from_millis(1), Instant::now());
        // Work no poll measured (an event loop's, the kernel's), then the next reconciliation.
        spin(Duration::from_millis(60));
        std::thread::sleep(RECONCILE_EVERY);
        meter.charge(Duration::from_millis(1), Instant::now());
        let charged = meter.stats().snapshot().cpu_time;
        assert!(charged >= Duration::from_millis(50), "{charged:?}");

        let apart = Arc::new(CpuShares::new(2.0, false));
        let meter = CpuMeter::new(
            Arc::new(Stats::default()),
            None,
            Some((apart, DEFAULT_CPU_SHARES)),
        );
        spin(Duration::from_millis(60));
        std::thread::sleep(RECONCILE_EVERY);
        meter.charge(Duration::from_millis(1), Instant::now());
        assert_eq!(
            meter.stats().snapshot().cpu_time,
            Duration::from_millis(1),
            "an embedder's own work is its own"
        );
    }

    #[test]
    fn contending_services_split_the_cpus_by_weight() {
        let group = Arc::new(CpuShares::new(2.0, false));
        let meter = |weight| {
            CpuMeter::new(
                Arc::new(Stats::default()),
                None,
                Some((group.clone(), weight)),
            )
        };
        let (heavy, light) = (meter(1024), meter(512));
        heavy.charge(Duration::from_millis(1), Instant::now());
        let now = Instant::now();
        assert_eq!(heavy.rate_with(None, now), None, "alone, no share applies");
        light.charge(Duration::from_millis(1), Instant::now());
        std::thread::sleep(SHARE_REFRESH + Duration::from_millis(2));
        let now = Instant::now();
        let heavy_rate = heavy.rate_with(None, now).unwrap();
        let light_rate = light.rate_with(None, now).unwrap();
        assert!((heavy_rate - 4.0 / 3.0).abs() < 1e-9, "{heavy_rate}");
        assert!((light_rate - 2.0 / 3.0).abs() < 1e-9, "{light_rate}");
        assert_eq!(
            light.rate_with(Some(0.25), now),
            Some(0.25),
            "a lower quota wins"
        );
        light.set_rate(None, 1024);
        std::thread::sleep(ACTIVE_WINDOW + Duration::from_millis(5));
        assert_eq!(
            heavy.rate_with(None, Instant::now()),
            None,
            "an idle service stops counting"
        );
    }
}
