//! One HTTP request: admission, a fresh instance, and a proper response whatever happens to it.

use crate::admission::Permit;
use crate::cpu::{Metered, with_timeout};
use crate::instance::{InstanceGuard, InstanceIo, InstanceState, finish, new_store};
use crate::limits::Limits;
use crate::service::Shared;
use crate::stats::FailureCause;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

type Outcome = Option<(FailureCause, String)>;

/// Serves one request; never fails, so hyper never drops a connection on our account.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>, Infallible> {
    let limits = shared.limits();
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limits.max_request_body) {
        return Ok(text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    let Some(permit) = shared
        .admission
        .admit(limits.max_concurrency, limits.queue_depth)
        .await
    else {
        shared.meter.stats().failed(FailureCause::Overload);
        tracing::warn!(service = %shared.name, "request refused: {}", FailureCause::Overload.reason());
        return Ok(failure_response(FailureCause::Overload));
    };
    let (sender, receiver) = oneshot::channel();
    // Metered from setup to teardown: building the store and returning its memory are the request's CPU too.
    let instance = shared.tasks.spawn(Metered::new(
        run_instance(shared.clone(), limits, request, sender, permit),
        shared.meter.clone(),
    ));
    match receiver.await {
        Ok(Ok(response)) => {
            shared.meter.stats().served();
            Ok(response)
        }
        Ok(Err(code)) => {
            shared.meter.stats().served();
            Ok(text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("guest returned an error: {code:?}"),
            ))
        }
        // The instance ended without setting a response: its outcome says why.
        Err(_) => {
            let cause = match instance.await {
                Ok(Some((cause, _))) => cause,
                Ok(None) => {
                    tracing::warn!(service = %shared.name, "guest returned without setting a response");
                    FailureCause::Trap
                }
                Err(join_error) => {
                    tracing::error!(service = %shared.name, "request task failed: {join_error}");
                    FailureCause::Trap
                }
            };
            Ok(failure_response(cause))
        }
    }
}

/// Runs the guest for one request; holds the admission permit until the instance is gone.
async fn run_instance(
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    request: Request<Incoming>,
    sender: oneshot::Sender<Result<Response<HyperOutgoingBody>, ErrorCode>>,
    _permit: Permit,
) -> Outcome {
    let guard = InstanceGuard::new(
        shared.meter.clone(),
        &limits,
        shared.runtime.config().max_table_elements,
    );
    let io = InstanceIo {
        caps: &shared.caps,
        stdout: &shared.stdout,
        stderr: &shared.stderr,
        stdin: None,
    };
    let state = match InstanceState::new(io, guard) {
        Ok(state) => state,
        Err(e) => {
            return failed(
                &shared,
                FailureCause::Trap,
                format!("cannot set up the instance: {e:#}"),
            );
        }
    };
    let mut store = new_store(shared.runtime.engine(), state);
    let request = with_body_limit(with_host(request), limits.max_request_body);
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
            let proxy = shared.pre.instantiate_async(&mut store).await?;
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
                return failed(&shared, FailureCause::Overload, "cancelled: the service stopped".into());
            }
        }
    };
    let outcome = finish(&mut store, &result);
    if let Some((cause, detail)) = &outcome {
        tracing::warn!(service = %shared.name, cause = cause.reason(), "request failed: {detail}");
    }
    outcome
}

fn failed(shared: &Shared, cause: FailureCause, detail: String) -> Outcome {
    shared.meter.stats().failed(cause);
    tracing::warn!(service = %shared.name, cause = cause.reason(), "request failed: {detail}");
    Some((cause, detail))
}

/// wasi:http needs an authority; HTTP/1.0 clients may send neither a Host header nor an absolute URI.
fn with_host(mut request: Request<Incoming>) -> Request<Incoming> {
    if request.uri().authority().is_none() && !request.headers().contains_key(header::HOST) {
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    request
}

/// Caps the body the guest can read, for bodies without (or lying about) a Content-Length.
fn with_body_limit(
    request: Request<Incoming>,
    max: u64,
) -> Request<impl hyper::body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static>
{
    request.map(|body| {
        Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).map_err(move |e| {
            if e.is::<LengthLimitError>() {
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
pub(crate) fn failure_response(cause: FailureCause) -> Response<HyperOutgoingBody> {
    let status = match cause {
        FailureCause::Trap | FailureCause::Cpu | FailureCause::Memory => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        FailureCause::Timeout => StatusCode::GATEWAY_TIMEOUT,
        FailureCause::Overload => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = text_response(status, cause.reason());
    if cause == FailureCause::Overload {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn text_response(status: StatusCode, reason: &str) -> Response<HyperOutgoingBody> {
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
