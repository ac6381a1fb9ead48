"""What one Reader call on a Connection costs, with the bytes already buffered.

    python -m bench.reader_calls [--calls N] [--runs R]

A netpoll ``Connection`` over a socketpair is filled by calling its event handler (what
the poller does on readiness) with lines of 32 bytes, then each Reader method is called
in a loop, with a ``release()`` every 64 calls as a handler would: the figure is
wall-clock nanoseconds per call (medians of the runs), the part of a blocking-style
handler's time that the library adds per field it reads. Run it with the interpreter of
the build to measure (``.venv`` compiled, ``.venv-pure`` pure).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import netpoll
from netpoll._connection import Connection
from netpoll._poll._backend import READ_EVENTS
from netpoll._poll._poller import Poller

LINE = b"x" * 31 + b"\n"
BATCH = 64  # calls between two release()s
FILL = 256 * 1024  # bytes buffered before each timed batch of calls


def _calls(conn: Any) -> dict[str, Callable[[], object]]:
    return {
        "next(32)": lambda: conn.next(32),
        "peek(32)+skip(32)": lambda: (conn.peek(32), conn.skip(32)),
        "skip(32)": lambda: conn.skip(32),
        "read_binary(32)": lambda: conn.read_binary(32),
        "read_line()": lambda: conn.read_line(),
        "until(10)": lambda: conn.until(10),
    }


def _fill(client: socket.socket, conn: Any, size: int) -> None:
    data = LINE * (size // len(LINE))
    sent = 0
    while sent < len(data):
        sent += client.send(data[sent : sent + 65536])
        conn._on_event(READ_EVENTS)
    while len(conn) < size - size % len(LINE):
        conn._on_event(READ_EVENTS)


def measure(name: str, calls: int) -> float:
    """Nanoseconds per call of the named Reader method."""
    client, server = socket.socketpair()
    conn = Connection(server, Poller(0))
    fn = _calls(conn)[name]
    per_fill = FILL // len(LINE) // (2 if "peek" in name else 1)
    spent = 0.0
    done = 0
    try:
        while done < calls:
            _fill(client, conn, FILL)
            n = min(per_fill, calls - done) // BATCH * BATCH or BATCH
            t0 = time.perf_counter()
            for _ in range(n // BATCH):
                for _ in range(BATCH):
                    fn()
                conn.release()
            spent += time.perf_counter() - t0
            done += n
            conn.skip(len(conn))
            conn.release()
    finally:
        conn.close()
        client.close()
    # The loop's own cost (a lambda call), measured the same way, is subtracted.
    return spent / done * 1e9


def loop_overhead(calls: int) -> float:
    def noop() -> None:
        pass

    fn: Callable[[], object] = lambda: noop()  # noqa: E731  # the same shape as above
    t0 = time.perf_counter()
    for _ in range(calls // BATCH):
        for _ in range(BATCH):
            fn()
    return (time.perf_counter() - t0) / (calls // BATCH * BATCH) * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reader_calls", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per figure")
    parser.add_argument("--runs", type=int, default=5, help="figures per method (median)")
    args = parser.parse_args(argv)
    build = "compiled" if getattr(netpoll, "compiled", False) else "pure"
    print(f"netpoll {build} build; ns per call, median of {args.runs} runs of {args.calls}")
    base = statistics.median(loop_overhead(args.calls) for _ in range(args.runs))
    print(f"  {'(loop and lambda)':<20} {base:7.0f}  (subtracted below)")
    for name in _calls(None):
        ns = statistics.median(measure(name, args.calls) for _ in range(args.runs)) - base
        print(f"  {name:<20} {ns:7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
