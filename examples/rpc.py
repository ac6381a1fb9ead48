"""Length-prefixed RPC: a server, and a client that pipelines requests via set_on_request.

Frames are a 4-byte big-endian length and a payload; the server answers each request with
its payload upper-cased. The client writes many requests without waiting; responses are
pushed to its handler by the poller, in order.

Run: python examples/rpc.py [count]
"""

from __future__ import annotations

import struct
import sys
import threading
from typing import Any

import netpoll

MAX_FRAME = 16 << 20


def server_on_request(ctx: Any, conn: netpoll.Connection) -> None:
    # next() blocks until the whole frame is in; a blocked handler never stalls others.
    while len(conn) >= 4:
        (n,) = struct.unpack(">I", conn.next(4))
        if n > MAX_FRAME:
            conn.close()
            return
        payload = conn.next(n)
        header = conn.malloc(4)  # write the reply header in place
        struct.pack_into(">I", header, 0, n)
        conn.write_binary(payload.tobytes().upper())
    conn.flush()
    conn.release()


class PipelinedClient:
    """Sends requests back to back; responses arrive through ``set_on_request``."""

    def __init__(self, conn: netpoll.Connection, expected: int) -> None:
        self.conn = conn
        self.responses: list[bytes] = []
        self.expected = expected
        self.done = threading.Event()
        conn.set_on_request(self._on_response)

    def _on_response(self, ctx: Any, conn: netpoll.Connection) -> None:
        while len(conn) >= 4:
            (n,) = struct.unpack(">I", conn.peek(4))
            if len(conn) < 4 + n:
                break  # the rest of this frame has not arrived; we are called again
            conn.skip(4)
            self.responses.append(conn.read_binary(n))
        conn.release()
        if len(self.responses) >= self.expected:
            self.done.set()

    def send(self, payload: bytes) -> None:
        self.conn.write_binary(struct.pack(">I", len(payload)))
        self.conn.write_binary(payload)


def main(count: int = 1000) -> None:
    listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    loop = netpoll.EventLoop(server_on_request)
    threading.Thread(target=loop.serve, args=(listener,), daemon=True).start()
    if not loop.wait_serving(5):  # the readiness signal: no polling, no sleeping
        raise SystemExit("the server did not start")
    conn = netpoll.dial_connection("tcp", listener.addr, timeout=3)
    client = PipelinedClient(conn, count)
    for i in range(count):
        client.send(b"request %d" % i)
    conn.flush()  # one flush sends every queued request
    if not client.done.wait(10):
        raise SystemExit(f"only {len(client.responses)} of {count} responses arrived")
    assert client.responses[0] == b"REQUEST 0"
    print(f"{count} pipelined requests answered in order; last: {client.responses[-1]!r}")
    conn.close()
    loop.shutdown(timeout=5)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
