//! Panics on every request, which traps the instance: the host must answer 500 and keep serving.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    if request.uri().path() == "/ok" {
        return Ok(Response::new("not trapping on /ok\n".into()));
    }
    panic!("trap example: deliberate panic on {}", request.uri().path());
}
