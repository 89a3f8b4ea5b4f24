//! Serving on a reused WASI 0.2 instance: one request at a time, on the engine without the async ABI.
//!
//! A request that fails (trap, fuel, memory, deadline) ends the instance; there is no neighbour to take
//! down with it, and the next request gets a fresh instance.

use super::{Answer, Instance, Job, error_code_name, reply};
use crate::deadline::with_timeout;
use crate::instance::{Guarded, InstanceState, grant_fuel};
use std::pin::pin;
use std::time::Instant;
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::Proxy;
use wasmtime_wasi_http::p2::bindings::Proxy as P2Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Serves until the instance retires; an error ends the instance.
pub(super) async fn serve(
    instance: &mut Instance,
    store: &mut Store<InstanceState>,
    proxy: &Proxy,
) -> wasmtime::Result<()> {
    let Proxy::P2(proxy) = proxy else {
        // A WASI 0.3 component only compiles on the concurrent engine, which `concurrent` serves.
        return Err(wasmtime::format_err!(
            "a WASI 0.3 instance cannot be served serially"
        ));
    };
    let mut idle_since = Instant::now();
    loop {
        let limits = instance.shared.limits();
        let job = if instance.retiring(Some(idle_since), &limits) {
            match instance.jobs.try_recv() {
                Ok(job) => job,
                Err(_) => return Ok(()),
            }
        } else {
            let idle_until = idle_since + limits.effective_idle_instance_timeout();
            tokio::select! {
                Some(job) = instance.jobs.recv() => job,
                () = tokio::time::sleep_until(idle_until.into()) => continue,
            }
        };
        let result = one(store, proxy, job).await;
        instance.request_done();
        result?;
        idle_since = Instant::now();
    }
}

async fn one(store: &mut Store<InstanceState>, proxy: &P2Proxy, job: Job) -> wasmtime::Result<()> {
    let Job {
        request,
        answer,
        permit,
        limits,
        traceparent,
    } = job;
    store.data_mut().set_traceparent(traceparent);
    grant_fuel(&mut *store, &limits, true)?;
    let deadline = store.data_mut().guard().start_request(&limits);
    let (sender, mut receiver) = oneshot::channel();
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)?;
    let response_out = store.data_mut().http().new_response_outparam(sender)?;
    let mut answer = Some(answer);
    let result = {
        let mut call = pin!(with_timeout(
            limits.request_timeout,
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, request, response_out),
        ));
        // The response goes out as soon as the guest sets it: its body streams while the call runs.
        loop {
            tokio::select! {
                result = &mut call => break result,
                set = &mut receiver, if answer.is_some() => {
                    if let (Ok(set), Some(to)) = (set, answer.take()) {
                        reply(to, p2_answer(set));
                    }
                }
            }
        }
    };
    store.data_mut().guard().end_request(deadline);
    drop(permit);
    if let Some(to) = answer {
        match receiver.try_recv() {
            Ok(set) => reply(to, p2_answer(set)),
            Err(_) if result.is_ok() => reply(to, Answer::Unanswered),
            // Dropped: the instance failed, and its cause answers the request.
            Err(_) => drop(to),
        }
    }
    result
}

fn p2_answer(
    set: Result<
        http::Response<wasmtime_wasi_http::WasiBody>,
        wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
    >,
) -> Answer {
    match set {
        Ok(response) => Answer::Response(response),
        Err(code) => Answer::GuestError(error_code_name(&code)),
    }
}
