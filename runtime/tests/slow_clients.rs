//! Slow clients hold nothing for long. Bodies past their first 64 KiB stream to the guest while the request
//! holds its slot: a client that stops sending is cut off at `min-request-body-rate` (after its grace), one
//! that keeps the rate is not. A head never finished, or a response never read, ends the connection; clients
//! past `max-connections` wait in the kernel's backlog.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wasmhttp_runtime::*;

/// The grace `min-request-body-rate` allows before the rate counts (`body_pace::GRACE`).
const GRACE: Duration = Duration::from_secs(5);

fn echo_with(guest: &str, rate: &str) -> Served {
    let mut limits = Limits {
        max_concurrency: Some(1),
        request_timeout: Some(Duration::from_secs(25)),
        ..Limits::default()
    };
    limits.set("min-request-body-rate", rate).unwrap();
    serve(&runtime(), guest, limits, Capabilities::default())
}

/// Opens a POST of `length` bytes and sends the first `first` of them.
fn start_upload(addr: SocketAddr, length: usize, first: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&vec![b'x'; first]).unwrap();
    stream
}

fn status_line(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_after_its_start_is_cut_off_with_408_and_frees_its_slot() {
    stalled_upload_is_cut_off("echo").await;
}

/// The same through a reused WASI 0.3 instance, whose body reaches the guest as a stream of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_is_cut_off_on_a_wasi_0_3_instance_too() {
    stalled_upload_is_cut_off("echo-p3").await;
}

async fn stalled_upload_is_cut_off(guest: &str) {
    let served = echo_with(guest, "64Ki");
    let addr = served.addr;
    let (status, cut_after, busy, next) = tokio::task::spawn_blocking(move || {
        // 128 KiB of 1 MiB, then nothing: past the pre-read, so the request runs and holds the only slot.
        let mut stalled = start_upload(addr, 1 << 20, 128 << 10);
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let busy = get(addr, "/").status;
        let status = status_line(&mut stalled);
        let cut_after = sent.elapsed();
        (status, cut_after, busy, get(addr, "/").status)
    })
    .await
    .unwrap();
    assert_eq!(busy, 503, "{guest}: the stalled upload held the only slot");
    assert!(status.starts_with("HTTP/1.1 408"), "{guest}: {status}");
    // Cut once the grace and what the bytes after admission earned are spent, long before the 25 s timeout.
    assert!(
        cut_after >= GRACE - Duration::from_millis(200) && cut_after < GRACE * 2,
        "cut off after {cut_after:?}"
    );
    assert_eq!(next, 200, "the freed slot serves the next request");
    let stats = served.handle.stats();
    assert_eq!(
        stats.rejected[Rejection::BodyTimeout as usize],
        1,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_keeps_the_minimum_rate_is_served_however_long_it_takes() {
    let served = echo_with("echo", "16Ki");
    let addr = served.addr;
    let (status, took) = tokio::task::spawn_blocking(move || {
        // 64 KiB at once, then 32 KiB a second for 8 s: twice the minimum rate, and longer than the grace.
        let (chunk, chunks) = (32 << 10, 8);
        let mut upload = start_upload(addr, (64 << 10) + chunk * chunks, 64 << 10);
        let started = Instant::now();
        for _ in 0..chunks {
            std::thread::sleep(Duration::from_secs(1));
            upload.write_all(&vec![b'x'; chunk]).unwrap();
        }
        (status_line(&mut upload), started.elapsed())
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(took > GRACE, "the upload outlasted the grace: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_of_its_response_is_disconnected_and_frees_its_slot() {
    let runtime = runtime();
    let app = runtime.load(&example("echo")).unwrap();
    let limits = Limits {
        max_connections: Some(1),
        ..Limits::default()
    };
    let options = HttpOptions {
        write_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    };
    let handle = serve_with_options(&runtime, &app, limits, options);
    let addr = handle.local_addr();
    let (received, next) = tokio::task::spawn_blocking(move || {
        // 12 MiB echoed back: more than loopback's socket buffers hold, so the server's writes wait.
        let body = vec![b'x'; 12 << 20];
        let mut stalled = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stalled,
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stalled.write_all(&body).unwrap();
        // The only connection slot is taken: this one waits in the backlog until the stalled one closes.
        let next = std::thread::spawn(move || get(addr, "/"));
        std::thread::sleep(Duration::from_secs(1));
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 20];
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while let Ok(n) = stalled.read(&mut buf) {
            if n == 0 {
                break;
            }
            received += n;
        }
        (received, next.join().unwrap())
    })
    .await
    .unwrap();
    assert!(
        received < 12 << 20,
        "the stalled client's response was cut off ({received} bytes received)"
    );
    assert_eq!(next.status, 200, "the freed slot served the next client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_max_connections_wait_in_a_backlog_as_deep_as_the_kernel_allows() {
    let limits = Limits {
        max_connections: Some(1),
        ..Limits::default()
    };
    let served = serve(&runtime(), "hello", limits, Capabilities::default());
    let _holder = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    // 300 more wait for the one slot. Each completes its handshake at once only if the backlog holds it:
    // with std's 128 the kernel drops the rest's first SYN and they retry a second later.
    let started = std::time::Instant::now();
    let waiting =
        futures::future::join_all((0..300).map(|_| tokio::net::TcpStream::connect(served.addr)))
            .await;
    assert!(waiting.iter().all(Result::is_ok), "a connect failed");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "300 connects took {:?}: the listen backlog is shallower than net.core.somaxconn",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    let runtime = runtime();
    let app = runtime.load(&example("hello")).unwrap();
    let options = HttpOptions {
        header_read_timeout: Duration::from_millis(200),
        ..HttpOptions::default()
    };
    let handle = serve_with_options(&runtime, &app, Limits::default(), options);
    let addr = handle.local_addr();
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: slow").unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        closed_after < Duration::from_secs(2),
        "the slow client was held for {closed_after:?}"
    );
    assert_eq!(
        get_async(addr, "/").await.status,
        200,
        "other clients are still served"
    );
}
