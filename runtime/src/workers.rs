//! The threads that run HTTP connections and their instances: one single-threaded tokio runtime each.
//!
//! A connection, the instances serving its requests and their response bodies all live on one thread, so
//! no request wakes another thread or has its tasks stolen across cores. On the 2-core machine this was
//! measured on (`wrk -t2 -c50` sharing the cores), serving hello on a multi-threaded runtime cost ~80 µs of
//! CPU per request; on one single-threaded runtime per core, ~45 µs.
//!
//! A new connection goes to the worker with the fewest open connections and stays there. Guests yield at
//! every epoch tick, so a busy guest holds up the other requests on its worker for one tick at a time.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The HTTP worker threads of one [`crate::Runtime`], shared by all its services.
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    open_connections: Arc<AtomicUsize>,
    /// Dropping it ends the thread, which drops its runtime and whatever still runs there.
    _stop: oneshot::Sender<()>,
}

/// A connection's place on a worker; counts as open until dropped.
pub(crate) struct Assignment {
    open_connections: Arc<AtomicUsize>,
}

impl Drop for Assignment {
    fn drop(&mut self) {
        self.open_connections.fetch_sub(1, Relaxed);
    }
}

impl Workers {
    /// Starts `count` (at least one) worker threads.
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let workers = (0..count.max(1))
            .map(Worker::start)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Workers { workers })
    }

    /// The worker with the fewest open connections, and the connection's place on it.
    pub(crate) fn assign(&self) -> (&Handle, Assignment) {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.open_connections.load(Relaxed))
            .expect("Workers::start makes at least one");
        worker.open_connections.fetch_add(1, Relaxed);
        let assignment = Assignment {
            open_connections: worker.open_connections.clone(),
        };
        (&worker.handle, assignment)
    }
}

impl Worker {
    fn start(index: usize) -> io::Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::sync_channel(1);
        // The runtime is built and dropped on its own thread: dropping one inside async code panics.
        std::thread::Builder::new()
            .name(format!("wasmhttp-http-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = started.send(Ok(runtime.handle().clone()));
                        let _ = runtime.block_on(stopped);
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            })?;
        let handle = handle
            .recv()
            .map_err(|_| io::Error::other("an HTTP worker thread ended while starting"))??;
        Ok(Worker {
            handle,
            open_connections: Arc::default(),
            _stop: stop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_busy_worker_and_leave_when_dropped() {
        let workers = Workers::start(2).unwrap();
        let (first, a) = workers.assign();
        let first = first.id();
        let (second, b) = workers.assign();
        assert_ne!(
            first,
            second.id(),
            "the second connection goes to the idle worker"
        );
        drop(a);
        let (third, _c) = workers.assign();
        assert_eq!(first, third.id(), "the first worker is idle again");
        drop(b);
    }

    #[test]
    fn dropping_the_workers_ends_their_threads() {
        let workers = Workers::start(1).unwrap();
        let (handle, _assignment) = workers.assign();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // The task holds `tx` until its runtime drops it.
        handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the worker's runtime was dropped with its tasks"
        );
    }
}
