//! Backpressure on a service's clients once what the shim holds for them does not fit its memory limit:
//! their connections read nothing more, and new ones wait in the listen backlog, so what they send stays in
//! the kernel's socket buffers instead of ours. Reading resumes when memory is freed; a client that keeps
//! waiting is closed by the header read timeout. Without this, clients that send only part of a head
//! would each make the shim hold up to a read buffer, past the limit, until that timeout.
//!
//! A paused connection whose client has gone (a FIN or a reset arrived) reads on, to its end, so what it
//! holds is freed at once rather than at the timeout.
//!
//! The decision (when the clients hold too much) is the caller's; this module only waits it out.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The first wait before a closed gate is asked again; each further wait doubles, up to [`LAST_WAIT`], so
/// many paused connections cost few wake-ups.
pub(crate) const FIRST_WAIT: Duration = Duration::from_millis(10);
/// The longest wait between two looks at a closed gate.
pub(crate) const LAST_WAIT: Duration = Duration::from_millis(160);

/// Whether the other end of a connection has closed it, learnt without reading what it sent.
pub(crate) trait PeerClosed {
    fn peer_closed(&self) -> bool;
}

impl PeerClosed for tokio::net::TcpStream {
    fn peer_closed(&self) -> bool {
        // From the kernel's `tcp_states.h`: the peer's FIN has arrived, or a reset ended the connection.
        const TCP_CLOSE: u8 = 7;
        const TCP_CLOSE_WAIT: u8 = 8;
        // SAFETY: `tcp_info` is plain data the kernel fills in up to `len`, and the descriptor is this
        // stream's, open for the call.
        let state = unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let got = libc::getsockopt(
                self.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            );
            (got == 0).then_some(info.tcpi_state)
        };
        matches!(state, Some(TCP_CLOSE | TCP_CLOSE_WAIT))
    }
}

/// A stream whose reads wait while `closed()` says so, unless its peer has gone. Writes pass through:
/// answering a client frees what its request holds.
pub(crate) struct GatedReads<S, G> {
    inner: S,
    closed: G,
    waiting: Option<Pin<Box<Sleep>>>,
    next_wait: Duration,
}

impl<S: PeerClosed, G: Fn() -> bool> GatedReads<S, G> {
    pub(crate) fn new(inner: S, closed: G) -> Self {
        GatedReads {
            inner,
            closed,
            waiting: None,
            next_wait: FIRST_WAIT,
        }
    }

    /// Ready once the gate is open, asking it again after each wait.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(waiting) = &mut self.waiting {
                ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
            }
            if !(self.closed)() || self.inner.peer_closed() {
                self.next_wait = FIRST_WAIT;
                return Poll::Ready(());
            }
            let wait = self.next_wait;
            self.next_wait = (wait * 2).min(LAST_WAIT);
            self.waiting = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }
}

impl<S: AsyncRead + PeerClosed + Unpin, G: Fn() -> bool + Unpin> AsyncRead for GatedReads<S, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_open(cx));
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, G: Unpin> AsyncWrite for GatedReads<S, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    impl PeerClosed for tokio::io::DuplexStream {
        fn peer_closed(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn reads_wait_while_the_gate_is_closed_asking_it_less_and_less_often() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let closed = Arc::new(AtomicBool::new(true));
        let asked = Arc::new(AtomicUsize::new(0));
        let gate = {
            let (closed, asked) = (closed.clone(), asked.clone());
            move || {
                asked.fetch_add(1, Relaxed);
                closed.load(Relaxed)
            }
        };
        let mut stream = GatedReads::new(ours, gate);
        theirs.write_all(b"sent").await.unwrap();
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        assert!(read.is_err(), "read through a closed gate: {read:?}");
        // 10, 20, 40, 80 ms, then every 160 ms: about 10 looks in 1 s (fewer if timers run late), where
        // a fixed 10 ms would take 100.
        let looks = asked.load(Relaxed);
        assert!((3..=15).contains(&looks), "{looks} looks in 1 s");

        // Writes are not held, and once the gate opens the bytes the kernel kept are read.
        stream.write_all(b"reply").await.unwrap();
        closed.store(false, Relaxed);
        let read = tokio::time::timeout(LAST_WAIT * 2, stream.read(&mut buf)).await;
        assert_eq!(read.unwrap().unwrap(), 4);
        assert_eq!(&buf, b"sent");
        let mut reply = [0u8; 5];
        theirs.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn a_paused_connection_whose_client_left_reads_to_its_end() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let mut stream = GatedReads::new(ours, || true);
        client
            .write_all(b"GET / HTTP/1.1\r\nx-pad: aaaa")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(LAST_WAIT * 2, stream.read(&mut buf)).await;
        assert!(read.is_err(), "read through a closed gate: {read:?}");

        drop(client);
        let mut sent = Vec::new();
        let read = tokio::time::timeout(LAST_WAIT * 2, stream.read_to_end(&mut sent)).await;
        assert_eq!(
            read.expect("a paused connection missed its client's close")
                .unwrap(),
            27
        );
    }
}
