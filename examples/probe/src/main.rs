//! Probes what the guest is allowed to touch, for capability tests:
//! `?read=PATH` reads a file, `?write=PATH` creates (or replaces) one, `?fetch=URL` sends an outbound GET.
//! Each answers "allowed: …" or "denied: …". `?cwd` answers the working directory the runtime gave
//! (`wasi:cli/environment.initial-cwd`).

use wstd::http::{Body, Client, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let query = request.uri().query().unwrap_or("").to_string();
    let mut out = String::new();
    for pair in query.split('&') {
        if pair == "cwd" {
            let cwd = wasip2::cli::environment::initial_cwd();
            out.push_str(&format!("initial-cwd: {}\n", cwd.as_deref().unwrap_or("none")));
        }
        if let Some(path) = pair.strip_prefix("read=") {
            match std::fs::read_to_string(path) {
                Ok(text) => out.push_str(&format!("read allowed: {}\n", text.trim())),
                Err(e) => out.push_str(&format!("read denied: {e}\n")),
            }
        }
        if let Some(path) = pair.strip_prefix("write=") {
            match std::fs::write(path, "written by the guest\n") {
                Ok(()) => out.push_str("write allowed\n"),
                Err(e) => out.push_str(&format!("write denied: {e}\n")),
            }
        }
        if let Some(url) = pair.strip_prefix("fetch=") {
            let outbound = Request::get(url).body(Body::empty())?;
            match Client::new().send(outbound).await {
                Ok(response) => out.push_str(&format!("fetch allowed: {}\n", response.status())),
                Err(e) => out.push_str(&format!("fetch denied: {e:?}\n")),
            }
        }
    }
    Ok(Response::new(out.into()))
}
