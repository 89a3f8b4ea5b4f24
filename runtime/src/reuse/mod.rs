//! Reused instances: one instance serves many requests, one after another (WASI 0.2, opted in with
//! `max-instance-reuse`) or several at once (WASI 0.3), until it has taken `max-instance-reuse` requests,
//! sat idle for `idle-instance-timeout`, been left behind by a live Update, or failed.
//!
//! An instance lives on the worker thread that started it and takes requests only from connections on that
//! thread, so a request never crosses threads. The p2/p3 call itself is wasmtime's
//! (`wasmtime_wasi_http::handler::{ProxyPre, Prepared}`); the scheduling is ours: its `ProxyHandler` starts
//! instances with `tokio::spawn` on any thread and queues requests without bound, where ours are admitted
//! first ([`crate::admission`]) and stay on their worker.

mod concurrent;
mod deadlines;
mod ready_body;
mod serial;

use crate::admission::Permit;
use crate::deadline::with_timeout;
use crate::handler::Shared;
use crate::instance::finish;
use crate::knobs::Limits;
use crate::stats::FailureCause;
use http::{Request, Response};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use wasmtime_wasi_http::WasiBody;

/// What a request gets back from the instance that took it. If the sender is dropped instead, the instance
/// ended, and [`Slot::ended`] says why.
pub(crate) enum Answer {
    /// The guest's response.
    Response(Response<WasiBody>),
    /// The guest answered with a `wasi:http` error code (its name) instead of a response.
    GuestError(String),
    /// The guest returned without setting a response.
    Unanswered,
    /// The request ran past its deadline while its task waited; the instance serves its other requests.
    Expired,
}

/// One request handed to an instance.
pub(crate) struct Job {
    pub(crate) request: Request<WasiBody>,
    pub(crate) answer: oneshot::Sender<Answer>,
    /// Held until the request is answered: `max-concurrency` counts requests, not instances, here.
    pub(crate) permit: Permit,
    pub(crate) limits: Arc<Limits>,
    /// The request span's `traceparent`, for the guest's outgoing requests.
    pub(crate) traceparent: Option<http::HeaderValue>,
}

/// The reusable instances of one service.
#[derive(Default)]
pub(crate) struct Pool {
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Bumped by every live Update: instances started under older limits take no new requests.
    generation: AtomicU64,
}

/// One reusable instance, as the dispatcher sees it.
pub(crate) struct Slot {
    thread: ThreadId,
    generation: u64,
    jobs: mpsc::UnboundedSender<Job>,
    /// Requests taken and not yet answered.
    busy: AtomicUsize,
    /// Requests taken in all.
    taken: AtomicU64,
    /// Takes no more requests.
    retired: AtomicBool,
    /// Why the instance ended, once it has (`None` while it runs or when it ended cleanly).
    ended: watch::Sender<Option<FailureCause>>,
}

impl Pool {
    /// Applies to instances started from now on.
    pub(crate) fn new_generation(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    /// Hands `job` to an instance of this thread with room for it, starting one if none has. Returns where
    /// to learn why the instance ended, should the job's answer never come, and whether that instance had
    /// taken requests before.
    pub(crate) fn dispatch(
        &self,
        shared: &Arc<Shared>,
        mut job: Job,
    ) -> (watch::Receiver<Option<FailureCause>>, bool) {
        let wasi = shared.wasi;
        let at_once = job.limits.effective_instance_concurrency(wasi);
        let most = job.limits.effective_instance_reuse(wasi);
        let generation = self.generation.load(Relaxed);
        let here = std::thread::current().id();
        loop {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let found = slots
                .iter()
                .find(|s| {
                    s.thread == here
                        && s.generation == generation
                        && !s.retired.load(Relaxed)
                        && s.busy.load(Relaxed) < at_once
                        && s.taken.load(Relaxed) < most
                })
                .cloned();
            let slot = match found {
                Some(slot) => slot,
                None => {
                    let slot = start_instance(shared, generation, job.limits.clone());
                    slots.push(slot.clone());
                    slot
                }
            };
            slot.busy.fetch_add(1, Relaxed);
            let taken = slot.taken.fetch_add(1, Relaxed) + 1;
            let ended = slot.ended.subscribe();
            match slot.jobs.send(job) {
                Ok(()) => {
                    if taken >= most {
                        retire(&mut slots, &slot);
                    }
                    return (ended, taken > 1);
                }
                // The instance ended between the lookup and the send: try another.
                Err(mpsc::error::SendError(returned)) => {
                    retire(&mut slots, &slot);
                    job = returned;
                }
            }
        }
    }

    /// Takes `slot` out of the pool: it gets no more requests.
    fn retire(&self, slot: &Slot) {
        retire(
            &mut self.slots.lock().unwrap_or_else(|e| e.into_inner()),
            slot,
        );
    }
}

fn retire(slots: &mut Vec<Arc<Slot>>, slot: &Slot) {
    slot.retired.store(true, Relaxed);
    slots.retain(|s| !std::ptr::eq(&**s, slot));
}

/// Starts an instance task on this thread; it instantiates, then serves what it is sent.
fn start_instance(shared: &Arc<Shared>, generation: u64, limits: Arc<Limits>) -> Arc<Slot> {
    let (jobs, receiver) = mpsc::unbounded_channel();
    let slot = Arc::new(Slot {
        thread: std::thread::current().id(),
        generation,
        jobs,
        busy: AtomicUsize::new(0),
        taken: AtomicU64::new(0),
        retired: AtomicBool::new(false),
        ended: watch::Sender::new(None),
    });
    let task = Instance {
        shared: shared.clone(),
        slot: slot.clone(),
        jobs: receiver,
    };
    shared.tasks.spawn(shared.guest_task(task.run(limits)));
    slot
}

/// The task that owns one reusable instance.
struct Instance {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    jobs: mpsc::UnboundedReceiver<Job>,
}

impl Instance {
    async fn run(mut self, limits: Arc<Limits>) {
        let shared = self.shared.clone();
        let cause = tokio::select! {
            cause = self.serve(&limits) => cause,
            () = shared.cancel.cancelled() => Some(FailureCause::Cancelled),
        };
        self.shared.pool.retire(&self.slot);
        let served = self.slot.taken.load(Relaxed);
        if served > 0 {
            self.shared.meter.stats().instance_served(served);
        }
        if let Some(cause) = cause {
            self.slot.ended.send_replace(Some(cause));
        }
        // Sent before the retirement above: they go to another instance, unless the service is stopping.
        while let Ok(job) = self.jobs.try_recv() {
            if cause == Some(FailureCause::Cancelled) {
                drop(job);
            } else {
                self.shared.pool.dispatch(&self.shared, job);
            }
        }
    }

    /// Instantiates and serves until retired; returns why the instance failed, if it did.
    async fn serve(&mut self, limits: &Limits) -> Option<FailureCause> {
        let shared = self.shared.clone();
        let mut store = match shared.new_store(limits) {
            Ok(store) => store,
            Err(e) => {
                tracing::warn!(service = %shared.name, "cannot set up an instance: {e:#}");
                return Some(FailureCause::Trap);
            }
        };
        let started = Instant::now();
        let proxy = with_timeout(
            limits.request_timeout,
            shared.pre.instantiate_async(&mut store),
        )
        .await;
        let result = match proxy {
            Ok(proxy) => {
                shared.meter.stats().instantiated(started.elapsed());
                if shared.engine.get_concurrency_support() {
                    concurrent::serve(self, &mut store, &proxy).await
                } else {
                    serial::serve(self, &mut store, &proxy).await
                }
            }
            Err(e) => Err(e),
        };
        let outcome = finish(&mut store, &result);
        if let Some((cause, detail)) = &outcome {
            tracing::debug!(service = %shared.name, cause = cause.reason(), "instance failed: {detail}");
        }
        outcome.map(|(cause, _)| cause)
    }

    /// Whether this instance takes no more requests; retires it first if it is idle past its timeout or
    /// was started under limits a live Update has since replaced.
    fn retiring(&self, idle_since: Option<Instant>, limits: &Limits) -> bool {
        let stale = self.slot.generation != self.shared.pool.generation.load(Relaxed);
        let idle =
            idle_since.is_some_and(|t| t.elapsed() >= limits.effective_idle_instance_timeout());
        if stale || idle {
            self.shared.pool.retire(&self.slot);
        }
        self.slot.retired.load(Relaxed)
    }

    /// A request left this instance (answered, expired or failed).
    fn request_done(&self) {
        self.slot.busy.fetch_sub(1, Relaxed);
    }

    /// Stops taking requests (after an expired one, whose task may still be running).
    fn retire(&self) {
        self.shared.pool.retire(&self.slot);
    }
}

/// Hands an answer to the request's client (who may have gone: nothing to do then).
fn reply(to: oneshot::Sender<Answer>, answer: Answer) {
    let _ = to.send(answer);
}

/// The name of a `wasi:http` error code, without its details (host error chains are for the log).
pub(crate) fn error_code_name(code: &impl std::fmt::Debug) -> String {
    let name = format!("{code:?}");
    name.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}
