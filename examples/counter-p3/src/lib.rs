//! Shows what instance reuse means for a WASI 0.3 service, and how a limit ends an instance.
//!
//! - `/` answers `count: N`, N counting the requests this instance has served: it grows while the
//!   instance is reused and starts again at 1 on a fresh one.
//! - `/sleep/MS` waits MS milliseconds without holding the CPU (`wait-for`): requests on one instance
//!   overlap, so ten of them take about MS, not ten times MS.
//! - `/burn/MS` computes for MS milliseconds of wall time (throttling stretches it, not the work).
//! - `/alloc/MIB` keeps MIB more MiB for the life of the instance (a leak), `/spin` loops on the CPU
//!   forever and `/trap` panics: each shows how a limit or a fault ends the instance, not the service.

use std::sync::atomic::{AtomicU64, Ordering};
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(Counter);

static SERVED: AtomicU64 = AtomicU64::new(0);
static LEAKED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

struct Counter;

fn text(body: String) -> Response {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("static header is valid");
    let (mut body_tx, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
    drop(trailers_tx);
    wasip3::spawn_local(async move {
        body_tx.write_all(body.into_bytes()).await;
    });
    response
}

impl wasip3::exports::http::handler::Guest for Counter {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let count = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.get_path_with_query().unwrap_or_default();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        match parts.next().unwrap_or_default() {
            "sleep" => {
                let ms = number(parts.next());
                wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
            }
            "burn" => {
                let clock = wasip3::clocks::monotonic_clock::now;
                let until = clock() + number(parts.next()) * 1_000_000;
                let mut x = count;
                while clock() < until {
                    for _ in 0..1000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            }
            "alloc" => {
                let mib = number(parts.next()) as usize;
                // Touched, so the pages are really used.
                LEAKED.lock().unwrap().push(vec![1u8; mib << 20]);
            }
            "spin" => {
                let mut x = count;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "trap" => panic!("asked to trap"),
            _ => {}
        }
        Ok(text(format!("count: {count}\n")))
    }
}
