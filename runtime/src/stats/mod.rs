//! Counters a running service updates lock-free and callers read at any time. Every export (containerd's
//! task metrics, CRI stats, Prometheus, the exit log line) reads these same values through [`StatsSnapshot`].

mod histogram;
mod process;

use crate::host_memory::Account;
pub(crate) use histogram::Histogram;
pub use histogram::{HistogramSnapshot, REQUEST_COUNT_BOUNDS};
pub use process::ProcessMemory;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a request did not get the guest's own response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The guest trapped (panic, unreachable, bad memory access…).
    Trap,
    /// The per-request fuel budget ran out.
    Fuel,
    /// The request ran past its deadline.
    Timeout,
    /// An instance needed more memory than the limits allow.
    Memory,
    /// No instance slot was free (concurrency limit, full queue, or the pool).
    Overload,
    /// The service was paused or draining: the request was cancelled, not refused for load.
    Cancelled,
}

impl FailureCause {
    /// The short reason sent to clients and written to the log.
    pub fn reason(self) -> &'static str {
        match self {
            FailureCause::Trap => "guest trapped",
            FailureCause::Fuel => "fuel exhausted",
            FailureCause::Timeout => "deadline exceeded",
            FailureCause::Memory => "memory limit exceeded",
            FailureCause::Overload => "over capacity",
            FailureCause::Cancelled => "cancelled: the service stopped",
        }
    }

    /// The status code the client gets.
    pub fn status(self) -> u16 {
        match self {
            FailureCause::Trap | FailureCause::Fuel | FailureCause::Memory => 500,
            FailureCause::Timeout => 504,
            FailureCause::Overload | FailureCause::Cancelled => 503,
        }
    }

    /// A short machine-readable name, for metric labels and span attributes.
    pub fn label(self) -> &'static str {
        match self {
            FailureCause::Trap => "trap",
            FailureCause::Fuel => "fuel",
            FailureCause::Timeout => "deadline",
            FailureCause::Memory => "memory",
            FailureCause::Overload => "over-capacity",
            FailureCause::Cancelled => "cancelled",
        }
    }

    /// Every cause, in the order of their counters.
    pub const ALL: [FailureCause; 6] = [
        FailureCause::Trap,
        FailureCause::Fuel,
        FailureCause::Timeout,
        FailureCause::Memory,
        FailureCause::Overload,
        FailureCause::Cancelled,
    ];
}

/// Why a request was answered by the host before its guest saw it (or while the guest read its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The body was larger than `max-request-body` → 413.
    BodyTooLarge,
    /// The body's start did not arrive within the request timeout, or its rest fell behind
    /// `min-request-body-rate` → 408.
    BodyTimeout,
    /// The body could not be read → 400.
    BodyUnreadable,
}

impl Rejection {
    /// Every rejection, in the order of their counters.
    pub const ALL: [Rejection; 3] = [
        Rejection::BodyTooLarge,
        Rejection::BodyTimeout,
        Rejection::BodyUnreadable,
    ];

    /// The status code the client gets.
    pub fn status(self) -> u16 {
        match self {
            Rejection::BodyTooLarge => 413,
            Rejection::BodyTimeout => 408,
            Rejection::BodyUnreadable => 400,
        }
    }

    /// A short machine-readable name, for metric labels and span attributes.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BodyTooLarge => "body-too-large",
            Rejection::BodyTimeout => "body-timeout",
            Rejection::BodyUnreadable => "body-unreadable",
        }
    }
}

/// Live counters of one service or command; see [`StatsSnapshot`] for what each means.
#[derive(Debug)]
pub struct Stats {
    served_by_class: [AtomicU64; 5],
    failed: [AtomicU64; 6],
    rejected: [AtomicU64; 3],
    fuel_consumed: AtomicU64,
    cpu_time_ns: AtomicU64,
    instantiate: Histogram,
    request_duration: Histogram,
    queue_wait: Histogram,
    requests_per_instance: Histogram,
    throttled_periods: AtomicU64,
    throttled_ns: AtomicU64,
    memory_current: AtomicU64,
    memory_peak: AtomicU64,
    memory_refusals: AtomicU64,
    instances_live: AtomicU64,
    instances_peak: AtomicU64,
    connections_open: AtomicU64,
    /// Host memory allocated for the service's instances (their stores, resources, bodies and outbound
    /// requests) and not yet freed.
    host: Account,
    /// Host memory allocated for the service's clients (their connections and pre-read bodies) and not yet
    /// freed: counted against the limit, never blamed on an instance.
    clients: Account,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            served_by_class: Default::default(),
            failed: Default::default(),
            rejected: Default::default(),
            fuel_consumed: AtomicU64::new(0),
            cpu_time_ns: AtomicU64::new(0),
            instantiate: Histogram::durations(),
            request_duration: Histogram::durations(),
            queue_wait: Histogram::durations(),
            requests_per_instance: Histogram::new(REQUEST_COUNT_BOUNDS),
            throttled_periods: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            memory_current: AtomicU64::new(0),
            memory_peak: AtomicU64::new(0),
            memory_refusals: AtomicU64::new(0),
            instances_live: AtomicU64::new(0),
            instances_peak: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            host: Account::open(),
            clients: Account::open(),
        }
    }
}

/// A consistent-enough copy of [`Stats`] (each field is read atomically, not all at once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests answered by the guest itself (any status it chose).
    pub requests_served: u64,
    /// `requests_served` by the class of the guest's status: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub served_by_class: [u64; 5],
    /// Requests that ended in a guest trap → 500.
    pub failed_trap: u64,
    /// Requests stopped for exhausting their fuel → 500.
    pub failed_fuel: u64,
    /// Requests that ran past their deadline → 504.
    pub failed_timeout: u64,
    /// Requests whose instance hit a memory limit → 500.
    pub failed_memory: u64,
    /// Requests refused for lack of capacity → 503.
    pub failed_overload: u64,
    /// Requests cut by a stop while they waited or ran → 503.
    pub failed_cancelled: u64,
    /// Requests answered by the host before or while the guest read their body, by [`Rejection::ALL`].
    pub rejected: [u64; 3],
    /// Fuel consumed by all finished instances.
    pub fuel_consumed: u64,
    /// CPU time spent running guest instances (host calls included).
    pub cpu_time: Duration,
    /// Instances created.
    pub instantiations: u64,
    /// Time spent creating instances (sum over `instantiations`).
    pub instantiate_time: Duration,
    /// Instance creation times, in microseconds.
    pub instantiate_durations: HistogramSnapshot,
    /// From a request's head to its response's head (queueing included), in microseconds; requests the
    /// host rejected before admission are not in it.
    pub request_durations: HistogramSnapshot,
    /// Time admitted requests waited for a slot, in microseconds.
    pub queue_waits: HistogramSnapshot,
    /// Requests each finished instance served (always 1 without reuse).
    pub requests_per_instance: HistogramSnapshot,
    /// Requests waiting for a slot now.
    pub queued: u64,
    /// Times an instance was parked because the CPU budget was empty.
    pub throttled_periods: u64,
    /// Time instances spent parked by the CPU budget.
    pub throttled_time: Duration,
    /// Linear memory and tables held by live instances now, in bytes.
    pub memory_current: u64,
    /// The most `memory_current` has been.
    pub memory_peak: u64,
    /// Host memory the shim holds for the service (its connections and pre-read bodies, stores,
    /// `wasi:http` resources and bodies, outbound requests), in bytes; counted against its memory limit with
    /// `memory_current`. Zero unless the process's global allocator is [`crate::ChargingAllocator`].
    pub host_memory: u64,
    /// Memory growths refused by a memory limit (of one instance or of the whole service). A guest may catch
    /// the failure and answer the request itself, so this can exceed `failed_memory + failed_overload`.
    pub memory_refusals: u64,
    /// Requests running now (admitted and not yet finished); for a command run, 1 while it runs. This is
    /// what `pids.limit` (`max-concurrency`) bounds.
    pub in_flight: u64,
    /// Instances alive now: one per running request, plus the idle reusable ones.
    pub instances_live: u64,
    /// The most `instances_live` has been.
    pub instances_peak: u64,
    /// Client connections open now.
    pub connections_open: u64,
    /// Guest output lines dropped because the log reader did not keep up.
    pub log_lines_dropped: u64,
}

impl StatsSnapshot {
    /// Every request the service saw: answered by the guest, or refused or cut for any cause.
    pub fn requests_total(&self) -> u64 {
        self.requests_served
            + self.failed_trap
            + self.failed_fuel
            + self.failed_timeout
            + self.failed_memory
            + self.failed_overload
            + self.failed_cancelled
            + self.rejected.iter().sum::<u64>()
    }

    /// Requests that ended for `cause`.
    pub fn failed(&self, cause: FailureCause) -> u64 {
        match cause {
            FailureCause::Trap => self.failed_trap,
            FailureCause::Fuel => self.failed_fuel,
            FailureCause::Timeout => self.failed_timeout,
            FailureCause::Memory => self.failed_memory,
            FailureCause::Overload => self.failed_overload,
            FailureCause::Cancelled => self.failed_cancelled,
        }
    }

    /// Adds another service's figures to these, for a pod's total. Peaks add up to a bound on the pod's
    /// peak: the services need not have peaked at the same moment.
    pub fn add(&mut self, other: &StatsSnapshot) {
        let StatsSnapshot {
            requests_served,
            served_by_class,
            rejected,
            failed_trap,
            failed_fuel,
            failed_timeout,
            failed_memory,
            failed_overload,
            failed_cancelled,
            fuel_consumed,
            cpu_time,
            instantiations,
            instantiate_time,
            instantiate_durations,
            request_durations,
            queue_waits,
            requests_per_instance,
            queued,
            throttled_periods,
            throttled_time,
            memory_current,
            memory_peak,
            host_memory,
            memory_refusals,
            in_flight,
            instances_live,
            instances_peak,
            connections_open,
            log_lines_dropped,
        } = other;
        for (mine, theirs) in self.served_by_class.iter_mut().zip(served_by_class) {
            *mine += theirs;
        }
        for (mine, theirs) in self.rejected.iter_mut().zip(rejected) {
            *mine += theirs;
        }
        self.instantiate_durations.add(instantiate_durations);
        self.request_durations.add(request_durations);
        self.queue_waits.add(queue_waits);
        self.requests_per_instance.add(requests_per_instance);
        self.queued += queued;
        self.instances_peak += instances_peak;
        self.connections_open += connections_open;
        self.log_lines_dropped += log_lines_dropped;
        self.requests_served += requests_served;
        self.failed_trap += failed_trap;
        self.failed_fuel += failed_fuel;
        self.failed_timeout += failed_timeout;
        self.failed_memory += failed_memory;
        self.failed_overload += failed_overload;
        self.failed_cancelled += failed_cancelled;
        self.fuel_consumed += fuel_consumed;
        self.cpu_time += *cpu_time;
        self.instantiations += instantiations;
        self.instantiate_time += *instantiate_time;
        self.throttled_periods += throttled_periods;
        self.throttled_time += *throttled_time;
        self.memory_current += memory_current;
        self.memory_peak += memory_peak;
        self.host_memory += host_memory;
        self.memory_refusals += memory_refusals;
        self.in_flight += in_flight;
        self.instances_live += instances_live;
    }
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let failed = |cause: FailureCause| self.failed[cause as usize].load(Relaxed);
        let served_by_class = self.served_by_class.each_ref().map(|n| n.load(Relaxed));
        let instantiate_durations = self.instantiate.snapshot();
        StatsSnapshot {
            requests_served: served_by_class.iter().sum(),
            served_by_class,
            rejected: self.rejected.each_ref().map(|n| n.load(Relaxed)),
            failed_trap: failed(FailureCause::Trap),
            failed_fuel: failed(FailureCause::Fuel),
            failed_timeout: failed(FailureCause::Timeout),
            failed_memory: failed(FailureCause::Memory),
            failed_overload: failed(FailureCause::Overload),
            failed_cancelled: failed(FailureCause::Cancelled),
            fuel_consumed: self.fuel_consumed.load(Relaxed),
            cpu_time: Duration::from_nanos(self.cpu_time_ns.load(Relaxed)),
            instantiations: instantiate_durations.count(),
            instantiate_time: Duration::from_micros(instantiate_durations.sum),
            instantiate_durations,
            request_durations: self.request_duration.snapshot(),
            queue_waits: self.queue_wait.snapshot(),
            requests_per_instance: self.requests_per_instance.snapshot(),
            queued: 0,
            throttled_periods: self.throttled_periods.load(Relaxed),
            throttled_time: Duration::from_nanos(self.throttled_ns.load(Relaxed)),
            memory_current: self.memory_current.load(Relaxed),
            memory_peak: self.memory_peak.load(Relaxed),
            host_memory: self.host.bytes().saturating_add(self.clients.bytes()),
            memory_refusals: self.memory_refusals.load(Relaxed),
            in_flight: self.instances_live.load(Relaxed),
            instances_live: self.instances_live.load(Relaxed),
            instances_peak: self.instances_peak.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
            log_lines_dropped: 0,
        }
    }

    /// A request the guest answered with `status`.
    pub(crate) fn served(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.served_by_class[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// A request finished (its response head is ready) `took` after its head arrived.
    pub(crate) fn request_took(&self, took: Duration) {
        self.request_duration.record_duration(took);
    }

    pub(crate) fn waited_in_queue(&self, waited: Duration) {
        self.queue_wait.record_duration(waited);
    }

    /// An instance is done after serving `requests`.
    pub(crate) fn instance_served(&self, requests: u64) {
        self.requests_per_instance.record(requests);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn connections_open(&self) -> u64 {
        self.connections_open.load(Relaxed)
    }

    pub(crate) fn failed(&self, cause: FailureCause) {
        self.failed[cause as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn add_fuel(&self, fuel: u64) {
        self.fuel_consumed.fetch_add(fuel, Relaxed);
    }

    pub(crate) fn add_cpu(&self, cpu: Duration) {
        self.cpu_time_ns.fetch_add(cpu.as_nanos() as u64, Relaxed);
    }

    pub(crate) fn instantiated(&self, took: Duration) {
        self.instantiate.record_duration(took);
    }

    pub(crate) fn throttled(&self, parked: Duration) {
        self.throttled_periods.fetch_add(1, Relaxed);
        self.throttled_ns
            .fetch_add(parked.as_nanos() as u64, Relaxed);
    }

    pub(crate) fn instance_started(&self) {
        let live = self.instances_live.fetch_add(1, Relaxed) + 1;
        self.instances_peak.fetch_max(live, Relaxed);
    }

    pub(crate) fn instance_finished(&self) {
        self.instances_live.fetch_sub(1, Relaxed);
    }

    /// Charges `bytes` of linear memory against `total` (if any), which the service's host memory counts
    /// against too; returns false, charging nothing, when it would not fit.
    pub(crate) fn try_grow_memory(&self, bytes: u64, total: Option<u64>) -> bool {
        let host = self.host.bytes().saturating_add(self.clients.bytes());
        let mut current = self.memory_current.load(Relaxed);
        loop {
            let next = current.saturating_add(bytes);
            if total.is_some_and(|t| next.saturating_add(host) > t) {
                return false;
            }
            match self
                .memory_current
                .compare_exchange_weak(current, next, Relaxed, Relaxed)
            {
                Ok(_) => {
                    self.memory_peak.fetch_max(next, Relaxed);
                    self.refresh_host_room(total);
                    return true;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// The account the host memory of the service's instances is charged to.
    pub(crate) fn host_account(&self) -> &Account {
        &self.host
    }

    /// The account the host memory of the service's clients is charged to.
    pub(crate) fn client_account(&self) -> &Account {
        &self.clients
    }

    /// Linear memory of the service's live instances and the host memory held for them: what an instance
    /// is ended for when it does not fit the memory limit.
    pub(crate) fn memory_with_host(&self) -> u64 {
        self.memory_current
            .load(Relaxed)
            .saturating_add(self.host.bytes())
    }

    /// Everything counted against the memory limit: [`Self::memory_with_host`] and what the service's
    /// clients make the shim hold. New requests and body reads are refused while it is over the limit.
    pub(crate) fn memory_with_clients(&self) -> u64 {
        self.memory_with_host().saturating_add(self.clients.bytes())
    }

    /// Whether the service's clients hold more than its memory limit `total` leaves them: what its
    /// instances do not use, and never less than a quarter of it, so a service whose instances fill its
    /// limit still reads its clients' requests.
    pub(crate) fn clients_over(&self, total: u64) -> bool {
        let room = total.saturating_sub(self.memory_with_host()).max(total / 4);
        self.clients.bytes() > room
    }

    pub(crate) fn memory_refused(&self) {
        self.memory_refusals.fetch_add(1, Relaxed);
    }

    /// Gives back `bytes` of linear memory charged against `total` (if any).
    pub(crate) fn release_memory(&self, bytes: u64, total: Option<u64>) {
        self.memory_current.fetch_sub(bytes, Relaxed);
        self.refresh_host_room(total);
    }

    /// Tells the allocator how much host memory fits beside the live instances' linear memory under
    /// `total`, so that it brings the instances' next limit check forward when the service passes it.
    /// Racing growths may leave a stale figure for a moment: then the regular epoch tick checks instead.
    fn refresh_host_room(&self, total: Option<u64>) {
        if let Some(total) = total {
            let linear = self.memory_current.load(Relaxed);
            self.host.set_room(total.saturating_sub(linear));
        }
    }
}

#[cfg(test)]
mod tests;
