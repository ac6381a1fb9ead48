"""Echo server (the seed's section 1.2 example): every byte read is written back.

Run: python examples/echo_server.py [port]   then try: python examples/echo_client.py
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import netpoll


def on_prepare(conn: netpoll.Connection) -> Any:
    logging.info("new connection from %s", conn.remote_addr)
    return None


def on_request(ctx: Any, conn: netpoll.Connection) -> None:
    data = conn.next(len(conn))  # a zero-copy view of everything buffered
    conn.write_binary(data)  # referenced, not copied, until the flush below
    conn.flush()
    conn.release()  # the view is dead from here on


def main(port: int = 8080) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    listener = netpoll.create_listener("tcp", f"127.0.0.1:{port}")
    loop = netpoll.EventLoop(on_request, on_prepare=on_prepare)
    logging.info("echo server on %s", listener.addr)
    try:
        loop.serve(listener)
    except KeyboardInterrupt:
        loop.shutdown(timeout=5)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
