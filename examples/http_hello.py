"""HTTP/1.1 "Hello World" with keep-alive and pipelining, on the nocopy Reader API.

Run: python examples/http_hello.py [port]   then: curl -v http://127.0.0.1:8080/
"""

from __future__ import annotations

import sys
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


def main(port: int = 8080) -> None:
    listener = netpoll.create_listener("tcp", f"127.0.0.1:{port}")
    loop = netpoll.EventLoop(on_request, idle_timeout=60)
    print(f"HTTP hello on http://127.0.0.1:{port}/")
    try:
        loop.serve(listener)
    except KeyboardInterrupt:
        loop.shutdown(timeout=5)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
