"""Handlers that block briefly in ways the library cannot see, on many connections at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import netpoll

from ._harness import (
    MAX_STALL,
    Canaries,
    LiveServer,
    connect,
    frame,
    record,
    recv_exact,
    run_threads,
)

CLIENTS = 30
REQUESTS = 60  # per client, pipelined
PACE = 0.005  # seconds between two requests of one client
WORK = 0.002  # seconds each request blocks its handler (a wait the library cannot see)

_work = threading.Event()  # never set: the handler's work is a bounded wait on it


def working_handler(ctx: Any, conn: netpoll.Connection) -> None:
    """Frame echo; frames starting with b"W" first block WORK seconds (like a quick call to
    a database or a time.sleep: the GIL is released, the library is not told)."""
    hdr = conn.next(4)
    body = conn.next(int.from_bytes(hdr, "big"))
    if body[:1] == b"W":
        _work.wait(WORK)
    conn.write_binary(hdr)
    conn.write_binary(body)
    conn.flush()
    conn.release()


@pytest.mark.timeout(60)
def test_brief_invisible_blocking_on_many_connections_does_not_stall_others() -> None:
    """30 clients pipeline 60 requests each, 5 ms apart; each request blocks its handler
    2 ms. That is 1.2 s of waiting per second, spread over 30 connections: threads could
    overlap it (the GIL is free while waiting), a single leader cannot.
    """
    with LiveServer(working_handler) as srv:
        canaries = Canaries(srv.addr).start()

        def client(i: int) -> None:
            s = connect(srv.addr, timeout=20)
            msgs = [frame(b"W%d.%d:" % (i, k) + b"w" * 200) for k in range(REQUESTS)]

            def send() -> None:
                pace = threading.Event()
                for m in msgs:
                    s.sendall(m)
                    pace.wait(PACE)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            try:
                for m in msgs:
                    assert recv_exact(s, len(m)) == m
            finally:
                sender.join(20)
                s.close()

        t0 = time.monotonic()
        errors = run_threads(client, CLIENTS, timeout=45)
        load_s = time.monotonic() - t0
        report = canaries.stop()
    record(
        "invisible-blocking",
        {
            "clients": CLIENTS,
            "requests_each": REQUESTS,
            "work_ms": WORK * 1000,
            "duration_s": round(load_s, 2),
            "serial_work_s": round(CLIENTS * REQUESTS * WORK, 2),
            **report.figures(),
        },
    )
    assert not errors, errors[:3]
    report.check(MAX_STALL)
