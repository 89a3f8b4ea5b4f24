//! Allocates and touches `?mib=N` MiB of linear memory, then answers how much it holds.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let mib: usize = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("mib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut buf = vec![0u8; mib << 20];
    // Touch one byte per page so the memory is really committed, not just reserved.
    for i in (0..buf.len()).step_by(4096) {
        buf[i] = (i >> 12) as u8 | 1;
    }
    let sum: u64 = buf.iter().step_by(4096).map(|b| *b as u64).sum();
    Ok(Response::new(format!("held {mib} MiB (checksum {sum})\n").into()))
}
