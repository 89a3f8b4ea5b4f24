"""The Python example as a WASI 0.2 `wasi:http/proxy` component (see routes.py for what it answers)."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

import routes

# blocking_write_and_flush takes at most this many bytes per call.
CHUNK = 4096


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = type(request.method()).__name__.removeprefix("Method_").upper()
        status, body = routes.route(method, request.path_with_query() or "/")
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(status)
        response_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with response_body.write() as stream:
            for start in range(0, len(body), CHUNK):
                stream.blocking_write_and_flush(body[start : start + CHUNK])
        OutgoingBody.finish(response_body, None)
