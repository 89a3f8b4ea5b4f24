//! Echoes the request back: method, path, headers (sorted) and body.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let (parts, mut body) = request.into_parts();
    let mut out = format!(
        "method: {}\npath: {}\n",
        parts.method,
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut headers: Vec<_> = parts
        .headers
        .iter()
        .map(|(k, v)| format!("header: {}: {}\n", k, String::from_utf8_lossy(v.as_bytes())))
        .collect();
    headers.sort();
    out.extend(headers);
    let bytes = body.contents().await?;
    out.push_str("body: ");
    out.push_str(&String::from_utf8_lossy(bytes));
    Ok(Response::new(out.into()))
}
