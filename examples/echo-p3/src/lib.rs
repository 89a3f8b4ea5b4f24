//! Echoes the request back — method, path, headers (sorted) and body — as a WASI 0.3 service.
//! Its output matches the 0.2 `echo` example byte for byte.

use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(Echo);

struct Echo;

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

impl wasip3::exports::http::handler::Guest for Echo {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let mut out = format!(
            "method: {}\npath: {}\n",
            method_name(&request.get_method()),
            request.get_path_with_query().unwrap_or_else(|| "/".into())
        );
        let mut headers: Vec<String> = request
            .get_headers()
            .copy_all()
            .into_iter()
            .map(|(k, v)| format!("header: {}: {}\n", k, String::from_utf8_lossy(&v)))
            .collect();
        headers.sort();
        out.extend(headers);
        let (_, done) = wit_future::new(|| Ok(()));
        let (body, trailers) = Request::consume_body(request, done);
        let bytes = body.collect().await;
        trailers.await?;
        out.push_str("body: ");
        out.push_str(&String::from_utf8_lossy(&bytes));

        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
        drop(trailers_tx);
        wasip3::spawn_local(async move {
            body_tx.write_all(out.into_bytes()).await;
        });
        Ok(response)
    }
}
