//! The wasmtime engine shared by every guest of a process, its linkers, its compile cache and the epoch clock.

use crate::classify::{self, Encoding, WasiVersion, WasmKind};
use crate::cpu::{CpuMeter, CpuShares};
use crate::instance::{InstanceState, P1State};
use crate::precompiled::TrustedKey;
use crate::source::Source;
use crate::workers::Workers;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig,
};

mod compile_cpu;
mod epoch_clock;
mod flavour;
mod on_thread;

use crate::cache::CompileCache;
use flavour::{Flavour, compiling};

/// Process-wide engine settings. Per-service limits live in [`crate::Limits`]; these only size the
/// machinery every service shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Instance slots in the pooling allocator: the most instances alive at once across all services.
    pub max_instances: u32,
    /// The largest linear memory any single instance may grow to; per-service limits can only lower it.
    pub max_instance_memory: u64,
    /// Largest table, in elements.
    pub max_table_elements: usize,
    /// Where compiled code is cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Size cap of the compile cache, in bytes.
    pub cache_max_bytes: u64,
    /// Epoch clock period: the granularity of deadlines and CPU throttling.
    pub epoch_tick: Duration,
    /// The most threads serving HTTP connections, each with its own single-threaded tokio runtime. The
    /// first starts with the first service, the others when concurrent connections need them. Defaults to
    /// the number of CPUs.
    pub http_workers: usize,
    /// Bytes of the pages a finished instance wrote that its pool slot keeps resident (reset by copying)
    /// for the next instance; the rest are returned to the kernel. Higher saves page faults on guests that
    /// write a lot per request, at this much memory per idle slot.
    pub slot_keep_resident: u64,
    /// The largest wasm file or image layer a container may name, in bytes: reading and compiling it is
    /// work and memory the node spends before any limit of the container applies.
    pub max_component_size: u64,
    /// Whether this process serves nothing but this runtime's guests (a shim, `wasmhttp run`): then the
    /// CPU it uses outside metered polls (event loops, the kernel's socket work) is charged to its
    /// services as well, as a cgroup around the process would. Off for embedders with other work, whose
    /// CPU would otherwise be charged to the guests.
    pub charge_whole_process: bool,
    /// Keys whose signature makes precompiled code shipped with a guest trusted (see
    /// [`crate::precompiled`]); none by default, so shipped code is ignored and the wasm compiled.
    pub precompiled_signers: Vec<TrustedKey>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_instances: 256,
            max_instance_memory: 1 << 30,
            max_table_elements: 100_000,
            cache_dir: None,
            cache_max_bytes: 512 << 20,
            epoch_tick: Duration::from_millis(5),
            http_workers: host_cpus(),
            slot_keep_resident: 64 << 10,
            max_component_size: 256 << 20,
            charge_whole_process: false,
            precompiled_signers: Vec::new(),
        }
    }
}

/// The CPUs this process may use. Asked once: each answer reads several cgroup files.
fn host_cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl EngineConfig {
    /// The per-user default cache directory: `$XDG_CACHE_HOME/wasmhttp` or `~/.cache/wasmhttp`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("wasmhttp"))
    }

    /// The wasmtime settings: `concurrent` engines run the component-model async ABI (WASI 0.3).
    fn wasmtime_config(&self, concurrent: bool) -> Config {
        let mut pool = PoolingAllocationConfig::new();
        let slots = self.max_instances;
        // A Rust wasip2 component instantiates a handful of core modules (main, shims, fixups).
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots)
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            .max_memory_size(self.max_instance_memory as usize)
            .table_elements(self.max_table_elements)
            .max_tables_per_module(4)
            // Resetting a slot for its next instance: the PAGEMAP_SCAN ioctl (Linux 6.7+; `Auto` falls back
            // to the first-N-bytes rule elsewhere) finds the pages the guest wrote, wherever they are, and up to
            // `slot_keep_resident` bytes of them are copied back from the image instead of being dropped with
            // madvise. madvise costs a TLB shootdown on every core plus a page fault per page on the next
            // request, so a small guest is faster with its few written pages kept; a big one (an interpreter's
            // heap) has the rest dropped, so an idle slot never holds more than this. The scan must ask for
            // pages present or swapped as well as written: some kernels report never-touched pages as
            // written, and wasmtime 50.0.1, which did not ask, spent the budget on those (docs/performance.md;
            // `pagemap::Query::wasmtime_reset` and its test).
            .pagemap_scan(Enabled::Auto)
            // More than a slot holds means all of it; wasmtime would overflow rounding a huge value up to pages.
            .linear_memory_keep_resident(
                self.slot_keep_resident.min(self.max_instance_memory) as usize
            )
            .table_keep_resident(16 << 10)
            .max_unused_warm_slots(16);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(true)
            .epoch_interruption(true)
            // WASI 0.2 and preview 1 guests do not use the component-model async ABI, and without it a
            // Store skips building the concurrent-task state on every request: their engine leaves it off,
            // and only WASI 0.3 guests pay for it, on an engine of their own.
            .concurrency_support(concurrent);
        if concurrent {
            config.wasm_component_model_async(true);
        }
        config
    }
}

/// The shared engine. Cheap to clone; every service and command of a process should use one.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    /// WASI 0.2 components and preview 1 modules.
    plain: Flavour,
    /// WASI 0.3 components (and any other that needs the async ABI), built when the first one loads.
    concurrent: OnceLock<Result<Flavour, String>>,
    /// Built on first use: most processes only ever run components.
    module_linker: OnceLock<wasmtime::Linker<P1State>>,
    /// Started with the first service: command runs need none.
    workers: OnceLock<Arc<Workers>>,
    config: EngineConfig,
    ticker_stop: Arc<AtomicBool>,
    cpu_shares: Arc<CpuShares>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A compiled, classified guest, ready to be served or run.
#[derive(Clone)]
pub struct Loaded {
    kind: WasmKind,
    wasi: WasiVersion,
    name: String,
    digest: String,
    code: Code,
    origin: Origin,
    load_cpu: Duration,
}

/// Where a guest's code came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled by this process.
    Compiled,
    /// Read from the compile cache.
    Cache,
    /// Shipped with the guest and signed by this trusted key (see [`crate::precompiled`]).
    Precompiled(TrustedKey),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Compiled => f.write_str("compiled"),
            Origin::Cache => f.write_str("from cache"),
            Origin::Precompiled(key) => write!(f, "precompiled, signed by {key}"),
        }
    }
}

#[derive(Clone)]
pub(crate) enum Code {
    Component(Component),
    Module(Module),
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("kind", &self.kind)
            .field("wasi", &self.wasi)
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// What kind of guest this is.
    pub fn kind(&self) -> WasmKind {
        self.kind
    }
    /// The WASI version it was built for.
    pub fn wasi(&self) -> WasiVersion {
        self.wasi
    }
    /// Whether it runs on the engine with the component-model async ABI (every WASI 0.3 guest does).
    pub fn is_concurrent(&self) -> bool {
        match &self.code {
            Code::Component(c) => c.engine().get_concurrency_support(),
            Code::Module(_) => false,
        }
    }
    /// The source's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `sha256:<hex>` of the wasm bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// Whether the code came from the compile cache rather than the compiler.
    pub fn from_cache(&self) -> bool {
        self.origin == Origin::Cache
    }

    /// Where the code came from: compiled here, the compile cache, or precompiled code shipped with it.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
    /// The CPU time loading took: compiling (on all the compiler's threads) or reading the cache; loads that
    /// overlap are charged each other's compiling too. A service or command run from this guest starts
    /// owing it (see [`crate::cpu`]).
    pub fn load_cpu(&self) -> Duration {
        self.load_cpu
    }
    /// Bytes of compiled machine code held for this guest (shared by all its instances).
    pub fn code_size(&self) -> u64 {
        let range = match &self.code {
            Code::Component(c) => c.image_range(),
            Code::Module(m) => m.image_range(),
        };
        (range.end as usize - range.start as usize) as u64
    }
    /// Refuses limits that leave the guest less memory than its largest linear memory starts with: every
    /// request (or the command) would fail on a memory error, so say it once, at start.
    pub fn check_memory_minimum(&self, limits: &crate::Limits) -> Result<(), crate::Error> {
        const PAGE: u64 = 64 << 10;
        let required = match &self.code {
            Code::Component(c) => c.resources_required(),
            Code::Module(m) => Some(m.resources_required()),
        };
        let (Some(cap), Some(required)) = (limits.effective_instance_memory(), required) else {
            return Ok(());
        };
        let needed = required
            .max_initial_memory_size
            .unwrap_or(0)
            .saturating_mul(PAGE);
        if needed > cap {
            let show = crate::knobs::value::size::show;
            return Err(crate::Error::Limits {
                name: self.name.clone(),
                detail: format!(
                    "its linear memory starts at {} but the memory limit is {}",
                    show(needed),
                    show(cap)
                ),
            });
        }
        Ok(())
    }
    pub(crate) fn code(&self) -> &Code {
        &self.code
    }
}

impl Runtime {
    /// Builds the engine, the linkers and the cache, and starts the epoch clock thread.
    pub fn new(config: EngineConfig) -> Result<Self, crate::Error> {
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let plain = Flavour::new(&config, false, ticker_stop.clone())?;
        let cpu_shares = Arc::new(CpuShares::new(
            host_cpus() as f64,
            config.charge_whole_process,
        ));
        Ok(Runtime {
            inner: Arc::new(Inner {
                plain,
                concurrent: OnceLock::new(),
                module_linker: OnceLock::new(),
                workers: OnceLock::new(),
                config,
                ticker_stop,
                cpu_shares,
            }),
        })
    }

    /// The engine for guests that need the component-model async ABI, built on first use.
    fn concurrent(&self) -> Result<&Flavour, crate::Error> {
        self.inner
            .concurrent
            .get_or_init(|| {
                Flavour::new(&self.inner.config, true, self.inner.ticker_stop.clone())
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| crate::Error::Engine(e.clone()))
    }

    /// The CPU meter of a service or command running `app` under `limits`. It starts owing what loading
    /// `app` cost, so a compile is held to the container's quota as the guest's own work is.
    pub(crate) fn meter_for(&self, limits: &crate::Limits, app: &Loaded) -> Arc<CpuMeter> {
        let meter = CpuMeter::new(
            Arc::new(crate::stats::Stats::default()),
            limits.cpus,
            Some((self.cpu_shares(), limits.effective_cpu_shares())),
        );
        meter.charge(app.load_cpu(), Instant::now());
        Arc::new(meter)
    }

    /// The group in which this runtime's services share the host's CPUs by weight.
    pub(crate) fn cpu_shares(&self) -> Arc<CpuShares> {
        self.inner.cpu_shares.clone()
    }

    /// The wasmtime engine of WASI 0.2 and preview 1 guests.
    pub fn engine(&self) -> &Engine {
        &self.inner.plain.engine
    }

    /// The compile cache of WASI 0.2 and preview 1 guests, if enabled. WASI 0.3 guests are cached in the
    /// same directory under their own engine's hash.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.inner.plain.cache.as_ref()
    }

    /// The settings this runtime was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The linker for `component`'s engine.
    pub(crate) fn component_linker(
        &self,
        component: &Component,
    ) -> wasmtime::Result<&Linker<InstanceState>> {
        if component.engine().get_concurrency_support() {
            self.concurrent()
                .map_err(|e| wasmtime::Error::msg(e.to_string()))?
                .linker()
        } else {
            self.inner.plain.linker()
        }
    }

    pub(crate) fn module_linker(&self) -> wasmtime::Result<&wasmtime::Linker<P1State>> {
        if let Some(linker) = self.inner.module_linker.get() {
            return Ok(linker);
        }
        let mut linker = wasmtime::Linker::new(&self.inner.plain.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut P1State| &mut s.wasi)?;
        Ok(self.inner.module_linker.get_or_init(|| linker))
    }

    pub(crate) fn workers(&self) -> std::io::Result<Arc<Workers>> {
        if let Some(workers) = self.inner.workers.get() {
            return Ok(workers.clone());
        }
        let workers = Arc::new(Workers::start(self.inner.config.http_workers)?);
        Ok(self.inner.workers.get_or_init(|| workers).clone())
    }

    /// Compiles a component for the engine that runs it, as a node with this configuration would, and
    /// returns that engine's hash with the serialized code: what `wasmhttp image build --sign` ships.
    pub fn precompile(&self, source: &Source) -> Result<(String, Vec<u8>), crate::Error> {
        let name = source.name();
        if classify::encoding(name, source.bytes())? != Encoding::Component {
            return Err(crate::Error::Invalid {
                name: name.to_string(),
                detail: "only components can be shipped precompiled".into(),
            });
        }
        self.on_component_engine(source, |flavour| {
            compiling(source, || Component::new(&flavour.engine, source.bytes()))
                .and_then(|c| c.serialize())
                .map(|code| (flavour.engine_hash.clone(), code))
        })
    }

    /// Runs `work` on the engine a component belongs to. A component naming a WASI 0.3 interface goes
    /// straight to the concurrent engine. Any other is tried on the plain one first (its instances are
    /// cheaper) and, if refused, on the concurrent one, which also validates the component-model async ABI;
    /// that verdict is the one reported, since it accepts strictly more. Skipping the doomed attempt keeps
    /// a 0.3 guest's log free of a plain-engine "compiling" line followed by a cache hit.
    fn on_component_engine<T>(
        &self,
        source: &Source,
        work: impl Fn(&Flavour) -> wasmtime::Result<T>,
    ) -> Result<T, crate::Error> {
        let invalid = invalid(source);
        if classify::names_wasi_p3(source.bytes()) {
            return work(self.concurrent()?).map_err(invalid);
        }
        match work(&self.inner.plain) {
            Ok(done) => Ok(done),
            Err(_) => work(self.concurrent()?).map_err(invalid),
        }
    }

    /// Compiles (or fetches from the cache) and classifies a binary.
    pub fn load(&self, source: &Source) -> Result<Loaded, crate::Error> {
        let started = Instant::now();
        let (loaded, load_cpu) = compile_cpu::measure(|| self.load_here(source));
        let (code, origin, kind, wasi) = loaded?;
        let load_time = started.elapsed();
        let name = source.name();
        tracing::debug!(name, %kind, %wasi, %origin, ?load_time, ?load_cpu, "loaded guest");
        Ok(Loaded {
            kind,
            wasi,
            name: name.to_string(),
            digest: source.digest().to_string(),
            code,
            origin,
            load_cpu,
        })
    }

    /// Compiles (or fetches) and classifies a binary.
    fn load_here(
        &self,
        source: &Source,
    ) -> Result<(Code, Origin, WasmKind, WasiVersion), crate::Error> {
        let name = source.name();
        let invalid = invalid(source);
        let (code, origin) = match classify::encoding(name, source.bytes())? {
            Encoding::Component => {
                let (c, origin) = self.on_component_engine(source, |f| f.component(source))?;
                (Code::Component(c), origin)
            }
            Encoding::CoreModule => {
                let (m, cached) = self.inner.plain.module(source).map_err(invalid)?;
                (Code::Module(m), cached)
            }
        };
        let (kind, wasi) = match &code {
            Code::Component(c) => classify::component_kind(name, c.engine(), c)?,
            Code::Module(m) => classify::module_kind(name, m)?,
        };
        Ok((code, origin, kind, wasi))
    }
}

/// Turns wasmtime's refusal of `source` into the error that names it.
fn invalid(source: &Source) -> impl Fn(wasmtime::Error) -> crate::Error + '_ {
    |e| crate::Error::Invalid {
        name: source.name().to_string(),
        detail: format!("{e:#}"),
    }
}
