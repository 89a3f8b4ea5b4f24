//! Where guest stdout and stderr go.
//!
//! Every instance gets its own line buffer in front of the caller's writer, so lines from concurrent
//! request instances never interleave mid-line; whatever is left without a newline is written when the
//! instance is dropped, so nothing is lost at exit.

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A line longer than this is written out in pieces rather than buffered without bound.
const MAX_PENDING_LINE: usize = 64 << 10;

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A destination for one guest output stream (stdout or stderr), shared by all instances of a service.
#[derive(Clone, Default)]
pub struct GuestOutput {
    sink: Option<Sink>,
}

impl GuestOutput {
    /// Sends complete lines to `writer`, flushing after each batch.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        GuestOutput {
            sink: Some(Arc::new(Mutex::new(Box::new(writer)))),
        }
    }

    /// Drops everything the guest writes.
    pub fn discard() -> Self {
        GuestOutput { sink: None }
    }

    /// The host process's stdout.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    /// The host process's stderr.
    pub fn stderr() -> Self {
        Self::new(std::io::stderr())
    }

    /// Writes one line from the host itself (say, why a guest was stopped).
    pub fn write_line(&self, line: &str) {
        if let Some(sink) = &self.sink {
            write_to(sink, format!("{line}\n").as_bytes());
        }
    }

    /// A fresh per-instance line buffer in front of this destination.
    pub(crate) fn instance_stream(&self) -> InstanceOutput {
        InstanceOutput(Arc::new(Mutex::new(LineBuffer {
            pending: Vec::new(),
            sink: self.sink.clone(),
        })))
    }
}

impl std::fmt::Debug for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sink.is_some() {
            "GuestOutput(writer)"
        } else {
            "GuestOutput(discard)"
        })
    }
}

struct LineBuffer {
    pending: Vec<u8>,
    sink: Option<Sink>,
}

impl LineBuffer {
    fn write(&mut self, bytes: &[u8]) {
        let Some(sink) = &self.sink else { return };
        self.pending.extend_from_slice(bytes);
        let cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(last_newline) => last_newline + 1,
            None if self.pending.len() >= MAX_PENDING_LINE => self.pending.len(),
            None => return,
        };
        write_to(sink, &self.pending[..cut]);
        self.pending.drain(..cut);
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if let (Some(sink), false) = (&self.sink, self.pending.is_empty()) {
            self.pending.push(b'\n');
            write_to(sink, &self.pending);
        }
    }
}

fn write_to(sink: &Sink, bytes: &[u8]) {
    // A poisoned lock only means another writer panicked mid-write; the writer itself is still usable.
    let mut writer = sink.lock().unwrap_or_else(|e| e.into_inner());
    // A reader that went away (closed fifo, closed terminal) must not take the guest down with it.
    if let Err(e) = writer.write_all(bytes).and_then(|()| writer.flush()) {
        tracing::debug!("guest output dropped: {e}");
    }
}

/// One instance's view of a [`GuestOutput`]; cloning shares the line buffer.
#[derive(Clone)]
pub(crate) struct InstanceOutput(Arc<Mutex<LineBuffer>>);

impl IsTerminal for InstanceOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for InstanceOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for InstanceOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_do_not_interleave_and_the_tail_is_kept() {
        let capture = Capture::default();
        let output = GuestOutput::new(capture.clone());
        let a = output.instance_stream();
        let b = output.instance_stream();
        a.0.lock().unwrap().write(b"a-first ");
        b.0.lock().unwrap().write(b"b-line\n");
        a.0.lock().unwrap().write(b"half\na-tail");
        drop(a);
        drop(b);
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "b-line\na-first half\na-tail\n");
    }
}
