"""The Python example as a WASI 0.3 `wasi:http/service` component (see routes.py for what it answers)."""

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from componentize_py_async_support.streams import ByteStreamWriter
from wit_world.imports.wasi_http_types import Fields, Request, Response

import routes


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        method = type(request.get_method()).__name__.removeprefix("Method_").upper()
        status, body = routes.route(method, request.get_path_with_query() or "/")
        tx, rx = wit_world.byte_stream()
        trailers = wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
            lambda: Ok(None)
        )[1]
        response = Response.new(Fields.from_list([("content-type", b"text/plain")]), rx, trailers)[0]
        response.set_status_code(status)
        # The body is written once the response is on its way: the write completes as the host reads it.
        componentize_py_async_support.spawn(write_body(tx, body))
        return response


async def write_body(tx: ByteStreamWriter, body: bytes) -> None:
    with tx:
        await tx.write_all(body)
