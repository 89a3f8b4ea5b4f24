//! Prometheus exposition of services' counters: the text format, rendered by `prometheus-client` from the
//! same [`StatsSnapshot`]s every other export reads, and a small `/metrics` HTTP endpoint.
//!
//! The caller decides which services an endpoint reports and how they are labelled ([`MetricsSet`]); this
//! module knows nothing of containers or pods.

use crate::knobs::Limits;
use crate::stats::{FailureCause, HistogramSnapshot, ProcessMemory, Rejection, StatsSnapshot};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The `Content-Type` of the Prometheus text format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Scrapes one endpoint serves at once; more wait in the listen backlog, so a flood of scrapers holds a
/// bounded amount of the shim.
const MAX_SCRAPERS: usize = 4;
/// Time a scraper has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Labels of one series, as `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// Something whose figures an endpoint reports: a service, a command run, a container.
pub trait Observed: Send + Sync {
    /// Its counters and the limits in force now.
    fn observe(&self) -> (StatsSnapshot, Limits);
}

impl Observed for crate::ServiceHandle {
    fn observe(&self) -> (StatsSnapshot, Limits) {
        (self.stats(), Limits::clone(&self.limits()))
    }
}

/// A reported source and its labels.
type Source = (Labels, Weak<dyn Observed>);

/// The services one endpoint reports, each under its own labels. Sources are held weakly: one that is
/// dropped (a deleted container) disappears from the next scrape.
#[derive(Clone, Default)]
pub struct MetricsSet {
    sources: Arc<RwLock<Vec<Source>>>,
}

impl std::fmt::Debug for MetricsSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSet").finish_non_exhaustive()
    }
}

impl MetricsSet {
    /// Reports `source` under `labels` from the next scrape on.
    pub fn add(&self, labels: Labels, source: Weak<dyn Observed>) {
        let mut sources = self.sources.write().unwrap_or_else(|e| e.into_inner());
        sources.retain(|(_, s)| s.strong_count() > 0);
        sources.push((labels, source));
    }

    /// The Prometheus text exposition of every live source.
    pub fn render(&self) -> String {
        let rows: Vec<(Labels, StatsSnapshot, Limits)> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(labels, source)| {
                let (stats, limits) = source.upgrade()?.observe();
                Some((labels.clone(), stats, limits))
            })
            .collect();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Rows(rows, ProcessMemory::read())));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// One scrape's figures, encoded family by family: each source's, and the hosting process's memory.
#[derive(Debug)]
struct Rows(Vec<(Labels, StatsSnapshot, Limits)>, Option<ProcessMemory>);

impl Rows {
    /// The labels every source shares (a pod's namespace and name, for a shim's endpoint): the process's
    /// series carry these, since the process is all of them together.
    fn shared_labels(&self) -> Labels {
        let Some(((first, _, _), rest)) = self.0.split_first() else {
            return Labels::new();
        };
        first
            .iter()
            .filter(|label| rest.iter().all(|(labels, _, _)| labels.contains(label)))
            .cloned()
            .collect()
    }
}

/// A family's value for one row; `None` leaves the row out (a limit that is not set).
type Value = fn(&StatsSnapshot, &Limits) -> Option<Num>;

/// A count, or a quantity with a fraction (seconds, cores).
#[derive(Debug, Clone, Copy)]
enum Num {
    Count(u64),
    Real(f64),
}

use Num::{Count, Real};

const COUNTERS: &[(&str, &str, Value)] = &[
    (
        "wasmhttp_memory_refusals",
        "Memory growths refused by a memory limit.",
        |s, _| Some(Count(s.memory_refusals)),
    ),
    (
        "wasmhttp_cpu_seconds",
        "CPU time spent running guest instances.",
        |s, _| Some(Real(s.cpu_time.as_secs_f64())),
    ),
    (
        "wasmhttp_cpu_throttled_seconds",
        "Time instances spent parked by the CPU budget.",
        |s, _| Some(Real(s.throttled_time.as_secs_f64())),
    ),
    (
        "wasmhttp_cpu_throttled_periods",
        "Times an instance was parked by the CPU budget.",
        |s, _| Some(Count(s.throttled_periods)),
    ),
    (
        "wasmhttp_fuel_consumed",
        "Fuel burnt by finished instances.",
        |s, _| Some(Count(s.fuel_consumed)),
    ),
    (
        "wasmhttp_log_lines_dropped",
        "Guest output lines dropped because the log reader lagged.",
        |s, _| Some(Count(s.log_lines_dropped)),
    ),
];

const GAUGES: &[(&str, &str, Value)] = &[
    (
        "wasmhttp_requests_in_flight",
        "Requests running now.",
        |s, _| Some(Count(s.in_flight)),
    ),
    (
        "wasmhttp_queue_waiting",
        "Requests waiting for a free slot now.",
        |s, _| Some(Count(s.queued)),
    ),
    ("wasmhttp_instances", "Instances alive now.", |s, _| {
        Some(Count(s.instances_live))
    }),
    (
        "wasmhttp_instances_peak",
        "The most instances alive at once.",
        |s, _| Some(Count(s.instances_peak)),
    ),
    (
        "wasmhttp_connections_open",
        "Client connections open now.",
        |s, _| Some(Count(s.connections_open)),
    ),
    (
        "wasmhttp_memory_bytes",
        "Linear memory and tables of live instances.",
        |s, _| Some(Count(s.memory_current)),
    ),
    (
        "wasmhttp_memory_peak_bytes",
        "The most memory_bytes has been.",
        |s, _| Some(Count(s.memory_peak)),
    ),
    (
        "wasmhttp_host_memory_bytes",
        "Host memory held for the service (connections, stores, wasi:http resources and bodies), counted against its memory limit.",
        |s, _| Some(Count(s.host_memory)),
    ),
    (
        "wasmhttp_memory_limit_bytes",
        "The memory limit of all instances together.",
        |_, l| l.memory.map(Count),
    ),
    (
        "wasmhttp_cpu_quota_cores",
        "The sustained CPU rate allowed, in cores.",
        |_, l| l.cpus.map(Real),
    ),
    (
        "wasmhttp_max_concurrency",
        "Requests allowed to run at once.",
        |_, l| l.max_concurrency.map(Count),
    ),
];

/// Which histogram of a snapshot a family exports.
type HistogramOf = fn(&StatsSnapshot) -> &HistogramSnapshot;

/// Histograms: name, help, the snapshot, and its units per exported unit.
const HISTOGRAMS: &[(&str, &str, HistogramOf, f64)] = &[
    (
        "wasmhttp_request_duration_seconds",
        "From a request's head to its response's head, queueing included.",
        |s| &s.request_durations,
        1e6,
    ),
    (
        "wasmhttp_queue_wait_seconds",
        "Time admitted requests waited for a slot.",
        |s| &s.queue_waits,
        1e6,
    ),
    (
        "wasmhttp_instantiation_duration_seconds",
        "Time to create an instance.",
        |s| &s.instantiate_durations,
        1e6,
    ),
    (
        "wasmhttp_instance_requests",
        "Requests each finished instance served.",
        |s| &s.requests_per_instance,
        1.0,
    ),
];

impl Collector for Rows {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "Requests by status class and by who answered: cause=\"guest\" for the guest's own \
                    answers, else why the host answered instead.";
        let mut family =
            encoder.encode_descriptor("wasmhttp_requests", help, None, MetricType::Counter)?;
        for (labels, stats, _) in &self.0 {
            for (class, count) in stats.served_by_class.iter().enumerate() {
                let status = format!("{}xx", class + 1);
                encode_counter(
                    &mut family,
                    labels,
                    &[("code", &status), ("cause", "guest")],
                    *count,
                )?;
            }
            for cause in FailureCause::ALL {
                let status = format!("{}xx", cause.status() / 100);
                let count = stats.failed(cause);
                encode_counter(
                    &mut family,
                    labels,
                    &[("code", &status), ("cause", cause.label())],
                    count,
                )?;
            }
            for why in Rejection::ALL {
                let status = format!("{}xx", why.status() / 100);
                let count = stats.rejected[why as usize];
                encode_counter(
                    &mut family,
                    labels,
                    &[("code", &status), ("cause", why.label())],
                    count,
                )?;
            }
        }
        for (kind, list) in [(MetricType::Counter, COUNTERS), (MetricType::Gauge, GAUGES)] {
            for (name, help, value) in list {
                let mut family = encoder.encode_descriptor(name, help, None, kind)?;
                for (labels, stats, limits) in &self.0 {
                    let Some(value) = value(stats, limits) else {
                        continue;
                    };
                    let mut row = family.encode_family(labels)?;
                    match (kind, value) {
                        (MetricType::Counter, Count(n)) => {
                            row.encode_counter::<Labels, u64, f64>(&n, None)?
                        }
                        (MetricType::Counter, Real(x)) => {
                            row.encode_counter::<Labels, f64, f64>(&x, None)?
                        }
                        (_, Count(n)) => row.encode_gauge(&n)?,
                        (_, Real(x)) => row.encode_gauge(&x)?,
                    }
                }
            }
        }
        for (name, help, histogram, per_unit) in HISTOGRAMS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, stats, _) in &self.0 {
                let histogram = histogram(stats);
                let buckets = histogram.buckets_in(*per_unit);
                family.encode_family(labels)?.encode_histogram::<Labels>(
                    histogram.sum as f64 / per_unit,
                    histogram.count(),
                    &buckets,
                    None,
                )?;
            }
        }
        if let Some(process) = &self.1 {
            let shared = self.shared_labels();
            for (name, help, value) in [
                (
                    "wasmhttp_process_resident_bytes",
                    "Resident memory of the process hosting these services (a shim hosts one pod).",
                    Some(process.resident),
                ),
                (
                    "wasmhttp_process_resident_peak_bytes",
                    "The most resident memory that process has had.",
                    Some(process.resident_peak),
                ),
                (
                    "wasmhttp_process_proportional_bytes",
                    "That process's proportional set size (PSS): pages it shares, such as mapped \
                     compiled code, divided among the processes that map them.",
                    process.proportional,
                ),
            ] {
                let Some(value) = value else { continue };
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                family.encode_family(&shared)?.encode_gauge(&value)?;
            }
        }
        Ok(())
    }
}

fn encode_counter(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &Labels,
    extra: &[(&str, &str)],
    value: u64,
) -> Result<(), std::fmt::Error> {
    let mut all = labels.clone();
    all.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    family
        .encode_family(&all)?
        .encode_counter::<Labels, u64, f64>(&value, None)
}

/// A `/metrics` endpoint being served; stops when dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl MetricsEndpoint {
    /// Serves `set` at `GET /metrics` on `listener` (which may have been bound in another network
    /// namespace). Must be called from within a tokio runtime.
    pub fn serve(listener: std::net::TcpListener, set: MetricsSet) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = tokio::spawn(accept_loop(listener, set)).abort_handle();
        Ok(MetricsEndpoint { addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, set: MetricsSet) {
    let scrapers = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok(permit) = scrapers.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let set = set.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let set = set.clone();
                async move { Ok::<_, Infallible>(answer(&set, &request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A scraper that stops reading its response must not hold a slot for ever either.
            let _ = tokio::time::timeout(HEADER_TIMEOUT * 3, connection).await;
            drop(permit);
        });
    }
}

fn answer(set: &MetricsSet, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, CONTENT_TYPE, set.render()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests;
