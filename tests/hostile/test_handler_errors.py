"""Handler exceptions on every request of some connections: those close, the rest carry on."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import netpoll

from ._harness import (
    Case,
    LiveServer,
    LogCapture,
    connect,
    frame,
    pattern,
    recv_exact,
    recv_until_closed,
    run_threads,
    wait_for,
)

BAD = 60  # connections whose every request raises
GOOD = 60  # connections interleaved with them, each doing ROUNDS round trips
ROUNDS = 5
RSS_SLACK = 8 << 20


class CustomError(Exception):
    pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails too")


ERRORS: list[type[Exception]] = [
    RuntimeError,
    ValueError,
    KeyError,
    ZeroDivisionError,
    CustomError,
    netpoll.NetpollError,
]


def raising_handler(ctx: Any, conn: netpoll.Connection) -> None:
    """Echo frames; a frame b"BOOM<k>..." raises ERRORS[k], after writing (not flushing)
    part of a reply when the payload says b"W"."""
    hdr = conn.next(4)
    body = conn.next(int.from_bytes(hdr, "big"))
    if body[:4] == b"BOOM":
        kind = body[4] - 48
        if body[5:6] == b"W":
            conn.write_binary(b"partial reply that must never be flushed")
        if kind == len(ERRORS):
            raise Unprintable()
        raise ERRORS[kind](f"request {bytes(body[:8])!r} fails")
    conn.write_binary(hdr)
    conn.write_binary(body)
    conn.flush()
    conn.release()


@pytest.mark.timeout(60)
def test_handler_exceptions_close_only_their_connections(netpoll_log: LogCapture) -> None:
    outcomes: dict[int, tuple[bytes, str]] = {}
    good_ok: dict[int, int] = {}

    def client(i: int) -> None:
        if i % 2:  # a bad connection: three requests pipelined, each would raise
            k = (i // 2) % (len(ERRORS) + 1)
            w = b"W" if i % 4 == 1 else b"-"
            s = connect(srv.addr)
            try:
                s.sendall(b"".join(frame(b"BOOM%d%s" % (k, w) + b"x" * n) for n in (10, 20, 30)))
                outcomes[i] = recv_until_closed(s, limit=1 << 16)
            finally:
                s.close()
        else:
            with connect(srv.addr) as s:
                for r in range(ROUNDS):
                    msg = frame(pattern(i, r, 100 + 997 * r))
                    s.sendall(msg)
                    assert recv_exact(s, len(msg)) == msg
                    good_ok[i] = good_ok.get(i, 0) + 1

    def warm_up() -> None:  # the same load once: caches and tables predate the baseline
        assert not run_threads(client, BAD + GOOD, timeout=20)
        outcomes.clear()
        good_ok.clear()
        netpoll_log.records.clear()

    with (
        LiveServer(raising_handler) as srv,
        Case("handler-exceptions", srv, warm_up=warm_up) as case,
    ):
        errors = run_threads(client, BAD + GOOD, timeout=40)
        case.finish()
        exceptions = case.delta("handler_exceptions")
    logged = [r for r in netpoll_log.at_least(logging.ERROR) if r.exc]
    case.record(
        bad_connections=BAD,
        good_connections=GOOD,
        handler_exceptions=exceptions,
        error_records_with_traceback=len(logged),
        bad_closes={how: sum(o[1] == how for o in outcomes.values()) for how in ("eof", "reset")},
    )

    assert not errors, errors[:3]
    assert len(outcomes) == BAD
    for i, (data, how) in outcomes.items():
        assert how in ("eof", "reset"), f"bad connection {i} was not closed ({how})"
        assert data == b"", f"bad connection {i} received {data[:50]!r}"
    assert good_ok == dict.fromkeys(range(0, BAD + GOOD, 2), ROUNDS)
    assert exceptions == BAD, "each bad connection raises once, then it is closed"
    assert len(logged) == BAD, "one ERROR record with a traceback per handler exception"
    assert len(netpoll_log.at_least(logging.INFO)) <= BAD + 5
    case.check(RSS_SLACK)


class HandlerAbort(BaseException):
    """A BaseException that is not an Exception (as SystemExit and KeyboardInterrupt are)."""


def base_exception_handler(ctx: Any, conn: netpoll.Connection) -> None:
    """Answers b"PING" with b"PONG"; anything else raises a BaseException."""
    if bytes(conn.next(4)) == b"PING":
        conn.write_binary(b"PONG")
        conn.flush()
        conn.release()
        return
    raise HandlerAbort("not an Exception")


@pytest.mark.timeout(30)
def test_base_exception_from_handler_still_closes_the_connection() -> None:
    """Regression test: a BaseException that is not an Exception used to escape into the
    poller thread, leaving the connection busy forever (never closed, its descriptor
    leaked, shutdown() timing out); fixed in b5eb70f."""
    srv = LiveServer(base_exception_handler).start()
    try:
        s = connect(srv.addr, timeout=1.5)
        s.sendall(b"ABCD")
        _, how = recv_until_closed(s)
        s.close()
        gone = wait_for(lambda: srv.stats().connections_open == 0, 1.5)
        # The server itself keeps serving: a full round trip, not just a connect (which
        # the kernel's backlog completes without the server accepting anything).
        alive = connect(srv.addr, timeout=5.0)
        try:
            alive.sendall(b"PING")
            answer = recv_exact(alive, 4)
        finally:
            alive.close()
    finally:
        try:
            srv.stop(timeout=1.5)
            stopped = True
        except TimeoutError:
            stopped = False
    assert how in ("eof", "reset"), f"the client was left waiting ({how})"
    assert gone, "the server still counts the connection as open"
    assert answer == b"PONG", "the server no longer answers requests"
    assert stopped, "shutdown() timed out on the connection"
