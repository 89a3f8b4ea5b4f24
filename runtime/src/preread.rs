//! Reading the start of a request body before the request takes a concurrency slot.
//!
//! A slot (and, for a fresh-instance service, an instance) is scarce: a client that sends its head and then
//! trickles the body would otherwise hold one for as long as the request timeout allows, so a few hundred
//! slow connections would lock everybody else out. The body's first [`PREREAD_MAX`] bytes (all of a small
//! body) are read first, within the request timeout, on the connection's own task; only then is the request
//! admitted. A request without a body goes straight on. The rest streams to the guest at a minimum rate
//! ([`crate::body_pace`]).

use crate::body_pace::{BoxError, Pace, Paced};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The most of a body read before admission; the rest streams to the guest as it arrives.
pub(crate) const PREREAD_MAX: usize = 64 << 10;

/// Why the start of a body could not be read.
#[derive(Debug)]
pub(crate) enum PrereadError {
    /// The client did not send it within the time allowed.
    TimedOut,
    /// The connection failed or the body was malformed.
    Broken(hyper::Error),
    /// The service's memory limit filled up while the body was read.
    MemoryFull,
}

/// A request body whose start was read ahead: that start, then the rest as it arrives.
pub(crate) struct Preread {
    head: Option<Bytes>,
    rest: Option<Paced<Incoming>>,
    trailers: Option<HeaderMap>,
}

/// Reads up to [`PREREAD_MAX`] bytes of `body` (all of it, when smaller) within `timeout`, as long as
/// `memory_full` says the service has room for them (what is read is charged to it). The rest is to arrive
/// at the pace `pace` makes, once the guest reads it.
pub(crate) async fn preread(
    mut body: Incoming,
    timeout: Duration,
    pace: impl FnOnce() -> Pace,
    memory_full: impl Fn() -> bool,
) -> Result<Preread, PrereadError> {
    if body.is_end_stream() {
        return Ok(Preread {
            head: None,
            rest: None,
            trailers: None,
        });
    }
    let mut head = BytesMut::new();
    let mut trailers = None;
    let read = async {
        while head.len() < PREREAD_MAX {
            match body.frame().await {
                None => return Ok(true),
                Some(Err(e)) => return Err(PrereadError::Broken(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        head.extend_from_slice(&data);
                        if memory_full() {
                            return Err(PrereadError::MemoryFull);
                        }
                    }
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
            }
        }
        Ok(false)
    };
    let complete = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| PrereadError::TimedOut)??;
    Ok(Preread {
        head: Some(head.freeze()),
        rest: (!complete).then(|| Paced::new(body, pace())),
        trailers,
    })
}

impl Body for Preread {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take().filter(|h| !h.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(rest) = self.rest.as_mut() {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(Bytes::is_empty)
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(head),
            Some(rest) => hint_with_prefix(head, rest.size_hint()),
        }
    }
}

/// The size of a body that gives `prefix` bytes read ahead of it, then what `rest` hints.
pub(crate) fn hint_with_prefix(prefix: u64, rest: SizeHint) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower().saturating_add(prefix));
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper.saturating_add(prefix));
    }
    hint
}
