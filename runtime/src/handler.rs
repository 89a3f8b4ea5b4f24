//! One HTTP request: admission, an instance (a fresh one, or a reused one from [`crate::reuse`]), and a
//! proper response whatever happens to it.

use crate::admission::{Admission, Permit};
use crate::body_pace::{Pace, TooSlow};
use crate::capabilities::Capabilities;
use crate::classify::WasiVersion;
use crate::cpu::CpuMeter;
use crate::deadline::with_timeout;
use crate::engine::Runtime;
use crate::identity::AsUser;
use crate::instance::{Guarded, InstanceGuard, InstanceIo, InstanceState, finish, new_store};
use crate::knobs::Limits;
use crate::knobs::value::MAX_DURATION;
use crate::metered::Metered;
use crate::output::GuestOutput;
use crate::preread::{Preread, PrereadError, preread};
use crate::reuse::{Answer, Job, Pool, error_code_name};
use crate::stats::{FailureCause, Rejection};
use crate::telemetry::{RequestSpan, RequestTracer};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime_wasi_http::handler::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

mod refusal;
use refusal::{failure_response, overloaded, rejected, text_response};

/// State every request of a service reaches.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) runtime: Runtime,
    /// The engine the guest was compiled for: with the async ABI for WASI 0.3, without it otherwise.
    pub(crate) engine: wasmtime::Engine,
    pub(crate) wasi: WasiVersion,
    pub(crate) pre: ProxyPre<InstanceState>,
    /// Reusable instances; unused by a WASI 0.2 service that keeps a fresh instance per request.
    pub(crate) pool: Pool,
    pub(crate) limits: RwLock<Arc<Limits>>,
    pub(crate) meter: Arc<CpuMeter>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) caps: Capabilities,
    pub(crate) stdout: GuestOutput,
    pub(crate) stderr: GuestOutput,
    /// Cancels in-flight instances when a drain runs out of time.
    pub(crate) cancel: CancellationToken,
    /// Every connection and instance task, so a drain can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Where request spans go, if anywhere.
    pub(crate) tracing: Option<Tracing>,
}

/// A service's request tracing: the exporter and the attributes every span of the service carries.
pub(crate) struct Tracing {
    pub(crate) tracer: RequestTracer,
    pub(crate) attributes: Vec<opentelemetry::KeyValue>,
}

impl Shared {
    /// A task that runs this service's guest code: metered, and polled with the guest's file rights.
    pub(crate) fn guest_task<F: Future>(&self, task: F) -> Metered<AsUser<F>> {
        Metered::new(
            AsUser::new(task, self.caps.guest_file_user()),
            self.meter.clone(),
        )
    }

    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The memory limit in force, read without taking a reference to the limits: connections ask on
    /// every read.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.limits.read().unwrap_or_else(|e| e.into_inner()).memory
    }

    /// Whether this service's clients hold all its memory limit leaves them: their connections then read
    /// nothing and new ones wait in the backlog (see [`crate::client_gate`]).
    pub(crate) fn clients_hold_too_much(&self) -> bool {
        self.memory_limit()
            .is_some_and(|total| self.meter.stats().clients_over(total))
    }

    /// A store for a new instance of this service under `limits`: its WASI context and its guard.
    pub(crate) fn new_store(
        &self,
        limits: &Limits,
    ) -> wasmtime::Result<wasmtime::Store<InstanceState>> {
        let guard = InstanceGuard::new(
            self.name.clone(),
            self.meter.clone(),
            limits,
            self.runtime.config().max_table_elements,
        );
        let io = InstanceIo {
            caps: &self.caps,
            stdout: &self.stdout,
            stderr: &self.stderr,
            stdin: None,
            line_buffered: true,
        };
        Ok(new_store(&self.engine, InstanceState::new(io, guard)?))
    }

    /// Whether requests under `limits` go to reused instances (always for guests on the concurrent
    /// engine; for the others, when `max-instance-reuse` opts in).
    fn reuses(&self, limits: &Limits) -> bool {
        self.engine.get_concurrency_support() || limits.effective_instance_reuse(self.wasi) > 1
    }
}

type Outcome = Option<(FailureCause, String)>;

/// How a request ended, before it becomes a response.
enum Ending {
    Answer(Answer),
    /// The instance ended without answering, for this reason.
    Failed(FailureCause),
}

/// Serves one request; never fails, so hyper never drops a connection on our account.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<WasiBody>, Infallible> {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let span = shared
        .tracing
        .as_ref()
        .map(|t| t.tracer.start(&parts, &t.attributes));
    let traceparent = span.as_ref().and_then(RequestSpan::traceparent);
    let (response, verdict) = serve(&shared, parts, body, arrived, traceparent).await;
    if let Some(span) = span {
        span.end(response.status().as_u16(), verdict.refusal, verdict.reused);
    }
    Ok(response)
}

/// What a request's span says beyond its status.
#[derive(Default)]
struct Verdict {
    /// Why the host answered instead of the guest.
    refusal: Option<&'static str>,
    /// Whether the instance had served requests before (`None`: no instance was reached).
    reused: Option<bool>,
}

async fn serve(
    shared: &Arc<Shared>,
    parts: http::request::Parts,
    body: Incoming,
    arrived: Instant,
    traceparent: Option<HeaderValue>,
) -> (Response<WasiBody>, Verdict) {
    let limits = shared.limits();
    let declared_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limits.effective_max_request_body()) {
        return rejected(shared, Rejection::BodyTooLarge);
    }
    // The body's start first, so a client that trickles it holds no slot (see `preread`).
    let timeout = limits.request_timeout.unwrap_or(MAX_DURATION);
    // Built only for a body that outlasts the pre-read.
    let pace = || {
        let shared = shared.clone();
        Pace {
            rate: limits.effective_min_request_body_rate(),
            paused: Box::new(move || shared.clients_hold_too_much()),
        }
    };
    let body = match preread(body, timeout, pace, || memory_full(shared, &limits)).await {
        Ok(body) => body,
        Err(PrereadError::MemoryFull) => {
            return overloaded(shared, arrived, "its memory limit is full");
        }
        // Not the guest's doing, and a flood of them must not flood the log either: debug only.
        Err(PrereadError::TimedOut) => {
            tracing::debug!(service = %shared.name, "request body not received within {timeout:?}");
            return rejected(shared, Rejection::BodyTimeout);
        }
        Err(PrereadError::Broken(e)) => {
            tracing::debug!(service = %shared.name, "request body unreadable: {e}");
            return rejected(shared, Rejection::BodyUnreadable);
        }
    };
    let request = Request::from_parts(parts, body);
    let queued = Instant::now();
    let Some(permit) = shared
        .admission
        .admit(
            limits.effective_max_concurrency(),
            limits.effective_queue_depth(),
        )
        .await
    else {
        return overloaded(shared, arrived, "every slot and queue place is taken");
    };
    shared.meter.stats().waited_in_queue(queued.elapsed());
    // Set when a body without a usable Content-Length runs past the cap, or falls behind the minimum rate,
    // while the guest reads it: the client's fault, which the client hears of whatever the guest made of it.
    let body_fault = Arc::new(OnceLock::new());
    let request = with_body_limit(
        with_host(request),
        limits.effective_max_request_body(),
        body_fault.clone(),
    );
    let (ending, reused) = if shared.reuses(&limits) {
        let request = request.map(BodyExt::boxed_unsync);
        reused(shared, limits, request, permit, traceparent).await
    } else {
        let ending = fresh(shared, limits, request, permit, traceparent).await;
        (ending, false)
    };
    let (response, refusal) = respond(shared, ending, &body_fault);
    shared.meter.stats().request_took(arrived.elapsed());
    let verdict = Verdict {
        refusal,
        reused: Some(reused),
    };
    (response, verdict)
}

/// Runs the request on a fresh instance of its own.
async fn fresh(
    shared: &Arc<Shared>,
    limits: Arc<Limits>,
    request: Request<
        impl hyper::body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    >,
    permit: Permit,
    traceparent: Option<HeaderValue>,
) -> Ending {
    let (sender, receiver) = oneshot::channel();
    // Metered from setup to teardown: building the store and returning its memory are the request's CPU too.
    let instance = shared.tasks.spawn(shared.guest_task(run_instance(
        shared.clone(),
        limits,
        request,
        sender,
        permit,
        traceparent,
    )));
    match receiver.await {
        Ok(Ok(response)) => Ending::Answer(Answer::Response(response)),
        Ok(Err(code)) => Ending::Answer(Answer::GuestError(error_code_name(&code))),
        // The instance ended without setting a response: its outcome says why.
        Err(_) => match instance.await {
            Ok(Some((cause, _))) => Ending::Failed(cause),
            Ok(None) => Ending::Answer(Answer::Unanswered),
            Err(join_error) => {
                tracing::error!(service = %shared.name, "request task failed: {join_error}");
                Ending::Failed(FailureCause::Trap)
            }
        },
    }
}

/// Hands the request to a reused instance; says whether that instance had served before.
async fn reused(
    shared: &Arc<Shared>,
    limits: Arc<Limits>,
    request: Request<WasiBody>,
    permit: Permit,
    traceparent: Option<HeaderValue>,
) -> (Ending, bool) {
    let (answer, answered) = oneshot::channel();
    let job = Job {
        request,
        answer,
        permit,
        limits,
        traceparent,
    };
    let (mut ended, was_used) = shared.pool.dispatch(shared, job);
    let ending = match answered.await {
        Ok(answer) => Ending::Answer(answer),
        Err(_) => {
            // The instance is gone; it says why as it ends, right after dropping what it held.
            let cause =
                tokio::time::timeout(Duration::from_secs(5), ended.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(|seen| seen.ok().and_then(|cause| *cause));
            Ending::Failed(cause.unwrap_or(FailureCause::Trap))
        }
    };
    (ending, was_used)
}

/// The response for how the request ended, counted and logged once, and why the host answered it if it
/// did. A request whose guest answered is served, whatever its instance did next; only one the guest could
/// not answer is refused.
fn respond(
    shared: &Shared,
    ending: Ending,
    body_fault: &OnceLock<Rejection>,
) -> (Response<WasiBody>, Option<&'static str>) {
    let cause = match ending {
        Ending::Answer(Answer::Response(response)) => {
            shared.meter.stats().served(response.status().as_u16());
            return (response, None);
        }
        _ if let Some(&why) = body_fault.get() => {
            let (response, verdict) = rejected(shared, why);
            return (response, verdict.refusal);
        }
        Ending::Answer(Answer::GuestError(name)) => {
            shared
                .meter
                .stats()
                .served(StatusCode::INTERNAL_SERVER_ERROR.as_u16());
            tracing::debug!(service = %shared.name, "guest returned an error: {name}");
            let response = text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("guest returned an error: {name}"),
            );
            return (response, None);
        }
        Ending::Answer(Answer::Unanswered) => {
            tracing::warn!(service = %shared.name, "guest returned without setting a response");
            FailureCause::Trap
        }
        Ending::Answer(Answer::Expired) => FailureCause::Timeout,
        Ending::Failed(cause) => cause,
    };
    shared.meter.stats().failed(cause);
    tracing::warn!(service = %shared.name, cause = cause.reason(), "request refused");
    (failure_response(cause), Some(cause.label()))
}

/// Runs the guest for one request; holds the admission permit until the instance is gone.
async fn run_instance(
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    request: Request<
        impl hyper::body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    >,
    sender: oneshot::Sender<Result<Response<WasiBody>, ErrorCode>>,
    _permit: Permit,
    traceparent: Option<HeaderValue>,
) -> Outcome {
    let mut store = match shared.new_store(&limits) {
        Ok(store) => store,
        Err(e) => {
            return failed(
                &shared,
                FailureCause::Trap,
                format!("cannot set up the instance: {e:#}"),
            );
        }
    };
    store.data_mut().set_traceparent(traceparent);
    store.data_mut().guard().start_request(&limits);
    let handles = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|req| Ok((req, store.data_mut().http().new_response_outparam(sender)?)));
    let (request, response_out) = match handles {
        Ok(handles) => handles,
        Err(e) => {
            return failed(
                &shared,
                FailureCause::Trap,
                format!("cannot pass the request to the guest: {e:#}"),
            );
        }
    };
    let result = {
        let run = async {
            let started = std::time::Instant::now();
            let Proxy::P2(proxy) = shared.pre.instantiate_async(&mut store).await? else {
                return Err(wasmtime::format_err!(
                    "WASI 0.3 instances are always reused"
                ));
            };
            shared.meter.stats().instantiated(started.elapsed());
            shared.meter.stats().instance_served(1);
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, response_out)
                .await
        };
        tokio::select! {
            result = with_timeout(limits.request_timeout, run) => result,
            () = shared.cancel.cancelled() => {
                drop(store);
                return failed(&shared, FailureCause::Cancelled, FailureCause::Cancelled.reason().into());
            }
        }
    };
    let outcome = finish(&mut store, &result);
    if let Some((cause, detail)) = &outcome {
        // The guest's backtrace can be dozens of lines: the one-line refusal is logged by `handle`.
        tracing::debug!(service = %shared.name, cause = cause.reason(), "instance failed: {detail}");
    }
    outcome
}

fn failed(shared: &Shared, cause: FailureCause, detail: String) -> Outcome {
    tracing::debug!(service = %shared.name, cause = cause.reason(), "instance failed: {detail}");
    Some((cause, detail))
}

/// wasi:http needs an authority; HTTP/1.0 clients may send neither a Host header nor an absolute URI.
fn with_host<B>(mut request: Request<B>) -> Request<B> {
    if request.uri().authority().is_none() && !request.headers().contains_key(header::HOST) {
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    request
}

/// Caps the body the guest can read, for bodies without (or lying about) a Content-Length; records in
/// `fault` why the body failed when that was its client's doing.
fn with_body_limit(
    request: Request<Preread>,
    max: u64,
    fault: Arc<OnceLock<Rejection>>,
) -> Request<impl hyper::body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static>
{
    request.map(|body| {
        Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).map_err(move |e| {
            if e.is::<LengthLimitError>() {
                let _ = fault.set(Rejection::BodyTooLarge);
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max))
            } else if e.is::<TooSlow>() {
                let _ = fault.set(Rejection::BodyTimeout);
                wasmtime_wasi_http::Error::ConnectionReadTimeout
            } else {
                match e.downcast::<hyper::Error>() {
                    Ok(hyper_error) => wasmtime_wasi_http::Error::Hyper(*hyper_error),
                    Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
                }
            }
        })
    })
}

/// Whether the service's instances and clients together hold more than its memory limit.
fn memory_full(shared: &Shared, limits: &Limits) -> bool {
    limits
        .memory
        .is_some_and(|total| shared.meter.stats().memory_with_clients() > total)
}
