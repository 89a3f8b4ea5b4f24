//! The smallest useful WASI 0.3 (`wasi:http/service`) service: answers every request with a line of text.
//! Written against the raw `wasip3` bindings so its per-request cost is the runtime's, not a guest library's.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
        drop(trailers_tx);
        // The body is written after the response is returned: the host reads it while this task runs.
        wasip3::spawn_local(async move {
            body_tx.write_all(b"Hello from wasmhttp!\n".to_vec()).await;
        });
        Ok(response)
    }
}
