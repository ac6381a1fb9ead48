"""Echo server (the seed's section 1.2 example): every byte read is written back.

Run: python examples/echo_server.py [--port 8080] [--workers N]
then try: python examples/echo_client.py    (Ctrl-C or SIGTERM stops it gracefully)
"""

from __future__ import annotations

import argparse
import logging
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


def make_loop() -> netpoll.EventLoop:
    return netpoll.EventLoop(on_request, on_prepare=on_prepare)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1, help="processes (one per core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s")
    logging.info("echo server on 127.0.0.1:%d, %d worker(s)", args.port, args.workers)
    netpoll.run(
        make_loop, "tcp", f"127.0.0.1:{args.port}", workers=args.workers, shutdown_timeout=5
    )


if __name__ == "__main__":
    main()
