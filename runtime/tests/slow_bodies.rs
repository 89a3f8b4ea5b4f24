//! Bodies past their first 64 KiB stream to the guest while the request holds its slot: a client that stops
//! sending is cut off at `min-request-body-rate` (after its grace), one that keeps the rate is not.

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
