//! The threads that run HTTP connections and their instances: one single-threaded tokio runtime each.
//!
//! A connection, the instances serving its requests and their response bodies all live on one thread, so
//! no request wakes another thread or has its tasks stolen across cores. On the 2-core machine this was
//! measured on (`wrk -t2 -c50` sharing the cores), serving hello on a multi-threaded runtime cost ~80 µs of
//! CPU per request; on one single-threaded runtime per core, ~45 µs.
//!
//! A new connection goes to an idle worker, else to a new one while there are fewer than the most allowed
//! (one per CPU by default), else to the one with the fewest open connections, and stays there. Guests yield
//! at every epoch tick, so a busy guest holds up the other requests on its worker for one tick at a time.

use std::io;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The HTTP worker threads of one [`crate::Runtime`], shared by all its services.
pub(crate) struct Workers {
    most: usize,
    workers: Mutex<Vec<Worker>>,
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
    /// Starts one worker thread; more start when connections need them, up to `most` (at least one).
    /// A quiet service (most of a node's pods) so keeps one thread, whatever the number of CPUs.
    pub(crate) fn start(most: usize) -> io::Result<Self> {
        Ok(Workers {
            most: most.max(1),
            workers: Mutex::new(vec![Worker::start(0)?]),
        })
    }

    /// The worker for a new connection: an idle one; else a new one, while there are fewer than the most;
    /// else the one with the fewest open connections. Returns it with the connection's place on it.
    pub(crate) fn assign(&self) -> (Handle, Assignment) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut chosen = least_busy(&workers);
        if workers[chosen].open() > 0 && workers.len() < self.most {
            match Worker::start(workers.len()) {
                Ok(worker) => {
                    workers.push(worker);
                    chosen = workers.len() - 1;
                }
                Err(e) => tracing::warn!("cannot start another HTTP worker thread: {e}"),
            }
        }
        let worker = &workers[chosen];
        worker.open_connections.fetch_add(1, Relaxed);
        let assignment = Assignment {
            open_connections: worker.open_connections.clone(),
        };
        (worker.handle.clone(), assignment)
    }
}

fn least_busy(workers: &[Worker]) -> usize {
    (0..workers.len())
        .min_by_key(|&i| workers[i].open())
        .expect("Workers::start makes one")
}

impl Worker {
    fn open(&self) -> usize {
        self.open_connections.load(Relaxed)
    }

    fn start(index: usize) -> io::Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::sync_channel(1);
        // The runtime is built and dropped on its own thread: dropping one inside async code panics.
        std::thread::Builder::new()
            .name(format!("wasmhttp-http-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_start(crate::identity::reset_thread_file_rights)
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
    fn a_worker_starts_only_when_the_others_are_busy_and_never_past_the_most() {
        let workers = Workers::start(2).unwrap();
        let (first, a) = workers.assign();
        let (again, a2) = workers.assign();
        assert_ne!(
            first.id(),
            again.id(),
            "the only worker was busy: a second one started"
        );
        drop(a2);
        let (second, b) = workers.assign();
        assert_eq!(
            second.id(),
            again.id(),
            "an idle worker is used before any new one"
        );
        let (third, _c) = workers.assign();
        assert!(
            [first.id(), second.id()].contains(&third.id()),
            "no third worker past the most of two"
        );
        assert_eq!(workers.workers.lock().unwrap().len(), 2);
        drop((a, b));
    }

    #[test]
    fn a_quiet_service_keeps_one_worker() {
        let workers = Workers::start(8).unwrap();
        for _ in 0..5 {
            let (_worker, connection) = workers.assign();
            drop(connection);
        }
        assert_eq!(workers.workers.lock().unwrap().len(), 1);
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
