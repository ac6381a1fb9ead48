"""Slowloris: many clients trickling one byte at a time are closed by the read timeout."""

from __future__ import annotations

import logging
import selectors
import threading
import time

import pytest

from ._harness import (
    BLOCKS_SETTLE,
    Case,
    LiveServer,
    LogCapture,
    connect,
    frame,
    frame_echo,
    wait_for,
)

CLIENTS = 200
READ_TIMEOUT = 1.0
TRICKLE = 0.1  # seconds between two bytes of one client
RSS_SLACK = 10 << 20  # 200 thread stacks and client sockets; pooled blocks are not counted


def trickle(addr: object, clients: int, message: bytes, deadline: float) -> dict[int, float]:
    """``clients`` sockets each sending ``message`` one byte per TRICKLE seconds.

    Returns, per client, the seconds after the start at which the server closed it.
    """
    socks = [connect(addr) for _ in range(clients)]
    start = time.monotonic()
    sent = [0] * clients
    closed_after: dict[int, float] = {}
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    next_send = start
    try:
        while len(closed_after) < clients and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_send:
                next_send = now + TRICKLE
                for i, s in enumerate(socks):
                    if i in closed_after or sent[i] >= len(message):
                        continue
                    try:
                        sent[i] += s.send(message[sent[i] : sent[i] + 1])
                    except OSError:  # EPIPE / ECONNRESET: the server closed it
                        closed_after[i] = now - start
                        sel.unregister(s)
            for key, _ in sel.select(max(next_send - time.monotonic(), 0.0)):
                i = key.data
                try:
                    data = socks[i].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                assert not data, f"client {i} got a reply to an incomplete frame"
                closed_after[i] = time.monotonic() - start
                sel.unregister(socks[i])
    finally:
        sel.close()
        for s in socks:
            s.close()
    assert max(sent) < len(message)
    return closed_after


@pytest.mark.timeout(90)
def test_slowloris_clients_closed_by_read_timeout(netpoll_log: LogCapture) -> None:
    message = frame(b"s" * 4096)  # 4100 bytes at 10 bytes/s: never completes
    with (
        LiveServer(frame_echo, read_timeout=READ_TIMEOUT) as srv,
        # warm-up: the case itself once, so that thread and table growth predate the
        # baseline; the heap still grows by a few thousand blocks on the second run
        Case(
            "slowloris",
            srv,
            warm_up=lambda: trickle(srv.addr, CLIENTS, message, time.monotonic() + 8),
            block_slack=4000,
        ) as case,
    ):
        closed_after = trickle(srv.addr, CLIENTS, message, time.monotonic() + READ_TIMEOUT * 8)
        case.finish()
        by_timeout = case.delta("closed_by_read_timeout")
        exceptions = case.delta("handler_exceptions")
    case.record(
        clients=CLIENTS,
        read_timeout_s=READ_TIMEOUT,
        closed_by_read_timeout=by_timeout,
        first_close_s=round(min(closed_after.values(), default=-1), 2),
        last_close_s=round(max(closed_after.values(), default=-1), 2),
    )

    assert len(closed_after) == CLIENTS, f"{CLIENTS - len(closed_after)} clients never closed"
    # next(4) waits for the trickled header (0.3 s), then next(4096) one read timeout
    assert min(closed_after.values()) >= READ_TIMEOUT * 0.9
    assert max(closed_after.values()) <= READ_TIMEOUT * 4
    assert by_timeout == CLIENTS
    assert exceptions == 0
    case.check(RSS_SLACK)
    assert not netpoll_log.at_least(logging.WARNING), netpoll_log.describe()
    # Handlers that waited ran on slow-pool threads, which stay parked until idle for
    # IDLE_EXIT (10 s); a thread that is never released keeps the count up for good.
    assert wait_for(lambda: threading.active_count() < 50, BLOCKS_SETTLE), (
        f"{threading.active_count()} threads: those of blocked handlers were not released"
    )
