//! Guests written in Python (componentize-py, WASI 0.2 and 0.3) and JavaScript (componentize-js, WASI 0.2),
//! built by `examples/build.sh`: their routes, their logs and the limits, served over real loopback sockets.
//! Each test loads its guest once (the compile takes seconds) and walks through everything on one service.

mod common;

use common::*;
use std::time::Duration;
use wasmhttp_runtime::*;

/// The limits every guest here runs under: room for the interpreter, not for `/alloc/96`.
fn limits() -> Limits {
    Limits {
        memory: Some(64 << 20),
        request_timeout: Some(Duration::from_secs(2)),
        ..Limits::default()
    }
}

/// How a guest's interpreter meets a refused memory growth.
#[derive(PartialEq)]
enum OnRefusedMemory {
    /// It traps (CPython's MemoryError escapes the handler): the host answers and names the limit.
    Traps,
    /// It answers 500 itself (StarlingMonkey): only the refusal counter and the log tell.
    AnswersItself,
}

/// Routes, log, memory limit (and recovery), request timeout: the same script for every language.
async fn walk_through(name: &str, hello: &str, log_line: &str, memory: OnRefusedMemory) -> Served {
    let served = serve(&runtime(), name, limits(), Capabilities::default());
    let reply = get_async(served.addr, "/").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, hello), "{name}");
    assert_eq!(get_async(served.addr, "/nope").await.status, 404, "{name}");
    let reply = get_async(served.addr, "/alloc/16").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "allocated 16 MiB\n"),
        "{name}"
    );

    assert_eq!(get_async(served.addr, "/log").await.status, 200, "{name}");
    let logged = served.stdout.holding(log_line);
    assert!(logged.contains(log_line), "{name} stdout: {logged:?}");

    let grower = get_async(served.addr, "/alloc/96").await;
    assert_eq!(grower.status, 500, "{name}: {grower:?}");
    assert_eq!(
        grower.body.contains("memory limit"),
        memory == OnRefusedMemory::Traps,
        "{name}: {grower:?}"
    );
    let reply = get_async(served.addr, "/").await;
    assert_eq!(reply.status, 200, "{name} keeps serving: {reply:?}");

    let burner = get_async(served.addr, "/burn/10000").await;
    assert_eq!(burner.status, 504, "{name}: {burner:?}");
    assert_eq!(get_async(served.addr, "/").await.status, 200, "{name}");

    let stats = served.handle.stats();
    let failed_memory = u64::from(memory == OnRefusedMemory::Traps);
    assert_eq!(
        (stats.failed_memory, stats.failed_timeout),
        (failed_memory, 1),
        "{name}: {stats:?}"
    );
    assert!(stats.memory_refusals >= 1, "{name}: {stats:?}");
    assert!(stats.memory_peak <= 64 << 20, "{name}: {stats:?}");
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_wasi_02_service_answers_logs_and_holds_its_limits() {
    let served = walk_through(
        "python-http",
        "hello from python\n",
        "python guest: a log line",
        OnRefusedMemory::Traps,
    )
    .await;
    let stats = served.handle.stats();
    assert_eq!(
        stats.instantiations,
        stats.requests_total(),
        "a 0.2 guest gets a fresh instance per request by default: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_wasi_03_service_answers_logs_holds_its_limits_and_reuses_instances() {
    let served = walk_through(
        "python-http-p3",
        "hello from python\n",
        "python guest: a log line",
        OnRefusedMemory::Traps,
    )
    .await;
    let stats = served.handle.stats();
    assert!(
        stats.instantiations < stats.requests_total(),
        "0.3 instances are reused: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_wasi_02_service_answers_logs_and_holds_its_limits() {
    walk_through(
        "js-http",
        "hello from javascript\n",
        "javascript guest: a log line",
        OnRefusedMemory::AnswersItself,
    )
    .await;
}
