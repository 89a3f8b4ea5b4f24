//! Per-instance state: the WASI contexts, and the guard that enforces limits inside the store.

use crate::capabilities::Capabilities;
use crate::cpu::CpuMeter;
use crate::knobs::Limits;
use crate::outbound::OutboundPolicy;
use crate::output::GuestOutput;
use crate::stats::FailureCause;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::cli::StdinStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The most host memory one `wasi:http` fields resource (a header map) may take: wasmtime's default, set
/// here because the resource bound below is computed from it. It leaves room for a request head of the
/// largest size the server accepts (`HttpOptions::max_header_bytes`) in its in-memory form.
pub(crate) const FIELD_SIZE_LIMIT: usize = 128 << 10;
/// The fewest and most entries an instance's resource table may hold, whatever its memory limit: a request
/// of the example guests uses a few dozen.
pub(crate) const RESOURCES: std::ops::RangeInclusive<usize> = 256..=16_384;

/// Enforces one instance's limits from inside wasmtime and releases what it held when the store drops.
pub(crate) struct InstanceGuard {
    /// The service (or command) this instance runs, for the log.
    name: Arc<str>,
    meter: Arc<CpuMeter>,
    memory_per_instance: Option<u64>,
    memory_total: Option<u64>,
    max_table_elements: usize,
    held: u64,
    /// Fuel given to the store so far, so what it burned is `fuel_granted - remaining`.
    fuel_granted: u64,
    /// The deadlines of the requests running in this instance (one, unless it is reused concurrently).
    deadlines: Vec<Instant>,
    /// Why a memory growth was refused, if one was.
    memory_denied: Option<FailureCause>,
    /// Whether the instance was already ended for its host memory (a concurrent store may meet its
    /// deadline again as the trap ends its other tasks; it is one refusal).
    host_memory_refused: bool,
    timed_out: bool,
}

impl InstanceGuard {
    pub(crate) fn new(
        name: Arc<str>,
        meter: Arc<CpuMeter>,
        limits: &Limits,
        max_table_elements: usize,
    ) -> Self {
        meter.stats().instance_started();
        InstanceGuard {
            name,
            memory_per_instance: limits.effective_instance_memory(),
            memory_total: limits.memory,
            max_table_elements,
            held: 0,
            fuel_granted: limits.fuel_per_request.unwrap_or(u64::MAX),
            deadlines: Vec::new(),
            memory_denied: None,
            host_memory_refused: false,
            timed_out: false,
            meter,
        }
    }

    /// How many resources (fields, streams, requests, futures…) the instance's table may hold: as many as
    /// fill its memory limit at [`FIELD_SIZE_LIMIT`] each, within [`RESOURCES`]. The host memory a guest
    /// makes the shim hold for its resources is so bounded by the same figure as its linear memory.
    pub(crate) fn max_resources(&self) -> usize {
        let memory = self.memory_per_instance.or(self.memory_total);
        let fill = memory.map_or(*RESOURCES.end() as u64, |m| m / FIELD_SIZE_LIMIT as u64);
        (fill as usize).clamp(*RESOURCES.start(), *RESOURCES.end())
    }

    /// The meter this instance's CPU (and the host work it causes) is charged to.
    pub(crate) fn meter(&self) -> &Arc<CpuMeter> {
        &self.meter
    }

    /// Starts the clock of one request (or a command run) under `limits`; returns its deadline.
    pub(crate) fn start_request(&mut self, limits: &Limits) -> Option<Instant> {
        let deadline = limits
            .request_timeout
            .and_then(|t| Instant::now().checked_add(t))?;
        self.deadlines.push(deadline);
        Some(deadline)
    }

    /// A request ended (answered or expired): its deadline no longer interrupts the instance.
    pub(crate) fn end_request(&mut self, deadline: Option<Instant>) {
        if let Some(i) = deadline.and_then(|d| self.deadlines.iter().position(|&x| x == d)) {
            self.deadlines.swap_remove(i);
        }
    }

    /// Called by wasmtime each epoch tick while guest code runs. The engine cannot interrupt one task of a
    /// store alone: a request past its deadline while guest code runs ends the whole instance.
    fn on_epoch(&mut self) -> wasmtime::Result<UpdateDeadline> {
        self.check_host_memory()?;
        let now = Instant::now();
        let deadline = self.deadlines.iter().min().copied();
        if deadline.is_some_and(|d| now >= d) {
            self.timed_out = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        let Some(mut wait) = self.meter.throttle_for() else {
            // Yielding every tick lets the executor run other requests and fire host-side timeouts.
            return Ok(UpdateDeadline::Yield(1));
        };
        if let Some(deadline) = deadline {
            wait = wait.min(deadline - now);
        }
        let meter = self.meter.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::time::sleep(wait).await;
                meter.stats().throttled(wait);
            }),
        ))
    }

    /// Ends the instance when the service's host memory does not fit its memory limit beside its
    /// instances' linear memory. Host memory is allocated by host calls, and the shim cannot refuse one
    /// of its own allocations: the instance running when it is over ends instead (its resources and
    /// linear memory are freed with it). Checked at each epoch deadline, which the allocator brings
    /// forward when the service's host memory passes its room (see `engine/epoch_clock.rs`). Like a
    /// growth, it is the guest's own fault when the host memory does not fit beside this instance alone,
    /// and an overload (503) when it is the other live instances that do not fit.
    fn check_host_memory(&mut self) -> wasmtime::Result<()> {
        let Some(total) = self.memory_total else {
            return Ok(());
        };
        let stats = self.meter.stats();
        if stats.memory_with_host() <= total {
            return Ok(());
        }
        let host = stats.host_account().bytes();
        if !std::mem::replace(&mut self.host_memory_refused, true) {
            let cause = if self.held.saturating_add(host) > total {
                FailureCause::Memory
            } else {
                FailureCause::Overload
            };
            self.refuse_memory(cause, self.held);
        }
        Err(wasmtime::Error::msg(format!(
            "the service's host memory ({host} bytes) does not fit its memory limit ({total} bytes) \
             beside its instances' linear memory"
        )))
    }

    /// Why the instance failed with `error`, judged from the error and what the guard saw.
    pub(crate) fn failure_cause(&self, error: &wasmtime::Error) -> FailureCause {
        if let Some(cause) = self.memory_denied {
            return cause;
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => FailureCause::Fuel,
            Some(Trap::Interrupt) if self.timed_out => FailureCause::Timeout,
            Some(_) => FailureCause::Trap,
            None if error
                .downcast_ref::<crate::deadline::HostTimeout>()
                .is_some() =>
            {
                FailureCause::Timeout
            }
            // The pooling allocator refuses instantiation when every slot is taken.
            None if error
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some() =>
            {
                FailureCause::Overload
            }
            None => FailureCause::Trap,
        }
    }

    /// Counts a refused growth (or host memory over the limit) and says so once per instance: a guest may
    /// catch a refused growth and answer the request itself (JavaScript engines answer 500), so the
    /// refusal must be visible on its own.
    fn refuse_memory(&mut self, cause: FailureCause, wanted: u64) {
        self.meter.stats().memory_refused();
        if self.memory_denied.replace(cause).is_none() {
            tracing::warn!(
                service = %self.name,
                wanted,
                host_memory = self.meter.stats().host_account().bytes(),
                limit = self.memory_per_instance.or(self.memory_total),
                "memory refused: {}",
                cause.reason()
            );
        }
    }

    fn record_fuel(&self, remaining: u64) {
        self.meter
            .stats()
            .add_fuel(self.fuel_granted.saturating_sub(remaining));
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let stats = self.meter.stats();
        stats.release_memory(self.held, self.memory_total);
        stats.instance_finished();
    }
}

impl ResourceLimiter for InstanceGuard {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = (desired as u64).saturating_sub(current as u64);
        let wanted = self.held + grow;
        // The service's host memory is its baseline: a growth that would not fit next to it even with no
        // other instance live is this instance's fault, not an overload.
        let host = self.meter.stats().host_account().bytes();
        let over_own_limit = self.memory_per_instance.is_some_and(|cap| wanted > cap)
            || self
                .memory_total
                .is_some_and(|cap| wanted.saturating_add(host) > cap);
        if over_own_limit {
            self.refuse_memory(FailureCause::Memory, wanted);
            return Ok(false);
        }
        if !self.meter.stats().try_grow_memory(grow, self.memory_total) {
            // It would fit on its own: other live instances hold the rest, so this is a retryable 503.
            self.refuse_memory(FailureCause::Overload, wanted);
            return Ok(false);
        }
        self.held += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}

/// Store data with a guard; lets one setup function serve components and preview 1 modules.
pub(crate) trait Guarded: Send + 'static {
    fn guard(&mut self) -> &mut InstanceGuard;
}

/// Gives a reused instance's store the fuel of one more request. Alone in the instance, the request gets
/// exactly its grant (what earlier ones left is recorded and dropped); next to others, the grant is added
/// to what they share, since fuel belongs to the store, not to a task.
pub(crate) fn grant_fuel<T: Guarded>(
    mut store: impl wasmtime::AsContextMut<Data = T>,
    limits: &Limits,
    alone: bool,
) -> wasmtime::Result<()> {
    let Some(grant) = limits.fuel_per_request else {
        return Ok(());
    };
    let mut store = store.as_context_mut();
    let remaining = store.get_fuel()?;
    let guard = store.data_mut().guard();
    let fuel = if alone {
        guard.record_fuel(remaining);
        guard.fuel_granted = grant;
        grant
    } else {
        guard.fuel_granted = guard.fuel_granted.saturating_add(grant);
        remaining.saturating_add(grant)
    };
    store.set_fuel(fuel)
}

/// A store with the guard wired in as limiter, fuel meter and epoch callback.
pub(crate) fn new_store<T: Guarded>(engine: &wasmtime::Engine, data: T) -> Store<T> {
    let mut store = Store::new(engine, data);
    let fuel = store.data_mut().guard().fuel_granted;
    store.limiter(|s| s.guard());
    store
        .set_fuel(fuel)
        .expect("the engine is configured to consume fuel");
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| ctx.data_mut().guard().on_epoch());
    store
}

/// Records fuel use and returns the failure cause (if `result` is an error). Counting it is the caller's
/// call: a request whose guest already answered was not refused, whatever its instance did next.
pub(crate) fn finish<T: Guarded, R>(
    store: &mut Store<T>,
    result: &wasmtime::Result<R>,
) -> Option<(FailureCause, String)> {
    let remaining = store.get_fuel().unwrap_or(0);
    let guard = store.data_mut().guard();
    guard.record_fuel(remaining);
    let error = result.as_ref().err()?;
    let cause = guard.failure_cause(error);
    Some((cause, format!("{error:#}")))
}

/// Store data of a component instance (HTTP service or command).
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    guard: InstanceGuard,
}

/// The WASI pieces an instance is built from.
pub(crate) struct InstanceIo<'a> {
    pub caps: &'a Capabilities,
    pub stdout: &'a GuestOutput,
    pub stderr: &'a GuestOutput,
    pub stdin: Option<Box<dyn StdinStream + Sync>>,
    /// Whether output waits for each line's end, so that concurrent instances' lines do not interleave (a
    /// service's); a command, the only writer of its streams, writes through.
    pub line_buffered: bool,
}

impl InstanceIo<'_> {
    fn builder(self) -> wasmtime::Result<WasiCtxBuilder> {
        let (stdout, stderr) = (
            self.stdout.instance_stream(self.line_buffered),
            self.stderr.instance_stream(self.line_buffered),
        );
        let mut builder = self.caps.wasi_builder(stdout, stderr)?;
        if let Some(stdin) = self.stdin {
            builder.stdin(stdin);
        }
        Ok(builder)
    }
}

impl InstanceState {
    /// The trace context the instance's outgoing requests carry from now on.
    pub(crate) fn set_traceparent(&mut self, traceparent: Option<http::HeaderValue>) {
        self.hooks.traceparent = traceparent;
    }

    pub(crate) fn new(io: InstanceIo<'_>, guard: InstanceGuard) -> wasmtime::Result<Self> {
        let hooks = io.caps.outbound_policy(guard.meter().clone());
        let mut table = ResourceTable::new();
        table.set_max_capacity(guard.max_resources());
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(FIELD_SIZE_LIMIT);
        Ok(InstanceState {
            wasi: io.builder()?.build(),
            http,
            table,
            hooks,
            guard,
        })
    }
}

impl Guarded for InstanceState {
    fn guard(&mut self) -> &mut InstanceGuard {
        &mut self.guard
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Store data of a WASI preview 1 module.
pub(crate) struct P1State {
    pub(crate) wasi: WasiP1Ctx,
    guard: InstanceGuard,
}

impl P1State {
    pub(crate) fn new(io: InstanceIo<'_>, guard: InstanceGuard) -> wasmtime::Result<Self> {
        Ok(P1State {
            wasi: io.builder()?.build_p1(),
            guard,
        })
    }
}

impl Guarded for P1State {
    fn guard(&mut self) -> &mut InstanceGuard {
        &mut self.guard
    }
}
