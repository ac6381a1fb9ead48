"""HTTPS hello servers for bench/reference/https_quick.sh, one SSLContext for all.

    python -m bench.reference.https_server KIND PORT CERT KEY   (KIND: netpoll, asyncio, uvloop)

netpoll serves ``examples/http_hello.py``'s handler over a TLS listener; asyncio and
uvloop serve a ``Protocol`` answering with the benchmark's shared HTTP logic.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path
from typing import Any

from bench.protocols import ProtocolError, process_http


class HelloProtocol(asyncio.Protocol):
    """Answers every complete request with the fixed response; keeps partial input."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            consumed, out = process_http(self.buf)
        except ProtocolError:
            self.transport.close()
            return
        self.buf = self.buf[consumed:]
        if out:
            self.transport.write(out)


async def serve_asyncio(port: int, ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HelloProtocol, "127.0.0.1", port, ssl=ctx, backlog=1024)
    await server.serve_forever()


def main(argv: list[str]) -> None:
    kind, port, cert, key = argv[0], int(argv[1]), argv[2], argv[3]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if kind == "netpoll":
        import netpoll

        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
        import http_hello  # type: ignore[import-not-found]

        listener = netpoll.create_listener("tcp", f"127.0.0.1:{port}", ssl=ctx)
        netpoll.EventLoop(http_hello.on_request).serve(listener)
        return
    if kind == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(serve_asyncio(port, ctx))


if __name__ == "__main__":
    main(sys.argv[1:])
