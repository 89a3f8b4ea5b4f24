//! Allocates and touches `?mib=N` MiB of linear memory, then answers how much it holds; `&hold=MS` keeps
//! holding it that many milliseconds before answering, so concurrent requests overlap for sure.
//! `?fields=N` makes the host hold memory for it: N `wasi:http` fields resources of 48 KiB each, held
//! while `mib` (if given) is then allocated; `&late-fields=N` makes N more once `mib` is allocated.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let query = request.uri().query().unwrap_or("");
    let param = |name: &str| -> Option<u64> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    // Fields stay held until the answer, next to whatever linear memory `mib` then asks for.
    let mut held = Vec::new();
    if let Some(count) = param("fields") {
        hold_fields(&mut held, count)?;
        if param("mib").is_none() {
            return Ok(Response::new(format!("host holds {} fields\n", held.len()).into()));
        }
    }
    let mib = param("mib").unwrap_or(1) as usize;
    let hold_ms = param("hold").unwrap_or(0);
    let mut buf = vec![0u8; mib << 20];
    // Touch one byte per page so the memory is really committed, not just reserved.
    for i in (0..buf.len()).step_by(4096) {
        buf[i] = (i >> 12) as u8 | 1;
    }
    hold_fields(&mut held, param("late-fields").unwrap_or(0))?;
    if hold_ms > 0 {
        wstd::task::sleep(wstd::time::Duration::from_millis(hold_ms)).await;
    }
    let sum: u64 = buf.iter().step_by(4096).map(|b| *b as u64).sum();
    drop(held);
    Ok(Response::new(format!("held {mib} MiB (checksum {sum})\n").into()))
}

/// Makes the host hold `count` more fields resources of 48 KiB each.
fn hold_fields(held: &mut Vec<wasip2::http::types::Fields>, count: u64) -> Result<(), Error> {
    let value = vec![b'a'; 48 << 10];
    for _ in 0..count {
        let fields = wasip2::http::types::Fields::new();
        fields
            .append("x-pad", &value)
            .map_err(|e| Error::msg(format!("{e:?}")))?;
        held.push(fields);
    }
    Ok(())
}
