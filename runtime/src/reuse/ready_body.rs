//! A WASI 0.3 response's body, read ahead on its instance before the response goes to its client.
//!
//! A 0.3 guest returns its response before its body is written: the body comes from a task of its own,
//! through wasmtime's one-chunk channel, and its end only once that chunk has been taken. Handed over at
//! once, hyper writes the head with the first chunk, finds nothing more, and sends the end in a second
//! write a little later: two trips through the kernel for a small response, and chunked framing for a body
//! whose size the guest was about to make known. Reading what the guest writes within a few turns of the
//! instance's event loop, on the instance's own task (which is what lets the guest go on writing), gives
//! hyper a body that is often complete: it then sends head and body in one write, with a
//! `content-length`. A body still streaming after those turns goes on as it came, after what was read.

use crate::preread::hint_with_prefix;
use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use wasmtime_wasi_http::{Error, WasiBody};

/// Turns of the instance's event loop spent waiting for more of a body. Each is a yield to whatever else
/// the worker has ready, so a streaming body's head is not held back by more than a few of them.
const TURNS: usize = 4;
/// At most this much of a body is read ahead: it is held here, charged to the service like the rest of
/// its instance's memory, until the client takes it.
const MAX_BYTES: usize = 64 << 10;

/// `response` with what its body has ready within a few turns read ahead.
pub(super) async fn with_body_read_ahead(response: Response<WasiBody>) -> Response<WasiBody> {
    let (parts, mut rest) = response.into_parts();
    let mut ahead = ReadAhead::default();
    let mut turns = 0;
    while ahead.bytes < MAX_BYTES && !ahead.finished() {
        match futures::poll!(rest.frame()) {
            Poll::Ready(Some(Ok(frame))) => ahead.push(frame),
            Poll::Ready(Some(Err(error))) => ahead.error = Some(error),
            Poll::Ready(None) => ahead.ended = true,
            Poll::Pending if turns == TURNS => break,
            Poll::Pending => {
                turns += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    if ahead.frames.is_empty() && !ahead.finished() {
        return Response::from_parts(parts, rest);
    }
    Response::from_parts(parts, ReadAheadBody { ahead, rest }.boxed_unsync())
}

/// What was read of a body before it was handed over.
#[derive(Default)]
struct ReadAhead {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    bytes: usize,
    /// Trailers are among `frames`: the body cannot be sent with a `content-length`.
    trailers: bool,
    /// The body failed after `frames`.
    error: Option<Error>,
    /// The body ended after `frames`.
    ended: bool,
}

impl ReadAhead {
    fn push(&mut self, frame: Frame<Bytes>) {
        match frame.data_ref() {
            Some(data) => self.bytes += data.len(),
            None => self.trailers = true,
        }
        self.frames.push_back(frame);
    }

    /// Nothing more will come from the body.
    fn finished(&self) -> bool {
        self.ended || self.error.is_some() || self.trailers
    }
}

/// The frames read ahead, then the rest of the body.
struct ReadAheadBody {
    ahead: ReadAhead,
    rest: WasiBody,
}

impl Body for ReadAheadBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let ahead = &mut self.ahead;
        if let Some(frame) = ahead.frames.pop_front() {
            if let Some(data) = frame.data_ref() {
                ahead.bytes -= data.len();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = ahead.error.take() {
            ahead.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        if ahead.finished() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.frames.is_empty()
            && self.ahead.error.is_none()
            && (self.ahead.finished() || self.rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self.ahead.bytes as u64;
        if self.ahead.ended && !self.ahead.trailers && self.ahead.error.is_none() {
            // hyper sends a body of exactly known size with a `content-length`, in the head's write.
            return SizeHint::with_exact(ahead);
        }
        hint_with_prefix(ahead, self.rest.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    type Sent = Result<Frame<Bytes>, Error>;

    /// Sends a data frame of `bytes` down a test body's channel.
    fn send_data(sender: &futures::channel::mpsc::UnboundedSender<Sent>, bytes: &'static [u8]) {
        sender
            .unbounded_send(Ok(Frame::data(Bytes::from_static(bytes))))
            .unwrap();
    }

    /// A response whose body gives what `channel` is sent, as a guest's would.
    fn response(channel: futures::channel::mpsc::UnboundedReceiver<Sent>) -> Response<WasiBody> {
        Response::new(StreamBody::new(channel).boxed_unsync())
    }

    #[tokio::test]
    async fn a_body_complete_within_the_turns_is_read_ahead_and_sent_with_its_length() {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        send_data(&sender, b"Hello, ");
        // The rest comes a turn later, from another task, as a guest's body task writes it.
        let writer = tokio::spawn(async move {
            send_data(&sender, b"world");
        });
        let response = with_body_read_ahead(response(receiver)).await;
        writer.await.unwrap();
        let body = response.into_body();
        assert_eq!(body.size_hint().exact(), Some(12));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "Hello, world");
    }

    #[tokio::test]
    async fn a_body_still_streaming_after_the_turns_goes_on_after_what_was_read() {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        send_data(&sender, b"first ");
        let response = with_body_read_ahead(response(receiver)).await;
        let mut body = response.into_body();
        assert_eq!(body.size_hint().exact(), None);
        assert!(!body.is_end_stream());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first ");
        send_data(&sender, b"then more");
        drop(sender);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "then more");
    }

    #[tokio::test]
    async fn trailers_and_errors_keep_their_place_and_no_length_is_claimed() {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        send_data(&sender, b"data");
        sender
            .unbounded_send(Ok(Frame::trailers(http::HeaderMap::new())))
            .unwrap();
        drop(sender);
        let body = with_body_read_ahead(response(receiver)).await.into_body();
        assert_eq!(body.size_hint().exact(), None);
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(collected.to_bytes(), "data");

        let (sender, receiver) = futures::channel::mpsc::unbounded();
        send_data(&sender, b"part");
        sender
            .unbounded_send(Err(Error::ConnectionTerminated))
            .unwrap();
        let mut body = with_body_read_ahead(response(receiver)).await.into_body();
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "part"
        );
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.frame().await.is_none());
        drop(sender);
    }
}
