//! A write timeout for client connections: a client that stops reading its response makes our writes
//! wait forever, holding the connection, its buffers and a `max-connections` slot. The timer runs only
//! while a write waits and restarts whenever one makes progress, so a slow reader is served; one that
//! reads nothing for the timeout gets its connection closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A stream whose writes fail with `TimedOut` after waiting `timeout` without progress.
pub(crate) struct StalledWriteTimeout<S> {
    inner: S,
    timeout: Duration,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> StalledWriteTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        StalledWriteTimeout {
            inner,
            timeout,
            waiting: None,
        }
    }

    /// Passes a write's outcome through, timing how long it has been pending.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.waiting = None;
            return outcome;
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StalledWriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StalledWriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, outcome)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_reader_that_reads_nothing_times_the_write_out_and_a_slow_one_does_not() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut stream = StalledWriteTimeout::new(ours, Duration::from_millis(200));
        let big = vec![7u8; 64 << 10];
        let started = std::time::Instant::now();
        let err = stream.write_all(&big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));

        // A reader taking 1 KiB every 50 ms is slow, but never 200 ms without progress.
        let (ours, mut slow) = tokio::io::duplex(1024);
        let mut stream = StalledWriteTimeout::new(ours, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < 16 << 10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += slow.read(&mut buf).await.unwrap();
            }
            total
        });
        stream.write_all(&big[..16 << 10]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 16 << 10);
        drop(theirs);
    }
}
