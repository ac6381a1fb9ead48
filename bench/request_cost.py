"""What one request costs netpoll, measured without a load generator.

    python -m bench.request_cost [--requests N] [--opcodes]

A client and a netpoll ``Connection`` share a socketpair; each request is sent by the
client, received and handled by calling the connection's event handler directly (what the
poller does on readiness), and the reply read back. Reported: CPU time per request for a
128-byte echo and a 128-byte frame (the benchmark servers' handlers), next to the same
receive and send done with no library. ``--opcodes`` also counts the Python bytecodes one
request executes, per function: a figure that does not vary with the machine's load.

For instruction counts, run it under callgrind with two request counts and subtract:
``valgrind --tool=callgrind python -m bench.request_cost --requests 0`` and ``... 20000``.
"""

from __future__ import annotations

import argparse
import collections
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import netpoll
from netpoll._connection import Connection
from netpoll._poll._backend import READ_EVENTS
from netpoll._poll._poller import Poller

from .server import netpoll_handler

MESSAGE = b"x" * 128
FRAME = len(MESSAGE).to_bytes(4, "big") + MESSAGE


def netpoll_cost(handler: Callable[[Any, Any], None], msg: bytes, n: int) -> float:
    """CPU seconds per request through a netpoll connection."""
    client, server = socket.socketpair()
    conn = Connection(server, Poller(0), on_request=handler)
    event = conn._on_event
    try:
        for _ in range(min(n, 1000)):  # warm the pools and the kept receive block
            client.send(msg)
            event(READ_EVENTS)
            client.recv(65536)
        t0 = time.process_time()
        for _ in range(n):
            client.send(msg)
            event(READ_EVENTS)
            client.recv(65536)
        return (time.process_time() - t0) / max(n, 1)
    finally:
        conn.close()
        client.close()


def raw_cost(msg: bytes, n: int) -> float:
    """CPU seconds per request for the same receive and send with no library."""
    client, server = socket.socketpair()
    server.setblocking(False)
    buf = bytearray(65536)
    view = memoryview(buf)
    try:
        t0 = time.process_time()
        for _ in range(n):
            client.send(msg)
            k = server.recv_into(buf)
            server.send(view[:k].tobytes())
            client.recv(65536)
        return (time.process_time() - t0) / max(n, 1)
    finally:
        client.close()
        server.close()


def opcode_counts(handler: Callable[[Any, Any], None], msg: bytes) -> collections.Counter[str]:
    """Bytecodes executed by one request, per function."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]})"] += 1
        return tracer

    client, server = socket.socketpair()
    conn = Connection(server, Poller(0), on_request=handler)
    try:
        for _ in range(10):
            client.send(msg)
            conn._on_event(READ_EVENTS)
            client.recv(65536)
        client.send(msg)
        sys.settrace(tracer)
        try:
            conn._on_event(READ_EVENTS)
        finally:
            sys.settrace(None)
        client.recv(65536)
    finally:
        conn.close()
        client.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests per figure")
    parser.add_argument("--opcodes", action="store_true", help="count bytecodes per request")
    args = parser.parse_args(argv)
    cases = {
        "echo": (netpoll_handler(netpoll, "echo"), MESSAGE),
        "frames": (netpoll_handler(netpoll, "frames"), FRAME),
    }
    print(f"Python {sys.version.split()[0]}; {args.requests} requests per figure")
    raw = raw_cost(MESSAGE, args.requests)
    print(f"raw recv_into + send: {raw * 1e6:.2f} µs per request")
    for name, (handler, msg) in cases.items():
        cost = netpoll_cost(handler, msg, args.requests)
        print(f"netpoll {name}: {cost * 1e6:.2f} µs per request ({(cost - raw) * 1e6:+.2f} µs)")
        if args.opcodes:
            counts = opcode_counts(handler, msg)
            for fn, k in counts.most_common():
                print(f"    {k:4d}  {fn}")
            print(f"    {sum(counts.values()):4d}  bytecodes in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
