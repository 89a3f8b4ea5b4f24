//! Burns CPU: `?ms=N` spins for N milliseconds of wall time, `?forever` never returns.

use wstd::http::{Body, Error, Request, Response};
use wstd::time::{Duration, Instant};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let query = request.uri().query().unwrap_or("").to_string();
    let mut iterations: u64 = 0;
    if query.split('&').any(|kv| kv == "forever") {
        loop {
            iterations = std::hint::black_box(iterations.wrapping_add(1));
        }
    }
    let ms: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let start = Instant::now();
    let budget = Duration::from_millis(ms);
    // Checking the clock every 4096 iterations keeps the loop CPU-bound rather than host-call-bound.
    while start.elapsed() < budget {
        for _ in 0..4096 {
            iterations = std::hint::black_box(iterations.wrapping_add(1));
        }
    }
    Ok(Response::new(format!("burned {ms} ms ({iterations} iterations)\n").into()))
}
