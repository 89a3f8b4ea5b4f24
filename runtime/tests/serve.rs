//! HTTP serving over real loopback sockets: every failure is a proper response and the server keeps going.

mod common;

use common::*;
use std::time::{Duration, Instant};
use wasmhttp_runtime::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_answers_200_and_counts_it() {
    let served = serve(
        &runtime(),
        "hello",
        Limits::default(),
        Capabilities::default(),
    );
    let reply = get_async(served.addr, "/").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "Hello from wasmhttp!\n");
    let stats = served.handle.stats();
    assert_eq!(stats.requests_served, 1);
    assert!(stats.fuel_consumed > 0, "{stats:?}");
    assert!(stats.cpu_time > Duration::ZERO, "{stats:?}");
    assert!(stats.memory_peak > 0, "{stats:?}");
    assert_eq!(
        (stats.memory_current, stats.in_flight),
        (0, 0),
        "instances are gone after the request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    use std::io::{Read, Write};
    let served = serve(
        &runtime(),
        "hello",
        Limits::default(),
        Capabilities::default(),
    );
    let addr = served.addr;
    let text = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_a_500_and_the_next_request_is_served() {
    let served = serve(
        &runtime(),
        "trap",
        Limits::default(),
        Capabilities::default(),
    );
    let reply = get_async(served.addr, "/boom").await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.body, "guest trapped\n");
    let reply = get_async(served.addr, "/ok").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let stats = served.handle.stats();
    assert_eq!(
        (stats.failed_trap, stats.requests_served),
        (1, 1),
        "{stats:?}"
    );
    assert!(
        served
            .stderr
            .holding("deliberate panic")
            .contains("deliberate panic"),
        "the guest's panic message reaches its stderr"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_504_promptly() {
    let limits = Limits {
        request_timeout: Some(Duration::from_millis(100)),
        ..Limits::default()
    };
    let served = serve(&runtime(), "cpu-burn", limits, Capabilities::default());
    let started = Instant::now();
    let reply = get_async(served.addr, "/?forever").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.body, "deadline exceeded\n");
    assert!(took < Duration::from_millis(600), "504 took {took:?}");
    assert_eq!(
        get_async(served.addr, "/?ms=1").await.status,
        200,
        "the service keeps serving"
    );
    assert_eq!(served.handle.stats().failed_timeout, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_fuel_is_a_500_cpu_budget() {
    let limits = Limits {
        fuel_per_request: Some(5_000_000),
        ..Limits::default()
    };
    let served = serve(&runtime(), "cpu-burn", limits, Capabilities::default());
    let reply = get_async(served.addr, "/?forever").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "fuel exhausted\n"),
        "{reply:?}"
    );
    assert_eq!(get_async(served.addr, "/?ms=0").await.status, 200);
    assert_eq!(served.handle.stats().failed_fuel, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_over_max_concurrency_gets_503_with_retry_after() {
    let limits = Limits {
        max_concurrency: Some(2),
        ..Limits::default()
    };
    let served = serve(&runtime(), "cpu-burn", limits, Capabilities::default());
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get_async(served.addr, "/?ms=700")))
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let refused = get_async(served.addr, "/?ms=1").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        refused.head
    );
    for reply in slow {
        assert_eq!(reply.await.unwrap().status, 200);
    }
    assert_eq!(served.handle.stats().failed_overload, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_holds_requests_until_a_slot_frees() {
    let limits = Limits {
        max_concurrency: Some(1),
        queue_depth: Some(1),
        ..Limits::default()
    };
    let served = serve(&runtime(), "cpu-burn", limits, Capabilities::default());
    let first = tokio::spawn(get_async(served.addr, "/?ms=400"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let queued = tokio::spawn(get_async(served.addr, "/?ms=1"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get_async(served.addr, "/?ms=1").await.status,
        503,
        "queue of 1 is full"
    );
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200, "the queued request ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sees_the_request_and_oversized_bodies_get_413() {
    let limits = Limits {
        max_request_body: Some(64),
        ..Limits::default()
    };
    let served = serve(&runtime(), "echo", limits, Capabilities::default());
    let addr = served.addr;
    let reply = tokio::task::spawn_blocking(move || {
        request(addr, "POST", "/path?q=1", "X-Test: yes\r\n", b"ping")
    })
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains("method: POST\npath: /path?q=1\n"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("header: x-test: yes"), "{}", reply.body);
    assert!(reply.body.ends_with("body: ping"), "{}", reply.body);
    let big = vec![b'x'; 1000];
    let reply = tokio::task::spawn_blocking(move || request(addr, "POST", "/", "", &big))
        .await
        .unwrap();
    assert_eq!(reply.status, 413, "{reply:?}");
    // A chunked upload declares no length: the body the guest reads is cut at the cap, and the client still
    // gets 413, not the guest's error.
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let chunk = "x".repeat(100);
        let request = format!(
            "POST / HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let huge_header = format!("X-Big: {}\r\n", "h".repeat(100 << 10));
    let reply = tokio::task::spawn_blocking(move || request(addr, "GET", "/", &huge_header, b""))
        .await
        .unwrap();
    assert_eq!(reply.status, 431, "an oversized head is refused: {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stdout_and_stderr_reach_the_callers_writers() {
    let served = serve(
        &runtime(),
        "logger",
        Limits::default(),
        Capabilities::default(),
    );
    for path in ["/one", "/two"] {
        assert_eq!(get_async(served.addr, path).await.status, 200);
    }
    assert_eq!(
        served.stdout.holding("GET /two"),
        "logger stdout: GET /one\nlogger stdout: GET /two\n"
    );
    assert_eq!(
        served.stderr.holding("GET /two"),
        "logger stderr: GET /one\nlogger stderr: GET /two\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_then_stops_accepting() {
    let served = serve(
        &runtime(),
        "cpu-burn",
        Limits::default(),
        Capabilities::default(),
    );
    let in_flight = tokio::spawn(get_async(served.addr, "/?ms=400"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    served.handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        in_flight.await.unwrap().status,
        200,
        "the in-flight request finished"
    );
    assert!(
        std::net::TcpStream::connect(served.addr).is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cancels_what_outlives_the_deadline() {
    let served = serve(
        &runtime(),
        "cpu-burn",
        Limits::default(),
        Capabilities::default(),
    );
    let runaway = tokio::spawn(get_async(served.addr, "/?forever"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    served.handle.shutdown(Duration::from_millis(200)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drain took {:?}",
        started.elapsed()
    );
    let reply = runaway.await.unwrap();
    assert_eq!(
        reply.status, 503,
        "the cancelled request still gets an answer: {reply:?}"
    );
    assert_eq!(served.handle.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_limits_apply_to_the_next_request() {
    let served = serve(
        &runtime(),
        "cpu-burn",
        Limits::default(),
        Capabilities::default(),
    );
    assert_eq!(get_async(served.addr, "/?ms=300").await.status, 200);
    served.handle.update_limits(Limits {
        request_timeout: Some(Duration::from_millis(50)),
        ..Limits::default()
    });
    assert_eq!(get_async(served.addr, "/?ms=300").await.status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_rate_throttles_instead_of_failing() {
    let limits = Limits {
        cpus: Some(0.25),
        ..Limits::default()
    };
    let served = serve(&runtime(), "cpu-burn", limits, Capabilities::default());
    let started = Instant::now();
    // cpu-burn spins for 800 ms of wall time; at a quarter of a core it may only compute for about 200 ms.
    let reply = get_async(served.addr, "/?ms=800").await;
    let wall = started.elapsed();
    assert_eq!(reply.status, 200, "throttled, not failed: {reply:?}");
    let stats = served.handle.stats();
    assert!(stats.throttled_periods > 0, "{stats:?}");
    let allowed = wall.mul_f64(0.25) + Duration::from_millis(25 + 60);
    assert!(
        stats.cpu_time <= allowed,
        "used {:?} of CPU in {wall:?} at 0.25 CPU",
        stats.cpu_time
    );
    assert!(
        stats.cpu_time >= Duration::from_millis(120),
        "the guest did run: {:?}",
        stats.cpu_time
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiling_is_charged_to_the_service_and_held_to_its_quota() {
    let runtime = runtime();
    let app = runtime.load(&example("echo")).unwrap();
    assert!(!app.from_cache(), "the test runtime has no cache");
    assert!(
        app.load_cpu() > Duration::from_millis(20),
        "{:?}",
        app.load_cpu()
    );
    let limits = Limits {
        cpus: Some(0.25),
        ..Limits::default()
    };
    let started = Instant::now();
    let served = serve(&runtime, "echo", limits, Capabilities::default());
    let compiled = served.handle.stats().cpu_time;
    assert!(
        compiled >= Duration::from_millis(20),
        "the compile is on the service's account: {compiled:?}"
    );
    let reply = get_async(served.addr, "/").await;
    assert_eq!(reply.status, 200);
    // The first request waits until the compile is paid for at a quarter of a core (less one burst).
    let owed = compiled
        .saturating_sub(Duration::from_millis(25))
        .mul_f64(4.0);
    assert!(
        started.elapsed() >= owed.mul_f64(0.9),
        "answered after {:?}, owing {owed:?}",
        started.elapsed()
    );
}

/// Every pooled slot busy: the next request is refused with 503 (wasmtime's typed pool error), not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_answers_503() {
    let runtime = Runtime::new(EngineConfig {
        max_instances: 1,
        ..EngineConfig::default()
    })
    .unwrap();
    let served = serve(
        &runtime,
        "cpu-burn",
        Limits::default(),
        Capabilities::default(),
    );
    let busy = tokio::spawn(get_async(served.addr, "/?ms=1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = get_async(served.addr, "/?ms=1").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body, "over capacity\n");
    assert_eq!(busy.await.unwrap().status, 200);
    assert_eq!(served.handle.stats().failed_overload, 1);
}
