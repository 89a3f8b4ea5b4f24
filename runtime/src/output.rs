//! Where guest stdout and stderr go.
//!
//! Every instance of a service gets its own line buffer in front of the caller's writer, so lines from
//! concurrent request instances never interleave mid-line; whatever is left without a newline is written
//! when the instance is dropped, so nothing is lost at exit. A command, the only writer of its streams,
//! writes through as a process does: a prompt or `echo -n` reaches its reader at once, as written.
//!
//! Serving never waits for the writer: complete lines go into a bounded queue that a thread of the
//! destination's own writes out (to containerd's fifo, say). When the reader stalls and the queue is full,
//! lines are dropped, counted, and the count is logged once the writer moves again: a stalled log reader
//! costs log lines, never requests.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A line longer than this is written out in pieces rather than buffered without bound.
const MAX_PENDING_LINE: usize = 64 << 10;
/// Bytes of complete lines a destination holds while its writer is busy; more are dropped.
const MAX_QUEUED: usize = 1 << 20;
/// How long the end of a command or service waits for its output to be written.
pub(crate) const FINAL_DRAIN: Duration = Duration::from_secs(2);

/// A destination for one guest output stream (stdout or stderr), shared by all instances of a service.
#[derive(Clone, Default)]
pub struct GuestOutput {
    sink: Option<Arc<Sink>>,
}

impl GuestOutput {
    /// Sends complete lines to `writer`, from a thread of its own, flushing after each batch.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        let queue = Arc::new(Queue::default());
        let writing = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("wasmhttp-output".into())
            .spawn(move || writing.write_out(Box::new(writer)));
        if let Err(e) = spawned {
            tracing::warn!("guest output discarded: cannot start its writer thread: {e}");
            return Self::discard();
        }
        GuestOutput {
            sink: Some(Arc::new(Sink(queue))),
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

    /// Writes one line from the host itself (say, why a guest was stopped), on a line of its own.
    pub fn write_line(&self, line: &str) {
        if let Some(sink) = &self.sink {
            sink.0.push_with(|mid_line| {
                let start = if mid_line { "\n" } else { "" };
                format!("{start}{line}\n").into_bytes()
            });
        }
    }

    /// Lines dropped so far because the reader did not keep up.
    pub fn dropped_lines(&self) -> u64 {
        self.sink
            .as_ref()
            .map_or(0, |s| s.0.dropped.load(Ordering::Relaxed))
    }

    /// Waits up to `timeout` until every queued line is written (a command's output before its exit is
    /// reported); false when the writer is still stalled.
    pub fn drain(&self, timeout: Duration) -> bool {
        let Some(sink) = &self.sink else { return true };
        let state = sink.0.state.lock().unwrap_or_else(|e| e.into_inner());
        let (_state, waited) = sink
            .0
            .idle
            .wait_timeout_while(state, timeout, |s| !s.lines.is_empty() || s.writing)
            .unwrap_or_else(|e| e.into_inner());
        !waited.timed_out()
    }

    /// [`Self::drain`] for up to [`FINAL_DRAIN`], off the async executor.
    pub(crate) async fn drain_at_end(&self) {
        let output = self.clone();
        let _ = tokio::task::spawn_blocking(move || output.drain(FINAL_DRAIN)).await;
    }

    /// A fresh per-instance line buffer in front of this destination, or, for the only writer of it
    /// (`line_buffered` false), a stream that passes every write through.
    pub(crate) fn instance_stream(&self, line_buffered: bool) -> InstanceOutput {
        InstanceOutput(Arc::new(Mutex::new(LineBuffer {
            pending: Vec::new(),
            sink: self.sink.clone(),
            line_buffered,
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

/// The producers' handle on a queue: when the last one goes, the writer finishes the queue and stops.
struct Sink(Arc<Queue>);

impl Drop for Sink {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.0.ready.notify_one();
    }
}

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when lines arrive or the producers are gone.
    ready: Condvar,
    /// Signalled when the queue is empty and nothing is being written.
    idle: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct QueueState {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    writing: bool,
    closed: bool,
    /// Whether the last chunk queued left its line unfinished.
    mid_line: bool,
    /// Dropped since the last report.
    unreported: u64,
}

impl Queue {
    fn push(&self, chunk: Vec<u8>) {
        self.push_with(|_| chunk);
    }

    /// Queues the chunk `make` builds, told whether the last chunk queued left its line unfinished.
    fn push_with(&self, make: impl FnOnce(bool) -> Vec<u8>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = make(state.mid_line);
        if state.bytes + chunk.len() > MAX_QUEUED {
            let lines = chunk.iter().filter(|&&b| b == b'\n').count().max(1) as u64;
            state.unreported += lines;
            self.dropped.fetch_add(lines, Ordering::Relaxed);
            return;
        }
        state.bytes += chunk.len();
        state.mid_line = !chunk.ends_with(b"\n");
        state.lines.push_back(chunk);
        drop(state);
        self.ready.notify_one();
    }

    /// The writer thread: writes batches as they come, blocking on `writer` alone.
    fn write_out(&self, mut writer: Box<dyn Write + Send>) {
        loop {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.writing = false;
            if state.lines.is_empty() {
                self.idle.notify_all();
            }
            state = self
                .ready
                .wait_while(state, |s| s.lines.is_empty() && !s.closed)
                .unwrap_or_else(|e| e.into_inner());
            if state.lines.is_empty() {
                return; // closed, and everything written
            }
            let batch: Vec<Vec<u8>> = state.lines.drain(..).collect();
            state.bytes = 0;
            state.writing = true;
            let unreported = std::mem::take(&mut state.unreported);
            drop(state);
            if unreported > 0 {
                tracing::warn!(
                    lines = unreported,
                    "guest output dropped: the log reader did not keep up"
                );
            }
            // A reader that went away (closed fifo, closed terminal) must not take the guest down with it.
            let written = batch
                .iter()
                .try_for_each(|chunk| writer.write_all(chunk))
                .and_then(|()| writer.flush());
            if let Err(e) = written {
                tracing::debug!("guest output dropped: {e}");
            }
        }
    }
}

struct LineBuffer {
    pending: Vec<u8>,
    sink: Option<Arc<Sink>>,
    line_buffered: bool,
}

impl LineBuffer {
    fn write(&mut self, bytes: &[u8]) {
        let Some(sink) = &self.sink else { return };
        if !self.line_buffered {
            sink.0.push(bytes.to_vec());
            return;
        }
        self.pending.extend_from_slice(bytes);
        let cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(last_newline) => last_newline + 1,
            None if self.pending.len() >= MAX_PENDING_LINE => self.pending.len(),
            None => return,
        };
        let rest = self.pending.split_off(cut);
        sink.0.push(std::mem::replace(&mut self.pending, rest));
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if let (Some(sink), false) = (&self.sink, self.pending.is_empty()) {
            self.pending.push(b'\n');
            sink.0.push(std::mem::take(&mut self.pending));
        }
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
        let a = output.instance_stream(true);
        let b = output.instance_stream(true);
        a.0.lock().unwrap().write(b"a-first ");
        b.0.lock().unwrap().write(b"b-line\n");
        a.0.lock().unwrap().write(b"half\na-tail");
        drop(a);
        drop(b);
        assert!(output.drain(Duration::from_secs(5)));
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "b-line\na-first half\na-tail\n");
    }

    #[test]
    fn a_command_writes_through_and_the_hosts_line_starts_its_own() {
        let capture = Capture::default();
        let output = GuestOutput::new(capture.clone());
        let command = output.instance_stream(false);
        command.0.lock().unwrap().write(b"hello");
        assert!(output.drain(Duration::from_secs(5)));
        assert_eq!(
            capture.0.lock().unwrap().as_slice(),
            b"hello",
            "at once, as written"
        );
        output.write_line("stopped");
        drop(command);
        assert!(output.drain(Duration::from_secs(5)));
        assert_eq!(capture.0.lock().unwrap().as_slice(), b"hello\nstopped\n");
    }

    #[test]
    fn a_stalled_reader_costs_lines_never_a_blocked_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        // Opened for reading and writing, so the open does not wait for a reader; nobody ever reads it.
        let stalled = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let output = GuestOutput::new(stalled);
        let stream = output.instance_stream(true);
        let line = [b'x'; 1023];
        let started = std::time::Instant::now();
        for _ in 0..8192 {
            let mut guard = stream.0.lock().unwrap();
            guard.write(&line);
            guard.write(b"\n");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "8 MiB of lines took {:?}",
            started.elapsed()
        );
        assert!(
            output.dropped_lines() > 4096,
            "the pipe and the queue hold about 1 MiB, the rest is dropped: {}",
            output.dropped_lines()
        );
        assert!(
            !output.drain(Duration::from_millis(100)),
            "the writer is stalled"
        );
        drop(stream);
        drop(output); // the stalled writer thread is left behind, the guest is not
    }
}
