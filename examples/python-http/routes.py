"""Routes shared by the WASI 0.2 and 0.3 builds of the Python example (`app_p2.py`, `app_p3.py`).

`route` returns (status, body) and never touches wasi:http, so both adapters stay a few lines each.
"""

import time


def route(method: str, path: str) -> tuple[int, bytes]:
    parts = path.split("?", 1)[0].strip("/").split("/")
    if method != "GET":
        return 405, b"GET only\n"
    if parts == [""]:
        return 200, b"hello from python\n"
    if parts == ["log"]:
        # Goes to the guest's stdout, which the host forwards to the container log.
        print("python guest: a log line", flush=True)
        return 200, b"logged\n"
    if len(parts) == 2 and parts[1].isdigit():
        amount = int(parts[1])
        if parts[0] == "alloc":
            # bytearray zero-fills, so every page is touched: the guest's memory really grows by this much.
            # A refused memory.grow surfaces here as MemoryError, which the adapter turns into a trap.
            held = bytearray(amount << 20)
            return 200, b"allocated %d MiB\n" % (len(held) >> 20)
        if parts[0] == "burn":
            end = time.monotonic() + amount / 1000
            spins = 0
            while time.monotonic() < end:
                spins += 1
            return 200, b"burned %d ms\n" % amount
    return 404, b"no such route\n"
