//! The host's own answers: a request the guest could not answer, one refused before it reached an instance,
//! and one whose body the host would not hand on; each counted and logged where it is decided.

use super::{Shared, Verdict};
use crate::stats::{FailureCause, Rejection};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::time::Instant;
use wasmtime_wasi_http::WasiBody;

/// The response for a request the guest could not answer.
pub(super) fn failure_response(cause: FailureCause) -> Response<WasiBody> {
    let status = StatusCode::from_u16(cause.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = text_response(status, cause.reason());
    if cause == FailureCause::Overload {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Refuses a request before it reaches an instance because the service is full (503), counted and logged
/// with `why`.
pub(super) fn overloaded(
    shared: &Shared,
    arrived: Instant,
    why: &str,
) -> (Response<WasiBody>, Verdict) {
    let cause = FailureCause::Overload;
    shared.meter.stats().failed(cause);
    shared.meter.stats().request_took(arrived.elapsed());
    tracing::warn!(service = %shared.name, "request refused: {}: {why}", cause.reason());
    let verdict = Verdict {
        refusal: Some(cause.label()),
        reused: None,
    };
    (failure_response(cause), verdict)
}

/// The host's answer to a request it will not hand (further) to the guest, counted.
pub(super) fn rejected(shared: &Shared, why: Rejection) -> (Response<WasiBody>, Verdict) {
    shared.meter.stats().rejected(why);
    let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let reason = match why {
        Rejection::BodyTooLarge => "request body too large",
        Rejection::BodyTimeout => "request body not received in time",
        Rejection::BodyUnreadable => "request body unreadable",
    };
    let verdict = Verdict {
        refusal: Some(why.label()),
        reused: None,
    };
    (text_response(status, reason), verdict)
}

/// A plain-text answer of `status` saying `reason`.
pub(super) fn text_response(status: StatusCode, reason: &str) -> Response<WasiBody> {
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
