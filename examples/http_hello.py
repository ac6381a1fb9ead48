"""HTTP/1.1 "Hello World" with keep-alive and pipelining, on the nocopy Reader API.

Run: python examples/http_hello.py [--port 8080] [--workers N]
then: curl -v http://127.0.0.1:8080/    (Ctrl-C or SIGTERM stops it gracefully)
"""

from __future__ import annotations

import argparse
from typing import Any

import netpoll

BODY = b"Hello World"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
MAX_HEAD = 64 * 1024


def on_request(ctx: Any, conn: netpoll.Connection) -> None:
    # Answer every complete request head buffered; a partial one waits for more input.
    head = conn.peek(len(conn)).tobytes()
    pos = 0
    answered = 0
    while True:
        end = head.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        if not head.startswith((b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE "), pos):
            conn.close()  # not HTTP we speak: drop the connection
            return
        pos = end + 4
        answered += 1
    if len(head) - pos > MAX_HEAD:
        conn.close()  # an endless head: refuse to buffer it
        return
    if answered:
        conn.skip(pos)
        conn.write_binary(RESPONSE * answered)
        conn.flush()
    conn.release()


def make_loop() -> netpoll.EventLoop:
    return netpoll.EventLoop(on_request, idle_timeout=60, max_connections=10_000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1, help="processes (one per core)")
    args = parser.parse_args(argv)
    print(f"HTTP hello on http://127.0.0.1:{args.port}/ with {args.workers} worker(s)")
    netpoll.run(
        make_loop, "tcp", f"127.0.0.1:{args.port}", workers=args.workers, shutdown_timeout=5
    )


if __name__ == "__main__":
    main()
