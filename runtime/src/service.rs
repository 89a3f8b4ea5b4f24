//! Serving a wasi:http component: the accept loop, per-connection HTTP/1.1, live controls, and drain.

use crate::capabilities::Capabilities;
use crate::classify::WasiVersion;
use crate::client_gate::{FIRST_WAIT, GatedReads};
use crate::cpu::CpuMeter;
use crate::engine::{Code, Loaded, Runtime};
use crate::handler::{Shared, Tracing, handle};
use crate::knobs::Limits;
use crate::knobs::value::MAX_DURATION;
use crate::metered::Metered;
use crate::output::GuestOutput;
use crate::reuse::Pool;
use crate::stalled_write::StalledWriteTimeout;
use crate::stats::StatsSnapshot;
use crate::telemetry::RequestTracer;
use crate::workers::Workers;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime_wasi_http::handler::ProxyPre;

/// HTTP protocol bounds applied to every connection.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request head (request line + headers) accepted; larger ones get 431. At least 8 KiB.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head before the connection is closed; also how long
    /// an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// How long a response write may wait for a client that reads nothing before the connection is closed.
    pub write_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// A wasi:http component, linked and ready to serve under its limits.
pub struct Service {
    shared: Arc<Shared>,
    http: HttpOptions,
}

impl Service {
    /// Links `app` (which must be an HTTP service) against WASI and wasi:http.
    pub fn new(
        runtime: &Runtime,
        app: &Loaded,
        limits: Limits,
        caps: Capabilities,
        stdout: GuestOutput,
        stderr: GuestOutput,
    ) -> Result<Self, crate::Error> {
        let link_error = |e: wasmtime::Error| crate::Error::Link {
            name: app.name().to_string(),
            detail: format!("{e:#}"),
        };
        let Code::Component(component) = app.code() else {
            return Err(crate::Error::Link {
                name: app.name().to_string(),
                detail: format!("it is a {}, not a wasi:http service", app.kind()),
            });
        };
        if !app.kind().is_http() {
            return Err(crate::Error::Link {
                name: app.name().to_string(),
                detail: format!(
                    "it is a {}, not a wasi:http service; run it as a command",
                    app.kind()
                ),
            });
        }
        caps.validate()?;
        app.check_memory_minimum(&limits)?;
        let pre = runtime
            .component_linker(component)
            .and_then(|linker| linker.instantiate_pre(component))
            .map_err(link_error)?;
        let pre = match app.wasi() {
            WasiVersion::P3 => ProxyPre::P3(
                wasmtime_wasi_http::p3::bindings::ServicePre::new(pre).map_err(link_error)?,
            ),
            _ => ProxyPre::P2(
                wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).map_err(link_error)?,
            ),
        };
        let meter = runtime.meter_for(&limits, app);
        Ok(Service {
            shared: Arc::new(Shared {
                name: app.name().into(),
                runtime: runtime.clone(),
                engine: component.engine().clone(),
                wasi: app.wasi(),
                pre,
                pool: Pool::default(),
                limits: RwLock::new(Arc::new(limits)),
                meter,
                admission: Arc::default(),
                caps,
                stdout,
                stderr,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                tracing: None,
            }),
            http: HttpOptions::default(),
        })
    }

    /// Replaces the HTTP protocol bounds.
    pub fn with_http_options(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }

    /// Traces every request with `tracer`, each span carrying `attributes` (such as the pod's name).
    pub fn with_tracing(
        mut self,
        tracer: RequestTracer,
        attributes: Vec<(String, String)>,
    ) -> Self {
        let attributes = attributes
            .into_iter()
            .map(|(k, v)| opentelemetry::KeyValue::new(k, v))
            .collect();
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.tracing = Some(Tracing { tracer, attributes });
        }
        self
    }

    /// Starts serving on `listener` (which may have been created in another network namespace).
    /// Must be called from within a tokio runtime.
    pub fn serve(self, listener: std::net::TcpListener) -> std::io::Result<ServiceHandle> {
        // Clients past `max-connections`, or kept out while the service's clients fill its memory, wait
        // in the listen backlog: std's 128 would make the rest retry their handshake a second later.
        // Listening again raises it to the namespace's `net.core.somaxconn`, as Go and runc's services get.
        rustix::net::listen(&listener, i32::MAX)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let workers = self.shared.runtime.workers()?;
        let (drain_tx, drain_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let shared = self.shared.clone();
        let meter = shared.meter.clone();
        tokio::spawn(
            Metered::new(
                accept_loop(listener, shared, workers, self.http, drain_rx, done_tx),
                meter,
            )
            .for_clients(),
        );
        Ok(ServiceHandle {
            shared: self.shared,
            local_addr,
            drain: drain_tx,
            done: done_rx,
        })
    }
}

/// Controls for a running service. Dropping the handle does not stop the service; call [`Self::shutdown`].
pub struct ServiceHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    drain: watch::Sender<Option<Duration>>,
    done: watch::Receiver<bool>,
}

impl ServiceHandle {
    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        let mut stats = self.shared.meter.stats().snapshot();
        let (running, waiting) = self.shared.admission.load();
        (stats.in_flight, stats.queued) = (running as u64, waiting as u64);
        stats.log_lines_dropped =
            self.shared.stdout.dropped_lines() + self.shared.stderr.dropped_lines();
        stats
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.shared.limits()
    }

    /// The service's account, for a command run beside it (an exec) that counts against its CPU quota and
    /// memory limit.
    pub fn charge(&self) -> crate::Charge {
        crate::Charge::of_service(self.shared.meter.clone())
    }

    /// Applies new limits to the requests admitted from now on; running instances keep the limits they
    /// started with, and reused ones take no new requests.
    pub fn update_limits(&self, limits: Limits) {
        self.shared.pool.new_generation();
        self.shared
            .meter
            .set_rate(limits.cpus, limits.effective_cpu_shares());
        *self
            .shared
            .limits
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }

    /// Stops admitting new requests (they wait in the queue, or get 503 when it is full) or resumes.
    pub fn set_paused(&self, paused: bool) {
        self.shared.admission.set_paused(paused);
    }

    /// Stops accepting connections, lets in-flight requests finish for up to `grace`, then cancels the rest
    /// (they get 503). Returns when every connection and instance is gone. `Duration::ZERO` stops at once.
    /// A later call with a shorter grace shortens a drain under way (SIGKILL after SIGTERM); a longer one
    /// only waits.
    pub async fn shutdown(&self, grace: Duration) {
        self.drain.send_if_modified(|current| match current {
            Some(set) if *set <= grace => false,
            _ => {
                *current = Some(grace);
                true
            }
        });
        self.finished().await;
    }

    /// Waits until the service has stopped (after a shutdown).
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        // An error means the accept loop is gone, which also means finished.
        let _ = done.wait_for(|finished| *finished).await;
    }
}

/// The connections a service holds (counted in its stats, the one count the cap and the exports read), and
/// a signal when one closes.
struct OpenConnections {
    meter: Arc<CpuMeter>,
    closed: tokio::sync::Notify,
}

/// One open connection, counted until dropped.
struct OpenConnection(Arc<OpenConnections>);

impl OpenConnection {
    fn new(connections: &Arc<OpenConnections>) -> Self {
        connections.meter.stats().connection_opened();
        OpenConnection(connections.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.meter.stats().connection_closed();
        self.0.closed.notify_one();
    }
}

/// Waits for `drained` for up to `grace` from now, a grace a later [`ServiceHandle::shutdown`] may shorten;
/// false when the deadline passed first.
async fn drain_within(
    grace: Duration,
    drained: impl std::future::Future<Output = ()>,
    drain: &mut watch::Receiver<Option<Duration>>,
) -> bool {
    let started = tokio::time::Instant::now();
    let deadline = |grace: Duration| started.checked_add(grace).unwrap_or(started + MAX_DURATION);
    let sleep = tokio::time::sleep_until(deadline(grace));
    tokio::pin!(drained, sleep);
    loop {
        tokio::select! {
            () = &mut drained => return true,
            () = &mut sleep => return false,
            Ok(()) = drain.changed() => {
                let shorter = drain.borrow().unwrap_or(Duration::ZERO);
                sleep.as_mut().reset(deadline(shorter));
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    workers: Arc<Workers>,
    options: HttpOptions,
    mut drain: watch::Receiver<Option<Duration>>,
    done: watch::Sender<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Some(options.header_read_timeout))
        .max_header_size(options.max_header_bytes)
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true)
        // A response's head, chunk framing and body copied into one buffer and sent with one write: for
        // the small responses typical here that beat a vectored write (hello: ~49 → ~44 µs of CPU each).
        .writev(false);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(OpenConnections {
        meter: shared.meter.clone(),
        closed: tokio::sync::Notify::new(),
    });
    let grace = loop {
        // At `max-connections`, leave further clients in the kernel's listen backlog (which costs this
        // process nothing) until one of ours closes.
        let closed = connections.closed.notified();
        let at_cap = shared.meter.stats().connections_open()
            >= shared.limits().effective_max_connections() as u64;
        // While the service owes CPU (a flood of requests refused before any guest runs costs it too),
        // new clients wait in the backlog as well: accepting and refusing them is its CPU.
        let debt = shared.meter.throttle_for();
        // So do they while the clients hold all the memory the service's limit leaves them.
        let clients_full = shared.clients_hold_too_much();
        tokio::select! {
            changed = drain.changed() => {
                break changed.ok().and_then(|()| *drain.borrow()).unwrap_or(Duration::ZERO);
            }
            () = closed, if at_cap => continue,
            () = tokio::time::sleep(debt.unwrap_or_default()), if debt.is_some() => continue,
            () = tokio::time::sleep(FIRST_WAIT), if clients_full => continue,
            accepted = listener.accept(), if !at_cap && debt.is_none() && !clients_full => {
                let stream = match accepted.and_then(|(stream, _peer)| stream.into_std()) {
                    Ok(stream) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(service = %shared.name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (worker, assignment) = workers.assign();
                // Registered with the worker's reactor, so its I/O is driven on the worker's thread.
                let registered = {
                    let _entered = worker.enter();
                    tokio::net::TcpStream::from_std(stream)
                };
                let stream = match registered {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(service = %shared.name, "cannot hand a connection to a worker: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let request_shared = shared.clone();
                let service = hyper::service::service_fn(move |request| handle(request_shared.clone(), request));
                let gate_shared = shared.clone();
                let stream = GatedReads::new(stream, move || gate_shared.clients_hold_too_much());
                let stream = StalledWriteTimeout::new(stream, options.write_timeout);
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                let cancel = shared.cancel.clone();
                // HTTP parsing and writing are charged to the service and held to its quota.
                let open = OpenConnection::new(&connections);
                worker.spawn(shared.tasks.track_future(Metered::throttled(async move {
                    let _assignment = assignment;
                    let _open = open;
                    tokio::select! {
                        result = connection => if let Err(e) = result { tracing::debug!("connection ended: {e}") },
                        // Cancelled requests still get their 503 written before the connection goes.
                        () = async { cancel.cancelled().await; tokio::time::sleep(Duration::from_millis(500)).await } => {}
                    }
                }, shared.meter.clone()).for_clients()));
            }
        }
    };
    drop(listener);
    tracing::info!(service = %shared.name, ?grace, "draining");
    if !drain_within(grace, graceful.shutdown(), &mut drain).await {
        let (running, waiting) = shared.admission.load();
        tracing::warn!(service = %shared.name, running, waiting, "drain deadline passed; cancelling what is left");
    }
    shared.admission.close();
    shared.cancel.cancel();
    shared.tasks.close();
    shared.tasks.wait().await;
    shared.stdout.drain_at_end().await;
    shared.stderr.drain_at_end().await;
    let _ = done.send(true);
}
