"""Garbage into the example HTTP and RPC servers: clean closes, quiet logs."""

from __future__ import annotations

import logging
import random
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from examples.http_hello import MAX_HEAD, RESPONSE
from examples.http_hello import on_request as http_on_request
from examples.rpc import MAX_FRAME, server_on_request

from ._harness import (
    Case,
    HttpHello,
    LiveServer,
    LogCapture,
    MiB,
    PeakRss,
    Proto,
    RpcUpper,
    connect,
    mib,
    record,
    recv_until_closed,
    reset_close,
    rss_bytes,
    run_threads,
    trim_heap,
    wait_for,
)

SEED = 7_2024
QUICK = 400  # garbage connections that close, reset or half-close
LINGERING = 100  # garbage connections that stay open until the server closes them
TIMEOUT = 1.0  # the servers' read and idle timeouts
MAX_LOG_RECORDS = 5
RSS_SLACK = 8 << 20


def http_garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    junk = rng.randbytes(rng.randint(1, 20_000))
    if kind == 0:
        return junk
    if kind == 1:  # a valid request, then junk
        return b"GET / HTTP/1.1\r\nHost: g\r\n\r\n" + junk
    if kind == 2:  # junk between head terminators
        return b"\r\n\r\n".join(rng.randbytes(rng.randint(0, 50)) for _ in range(20))
    if kind == 3:  # a head that never ends
        return b"GET /" + b"a" * (MAX_HEAD + rng.randint(1, 10_000))
    if kind == 4:  # a plausible method, garbage after it
        return rng.choice([b"POST ", b"PUT ", b"HEAD ", b"DELETE "]) + junk
    return bytes(rng.choice(b"\r\n :GET/") for _ in range(rng.randint(1, 3000)))


def rpc_garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    junk = rng.randbytes(rng.randint(1, 20_000))
    if kind == 0:
        return junk
    if kind == 1:  # a header past MAX_FRAME
        return struct.pack(">I", rng.randint(MAX_FRAME + 1, 2**32 - 1)) + junk[:100]
    if kind == 2:  # a valid frame, then junk
        return struct.pack(">I", 5) + b"hello" + junk
    if kind == 3:  # a frame claiming a bit more than is sent
        n = rng.randint(1, 60_000)
        return struct.pack(">I", n) + rng.randbytes(rng.randrange(n))
    return junk[:3]  # less than a header


def quick_client(
    addr: Any, make: Callable[[random.Random], bytes], rng: random.Random, outcomes: Counter[str]
) -> None:
    mode = rng.choice(["close", "reset", "half-close"])
    s = connect(addr)
    try:
        try:
            s.sendall(make(rng))
        except OSError:  # the server already closed on what it saw
            outcomes["closed-while-sending"] += 1
            return
        if mode == "close":
            s.close()
        elif mode == "reset":
            reset_close(s)
        else:
            s.shutdown(socket.SHUT_WR)
            _, how = recv_until_closed(s, limit=8 * MiB)
            mode = f"half-close:{how}"
        outcomes[mode] += 1
    finally:
        s.close()


def lingering_clients(
    addr: Any, make: Callable[[random.Random], bytes], rng: random.Random, deadline: float
) -> tuple[int, float]:
    """LINGERING clients send garbage and wait; returns (closed by the server, last close s)."""
    socks = [connect(addr) for _ in range(LINGERING)]
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    last = 0.0
    closed = 0
    try:
        for i, s in enumerate(socks):
            try:
                s.sendall(make(rng))
            except OSError:
                closed += 1
                continue
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(max(deadline - time.monotonic(), 0.0)):
                s = socks[key.data]
                try:
                    if s.recv(1 << 16):
                        continue  # a reply to a valid part; the close comes later
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                sel.unregister(s)
                closed += 1
                last = time.monotonic() - start
    finally:
        sel.close()
        for s in socks:
            s.close()
    return closed, last


SERVERS: dict[str, tuple[Callable[..., Any], Callable[[random.Random], bytes], Proto]] = {
    "http": (http_on_request, http_garbage, HttpHello(RESPONSE)),
    "rpc": (server_on_request, rpc_garbage, RpcUpper()),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_garbage_into_example_server(netpoll_log: LogCapture, server: str) -> None:
    handler, make, proto = SERVERS[server]
    outcomes: list[Counter[str]] = [Counter() for _ in range(4)]

    def quick(t: int) -> None:
        rng = random.Random(SEED + t)
        for _ in range(QUICK // 4):
            quick_client(srv.addr, make, rng, outcomes[t])

    with (
        LiveServer(handler, read_timeout=TIMEOUT, idle_timeout=TIMEOUT) as srv,
        Case(f"garbage-{server}", srv, proto) as case,
    ):
        errors = run_threads(quick, 4, timeout=40)
        closed, last = lingering_clients(
            srv.addr, make, random.Random(SEED), time.monotonic() + TIMEOUT * 6
        )
        case.finish()
        exceptions = case.delta("handler_exceptions")
        timeouts = case.delta("closed_by_read_timeout") + case.delta("closed_by_idle_timeout")
    total = sum(outcomes, Counter())
    records = netpoll_log.at_least(logging.INFO)
    case.record(
        seed=SEED,
        quick_connections=QUICK,
        lingering_connections=LINGERING,
        lingering_closed_by_server=closed,
        last_lingering_close_s=round(last, 2),
        closed_by_timeouts=timeouts,
        outcomes=dict(sorted(total.items())),
        log_records=len(records),
        handler_exceptions=exceptions,
    )

    assert not errors, errors[:3]
    assert sum(total.values()) == QUICK
    assert all(
        k in ("close", "reset", "closed-while-sending", "half-close:eof", "half-close:reset")
        for k in total
    ), total
    assert closed == LINGERING, f"{LINGERING - closed} garbage connections were never closed"
    assert last <= TIMEOUT * 3
    assert exceptions == 0
    assert not netpoll_log.at_least(logging.ERROR), netpoll_log.describe(logging.ERROR)
    assert len(records) <= MAX_LOG_RECORDS, netpoll_log.describe(logging.INFO)
    case.check(RSS_SLACK)


@pytest.mark.timeout(30)
def test_rpc_length_claims_do_not_pin_memory_before_the_bytes_arrive() -> None:
    """16 clients each send an RPC header claiming MAX_FRAME (16 MiB) and 3 body bytes.

    The handler waits in next(16 MiB). For 2 s after the bytes arrived, the server must
    hold about what it received (a receive block per connection), not what the clients
    claim (16 x 16 MiB). Regression test: next(n) used to reserve all n bytes up front
    (257 MiB here); fixed in b5eb70f.
    """
    clients = 16
    bound = 32 * MiB
    with LiveServer(server_on_request, read_timeout=5) as srv:
        before = srv.stats()
        trim_heap()
        base = rss_bytes()
        socks = [connect(srv.addr) for _ in range(clients)]
        try:
            for s in socks:
                s.sendall(struct.pack(">I", MAX_FRAME) + b"abc")
            assert wait_for(
                lambda: srv.stats().bytes_received - before.bytes_received == clients * 7, 5
            )
            with PeakRss(interval=0.02) as peak:
                exceeded = wait_for(lambda: rss_bytes() - base > bound, 2.0, interval=0.02)
        finally:
            for s in socks:
                s.close()
    held = peak.peak - base
    record("rpc-length-claims", {"clients": clients, "rss_growth_while_held_mib": mib(held)})
    assert not exceeded, f"{clients} clients that sent 7 bytes each pin {mib(held)} MiB"
