"""What one request costs netpoll, measured without a load generator.

    python -m bench.request_cost [--requests N] [--opcodes]

A client and a netpoll ``Connection`` share a socketpair; each request is sent by the
client, received and handled by calling the connection's event handler directly (what the
poller does on readiness), and the reply read back. Reported: CPU time per request for a
128-byte echo, a 128-byte frame and a minimal HTTP GET (the benchmark servers' handlers),
next to the same receive and send done with no library. ``--opcodes`` also counts the
Python bytecodes one request executes, per function: a figure that does not vary with the
machine's load (complete on CPython 3.11 and older; 3.12 and newer trace only some frames).

The reference floors of ``bench/reference/floors.py`` (the same handlers on a connection
that only moves offsets; one that also locks, revokes released views and runs one handler
at a time as netpoll does; one with those guarantees done more cheaply) are measured the
same way: cases ``floor-echo``, ``safe-echo``, ``owned-echo`` and so on (``--cases``).
Case ``tlsecho`` is the echo over TLS: a ``TLSConnection`` against a Python ``ssl``
client on the socketpair (the client's own TLS work is counted too, the same in any
comparison of two netpoll versions).

For instruction counts, run one case under callgrind with two request counts and
subtract: ``valgrind --tool=callgrind python -m bench.request_cost --cases echo
--requests 0`` and ``... --requests 20000``; divide the difference by 20000.
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

from .handlers import netpoll_handler
from .reference.floors import FloorConn, OwnedFloorConn, SafeFloorConn

MESSAGE = b"x" * 128
FRAME = len(MESSAGE).to_bytes(4, "big") + MESSAGE
WARMUP = 1000  # requests before timing, whatever --requests says (so callgrind counts subtract)


def _per_request(
    client: socket.socket, event: Callable[[Any], object], arg: Any, msg: bytes, n: int
) -> float:
    """CPU seconds per request of: the client sends ``msg``, ``event(arg)`` receives and
    answers it (what the poller does on readiness), the client reads the reply."""
    for _ in range(WARMUP):  # warm the pools and the kept receive block
        client.send(msg)
        event(arg)
        client.recv(65536)
    t0 = time.process_time()
    for _ in range(n):
        client.send(msg)
        event(arg)
        client.recv(65536)
    return (time.process_time() - t0) / max(n, 1)


def netpoll_cost(handler: Callable[[Any, Any], None], msg: bytes, n: int) -> float:
    """CPU seconds per request through a netpoll connection."""
    client, server = socket.socketpair()
    conn = Connection(server, Poller(0), on_request=handler)
    try:
        return _per_request(client, conn._on_event, READ_EVENTS, msg, n)
    finally:
        conn.close()
        client.close()


def tls_netpoll_cost(handler: Callable[[Any, Any], None], msg: bytes, n: int) -> float:
    """CPU seconds per request through a netpoll TLS connection (with the client's TLS)."""
    import ssl
    import threading

    from netpoll._conn._tls import TLSConnection

    from .tools import Toolbox

    files = Toolbox.discover().ensure_tls_files()
    if files is None:
        raise SystemExit("request_cost: no TLS certificate (install openssl or trustme)")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(files[0]), str(files[1]))
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    raw, server = socket.socketpair()
    conn = TLSConnection(server, Poller(0), server_ctx, server_side=True, on_request=handler)
    shake = threading.Thread(target=conn.handshake_blocking, args=(10.0,))
    shake.start()
    client = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    shake.join(10.0)
    try:
        return _per_request(client, conn._on_event, READ_EVENTS, msg, n)
    finally:
        conn.close()
        client.close()


def floor_cost(
    cls: type[FloorConn] | type[SafeFloorConn],
    handler: Callable[[Any, Any], None],
    msg: bytes,
    n: int,
) -> float:
    """CPU seconds per request through a reference floor's connection."""
    client, server = socket.socketpair()
    server.setblocking(False)
    try:
        return _per_request(client, cls(server).on_readable, handler, msg, n)
    finally:
        client.close()
        server.close()


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


def opcode_counts(
    handler: Callable[[Any, Any], None],
    msg: bytes,
    floor: type[FloorConn] | type[SafeFloorConn] | None = None,
) -> collections.Counter[str]:
    """Bytecodes executed by one request, per function (on a floor's connection if given)."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]})"] += 1
        return tracer

    client, server = socket.socketpair()
    conn = fconn = None
    if floor is None:
        conn = Connection(server, Poller(0), on_request=handler)
    else:
        server.setblocking(False)
        fconn = floor(server)
    # Whatever tracer runs already (coverage.py, a debugger) is put back afterwards, not
    # switched off for the rest of the process.
    previous = sys.gettrace()
    try:
        for i in range(11):
            client.send(msg)
            if i == 10:
                sys.settrace(tracer)
            # Called right here, not through a helper: CPython 3.13 traces no frame called
            # from a function that was already running when settrace was set.
            try:
                if conn is not None:
                    conn._on_event(READ_EVENTS)
                elif fconn is not None:
                    fconn.on_readable(handler)
            finally:
                sys.settrace(previous)
            client.recv(65536)
    finally:
        if conn is not None:
            conn.close()
        server.close()
        client.close()
    return counts


HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
RESP_SET = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$3\r\nxxx\r\n"
MESSAGES = {"echo": MESSAGE, "frames": FRAME, "http": HTTP_REQUEST}
# RESP SET, parsed from one peek (resp) or field by field (resplines: read_line,
# read_binary, skip, as bench.handlers.resp_lines_handler): netpoll only, no floors.
RESP_MESSAGES = {"resp": RESP_SET, "resplines": RESP_SET}
RESP_WORKLOADS = {"resp": "resp", "resplines": "resp-lines"}
CASES = (
    "raw",
    *(f"{kind}{w}" for kind in ("", "floor-", "safe-", "owned-") for w in MESSAGES),
    *RESP_MESSAGES,
    "tlsecho",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests per figure")
    parser.add_argument("--opcodes", action="store_true", help="count bytecodes per request")
    parser.add_argument(
        "--cases",
        default="raw,echo,frames,http",
        help=f"comma-separated cases to run, from {', '.join(CASES)} (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    floors: dict[str, type[FloorConn] | type[SafeFloorConn]] = {
        "floor": FloorConn,
        "safe": SafeFloorConn,
        "owned": OwnedFloorConn,
    }
    print(f"Python {sys.version.split()[0]}; {args.requests} requests per figure")
    raw = raw_cost(MESSAGE, args.requests) if "raw" in cases else None
    if raw is not None:
        print(f"raw recv_into + send: {raw * 1e6:.2f} µs per request")
    for case in cases:
        if case == "raw":
            continue
        if case == "tlsecho":
            cost = tls_netpoll_cost(netpoll_handler(netpoll, "echo"), MESSAGE, args.requests)
            print(f"netpoll TLS echo: {cost * 1e6:.2f} µs per request")
            continue
        kind, _, workload = case.rpartition("-")
        handler = netpoll_handler(netpoll, RESP_WORKLOADS.get(workload, workload))
        msg = RESP_MESSAGES.get(workload) or MESSAGES[workload]
        floor = floors.get(kind)
        if floor is None:
            cost = netpoll_cost(handler, msg, args.requests)
        else:
            cost = floor_cost(floor, handler, msg, args.requests)
        extra = "" if raw is None else f" ({(cost - raw) * 1e6:+.2f} µs)"
        label = f"netpoll {workload}" if floor is None else f"{case} (reference floor)"
        print(f"{label}: {cost * 1e6:.2f} µs per request{extra}")
        if args.opcodes:
            counts = opcode_counts(handler, msg, floor)
            for fn, k in counts.most_common():
                print(f"    {k:4d}  {fn}")
            print(f"    {sum(counts.values()):4d}  bytecodes in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
