//! Writes one line to stdout and one to stderr per request, so log plumbing can be checked.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_string();
    println!("logger stdout: {} {}", request.method(), path);
    eprintln!("logger stderr: {} {}", request.method(), path);
    Ok(Response::new(format!("logged {path}\n").into()))
}
