//! Serving on a WASI 0.3 instance: several requests at once, each a task of the store's event loop.
//!
//! The engine cannot interrupt one task of a store alone. A request whose deadline passes while its task
//! waits (on I/O, a timer) gets 504 and the instance takes no more requests, serving the others it has; a
//! request whose deadline passes while guest code runs — which holds up every task of the store until it
//! yields — ends the instance, so every request still on it gets 504 too. A trap, fuel running out or a
//! refused memory growth ends the instance likewise, each request on it getting the failure's status.

use super::deadlines::{Deadlines, Expiration};
use super::ready_body::with_body_read_ahead;
use super::{Answer, Instance, Job, error_code_name, reply};
use crate::admission::Permit;
use crate::instance::{Guarded, InstanceState, grant_fuel};
use futures::stream::{FuturesUnordered, StreamExt};
use http::Response;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wasmtime::component::Accessor;
use wasmtime::{AsContextMut, Store};
use wasmtime_wasi_http::handler::{ExpirationError, Prepared, Proxy};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

/// How a request left its instance.
enum Left {
    Answered,
    /// Past its deadline; its task may still be running.
    Expired,
}

/// Serves until the instance retires; an error ends the instance (and every request on it).
pub(super) async fn serve(
    instance: &mut Instance,
    store: &mut Store<InstanceState>,
    proxy: &Proxy,
) -> wasmtime::Result<()> {
    store
        .run_concurrent(async |accessor| event_loop(instance, accessor, proxy).await)
        .await?
}

async fn event_loop(
    instance: &mut Instance,
    accessor: &Accessor<InstanceState>,
    proxy: &Proxy,
) -> wasmtime::Result<()> {
    let mut running = FuturesUnordered::new();
    let mut deadlines = Deadlines::default();
    let mut idle_since = Some(Instant::now());
    loop {
        let limits = instance.shared.limits();
        if running.is_empty() && instance.retiring(idle_since, &limits) {
            // Jobs sent before it retired are still its to serve.
            match instance.jobs.try_recv() {
                Ok(job) => {
                    idle_since = None;
                    running.push(one(accessor, proxy, job, true, &mut deadlines));
                    continue;
                }
                Err(_) => break,
            }
        }
        let idle_timeout = limits.effective_idle_instance_timeout();
        let idle_timer = async {
            match idle_since {
                Some(since) => tokio::time::sleep_until((since + idle_timeout).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(left) = running.next(), if !running.is_empty() => {
                instance.request_done();
                if let Left::Expired = left? {
                    instance.retire();
                }
                if running.is_empty() {
                    idle_since = Some(Instant::now());
                }
            }
            Some(job) = instance.jobs.recv() => {
                let alone = running.is_empty();
                idle_since = None;
                running.push(one(accessor, proxy, job, alone, &mut deadlines));
            }
            () = deadlines.fired() => {}
            () = idle_timer => {}
        }
    }
    // Response bodies may still be streaming from guest tasks: let them finish, for a bounded time.
    let bound = instance
        .shared
        .limits()
        .request_timeout
        .unwrap_or(Duration::from_secs(30));
    let _ = tokio::time::timeout(
        bound,
        std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)),
    )
    .await;
    Ok(())
}

/// Starts one request on the instance: sets it up at once (its deadline among the instance's), and returns
/// what runs it. An error is the instance's failure, not only this request's.
fn one<'a>(
    accessor: &'a Accessor<InstanceState>,
    proxy: &'a Proxy,
    job: Job,
    alone: bool,
    deadlines: &mut Deadlines,
) -> impl Future<Output = wasmtime::Result<Left>> + 'a {
    let Job {
        request,
        answer,
        permit,
        limits,
        traceparent,
    } = job;
    let (sender, receiver) = futures::channel::oneshot::channel();
    let started = accessor.with(|mut store| -> wasmtime::Result<_> {
        grant_fuel(store.as_context_mut(), &limits, alone)?;
        // Outgoing requests of an instance serving several at once cannot be told apart: they carry a
        // request's trace context only while that request has the instance to itself.
        store.get().set_traceparent(traceparent.filter(|_| alone));
        let deadline = store.get().guard().start_request(&limits);
        let prepared = Prepared::new(
            store.as_context_mut(),
            proxy,
            request,
            |state: &mut InstanceState| state.http(),
            sender,
        )?;
        Ok((prepared, deadline))
    });
    let expiration = deadlines.start(started.as_ref().ok().and_then(|(_, at)| *at));
    async move {
        let (prepared, deadline) = started?;
        run(
            accessor, prepared, deadline, expiration, answer, permit, receiver,
        )
        .await
    }
}

/// Runs a request set up by [`one`] and hands its answer over.
async fn run(
    accessor: &Accessor<InstanceState>,
    prepared: Prepared<'_, InstanceState>,
    deadline: Option<Instant>,
    expiration: Expiration,
    answer: oneshot::Sender<Answer>,
    permit: Permit,
    receiver: futures::channel::oneshot::Receiver<wasmtime::Result<Response<WasiBody>>>,
) -> wasmtime::Result<Left> {
    let ran = prepared.run(accessor, expiration).await;
    accessor.with(|mut store| store.get().guard().end_request(deadline));
    drop(permit);
    ran?;
    match receiver.await {
        Ok(Ok(response)) => {
            let response = with_body_read_ahead(response).await;
            reply(answer, Answer::Response(response));
        }
        Ok(Err(e)) if e.is::<ExpirationError>() => {
            reply(answer, Answer::Expired);
            return Ok(Left::Expired);
        }
        Ok(Err(e)) => match e.downcast_ref::<ErrorCode>() {
            Some(code) => reply(answer, Answer::GuestError(error_code_name(code))),
            None => return Err(e),
        },
        Err(_) => reply(answer, Answer::Unanswered),
    }
    Ok(Left::Answered)
}
