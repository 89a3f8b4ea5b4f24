//! One HTTP request: admission, an instance (a fresh one, or a reused one from [`crate::reuse`]), and a
//! proper response whatever happens to it.

use crate::admission::{Admission, Permit};
use crate::capabilities::Capabilities;
use crate::classify::WasiVersion;
use crate::cpu::CpuMeter;
use crate::deadline::with_timeout;
use crate::engine::Runtime;
use crate::instance::{Guarded, InstanceGuard, InstanceIo, InstanceState, finish, new_store};
use crate::knobs::Limits;
use crate::knobs::value::MAX_DURATION;
use crate::metered::Metered;
use crate::output::GuestOutput;
use crate::preread::{Preread, PrereadError, preread};
use crate::reuse::{Answer, Job, Pool, error_code_name};
use crate::stats::FailureCause;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime_wasi_http::handler::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

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
}

impl Shared {
    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    let limits = shared.limits();
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limits.effective_max_request_body()) {
        return Ok(text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    // The body's start first, so a client that trickles it holds no slot (see `preread`).
    let (parts, body) = request.into_parts();
    let timeout = limits.request_timeout.unwrap_or(MAX_DURATION);
    let body = match preread(body, timeout).await {
        Ok(body) => body,
        // Not the guest's doing, and a flood of them must not flood the log either: debug only.
        Err(PrereadError::TimedOut) => {
            tracing::debug!(service = %shared.name, "request body not received within {timeout:?}");
            return Ok(text_response(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            ));
        }
        Err(PrereadError::Broken(e)) => {
            tracing::debug!(service = %shared.name, "request body unreadable: {e}");
            return Ok(text_response(
                StatusCode::BAD_REQUEST,
                "request body unreadable",
            ));
        }
    };
    let request = Request::from_parts(parts, body);
    let Some(permit) = shared
        .admission
        .admit(
            limits.effective_max_concurrency(),
            limits.effective_queue_depth(),
        )
        .await
    else {
        shared.meter.stats().failed(FailureCause::Overload);
        tracing::warn!(service = %shared.name, "request refused: {}", FailureCause::Overload.reason());
        return Ok(failure_response(FailureCause::Overload));
    };
    // Set when a body without a usable Content-Length runs past the cap while the guest reads it.
    let body_cut = Arc::new(AtomicBool::new(false));
    let request = with_body_limit(
        with_host(request),
        limits.effective_max_request_body(),
        body_cut.clone(),
    );
    let ending = if shared.reuses(&limits) {
        reused(&shared, limits, request.map(BodyExt::boxed_unsync), permit).await
    } else {
        fresh(&shared, limits, request, permit).await
    };
    Ok(respond(&shared, ending, &body_cut))
}

/// Runs the request on a fresh instance of its own.
async fn fresh(
    shared: &Arc<Shared>,
    limits: Arc<Limits>,
    request: Request<
        impl hyper::body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    >,
    permit: Permit,
) -> Ending {
    let (sender, receiver) = oneshot::channel();
    // Metered from setup to teardown: building the store and returning its memory are the request's CPU too.
    let instance = shared.tasks.spawn(Metered::new(
        run_instance(shared.clone(), limits, request, sender, permit),
        shared.meter.clone(),
    ));
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

/// Hands the request to a reused instance.
async fn reused(
    shared: &Arc<Shared>,
    limits: Arc<Limits>,
    request: Request<WasiBody>,
    permit: Permit,
) -> Ending {
    let (answer, answered) = oneshot::channel();
    let job = Job {
        request,
        answer,
        permit,
        limits,
    };
    let mut ended = shared.pool.dispatch(shared, job);
    match answered.await {
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
    }
}

/// The response for how the request ended, counted and logged once. A request whose guest answered is
/// served, whatever its instance did next; only one the guest could not answer is refused.
fn respond(shared: &Shared, ending: Ending, body_cut: &AtomicBool) -> Response<WasiBody> {
    let cause = match ending {
        Ending::Answer(Answer::Response(response)) => {
            shared.meter.stats().served();
            return response;
        }
        _ if body_cut.load(Ordering::Relaxed) => {
            return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Ending::Answer(Answer::GuestError(name)) => {
            shared.meter.stats().served();
            tracing::debug!(service = %shared.name, "guest returned an error: {name}");
            return text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("guest returned an error: {name}"),
            );
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
    failure_response(cause)
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

/// Caps the body the guest can read, for bodies without (or lying about) a Content-Length.
fn with_body_limit(
    request: Request<Preread>,
    max: u64,
    cut: Arc<AtomicBool>,
) -> Request<impl hyper::body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static>
{
    request.map(|body| {
        Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).map_err(move |e| {
            if e.is::<LengthLimitError>() {
                cut.store(true, Ordering::Relaxed);
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max))
            } else {
                match e.downcast::<hyper::Error>() {
                    Ok(hyper_error) => wasmtime_wasi_http::Error::Hyper(*hyper_error),
                    Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
                }
            }
        })
    })
}

/// The response for a request the guest could not answer.
pub(crate) fn failure_response(cause: FailureCause) -> Response<WasiBody> {
    let status = match cause {
        FailureCause::Trap | FailureCause::Fuel | FailureCause::Memory => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        FailureCause::Timeout => StatusCode::GATEWAY_TIMEOUT,
        FailureCause::Overload | FailureCause::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = text_response(status, cause.reason());
    if cause == FailureCause::Overload {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn text_response(status: StatusCode, reason: &str) -> Response<WasiBody> {
    let body = Full::new(Bytes::from(format!("{reason}\n")))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
