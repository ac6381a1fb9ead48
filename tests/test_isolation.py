"""The hard requirement: a handler that blocks never stalls the other connections.

One connection's handler blocks for a second, either in ``conn.next(n)`` waiting for bytes
that never come or in ``time.sleep(1)`` (here the sleep is the behaviour under test: a
blocking call the library cannot see). Meanwhile 20 other connections must each finish 100
echo round trips well within that second, also when every connection shares one poller.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import netpoll
from conftest import IO_TIMEOUT, ServeFactory, recv_exact

BLOCK_SECONDS = 1.0
BOUND = 0.8  # seconds from the blocked handler's start to the end of all round trips
CLIENTS = 20
ROUNDS = 100


class Blocker:
    """Server state: when the blocking handler started and whether it has finished."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.started_at = 0.0
        self.error: BaseException | None = None


def make_handler(mode: str, blocker: Blocker) -> Any:
    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        first = conn.peek(1)
        if bytes(first) != b"B":
            n = len(conn)  # an echo: whatever is buffered
            conn.write_binary(conn.next(n))
            conn.flush()
            conn.release()
            return
        conn.skip(1)
        conn.release()
        blocker.started_at = time.monotonic()
        blocker.started.set()
        try:
            if mode == "next":
                conn.next(100)  # the client sends nothing more until the test ends
            else:
                time.sleep(BLOCK_SECONDS)
                conn.write(b"done")
        except netpoll.ConnectionClosedError as exc:
            blocker.error = exc
        finally:
            blocker.finished.set()

    return handler


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_loops", [1, 3])
@pytest.mark.parametrize("mode", ["next", "sleep"])
def test_blocked_handler_does_not_stall_others(
    serve: ServeFactory, network: str, mode: str, num_loops: int
) -> None:
    netpoll.set_num_loops(num_loops)
    blocker = Blocker()
    srv = serve(make_handler(mode, blocker), network=network)
    others = [srv.connect() for _ in range(CLIENTS)]
    for i, c in enumerate(others):  # every connection accepted and served once
        c.sendall(b"warm%02d" % i)
        assert recv_exact(c, 6) == b"warm%02d" % i
    blocked = srv.connect()
    blocked.sendall(b"B")
    assert blocker.started.wait(IO_TIMEOUT)

    for r in range(ROUNDS):
        for i, c in enumerate(others):
            c.sendall(b"%02d:%03d;" % (i, r))
        for i, c in enumerate(others):
            assert recv_exact(c, 7) == b"%02d:%03d;" % (i, r)
    elapsed = time.monotonic() - blocker.started_at

    assert not blocker.finished.is_set(), "the handler did not stay blocked during the test"
    assert elapsed < BOUND, f"{CLIENTS}x{ROUNDS} round trips took {elapsed:.3f}s"
    if mode == "sleep":
        assert recv_exact(blocked, 4) == b"done"
        assert blocker.finished.wait(IO_TIMEOUT)
        assert blocker.error is None
    else:
        blocked.close()
        assert blocker.finished.wait(IO_TIMEOUT)
        assert isinstance(blocker.error, netpoll.PeerClosedError)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["next", "sleep"])
def test_blocked_handler_does_not_stall_new_connections(serve: ServeFactory, mode: str) -> None:
    """Accepting and serving connections that arrive after the handler blocked."""
    netpoll.set_num_loops(1)
    blocker = Blocker()
    srv = serve(make_handler(mode, blocker))
    blocked = srv.connect()
    blocked.sendall(b"B")
    assert blocker.started.wait(IO_TIMEOUT)
    for i in range(CLIENTS):
        c = srv.connect()
        for r in range(10):
            c.sendall(b"%02d:%03d;" % (i, r))
            assert recv_exact(c, 7) == b"%02d:%03d;" % (i, r)
    elapsed = time.monotonic() - blocker.started_at
    assert not blocker.finished.is_set()
    assert elapsed < BOUND, f"new connections took {elapsed:.3f}s"
    blocked.close()
    assert blocker.finished.wait(IO_TIMEOUT)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["next", "sleep"])
def test_blocked_client_handler_does_not_stall_other_dialed_connections(
    serve: ServeFactory, mode: str
) -> None:
    """The same on the client side: a dialed connection's response handler blocks."""
    netpoll.set_num_loops(1)

    def server_echo(ctx: Any, conn: netpoll.Connection) -> None:
        conn.write_binary(conn.next(len(conn)))
        conn.flush()
        conn.release()

    srv = serve(server_echo)
    blocker = Blocker()
    blocked = srv.dial()
    blocked.set_on_request(make_handler(mode, blocker))
    blocked.write(b"B")  # echoed back: the client-side handler blocks on it
    assert blocker.started.wait(IO_TIMEOUT)
    conns = [srv.dial() for _ in range(CLIENTS)]
    start = time.monotonic()
    for r in range(ROUNDS // 2):
        for i, c in enumerate(conns):
            c.write(b"%02d:%03d;" % (i, r))
        for i, c in enumerate(conns):
            assert bytes(c.next(7)) == b"%02d:%03d;" % (i, r)
            c.release()
    elapsed = time.monotonic() - blocker.started_at
    assert not blocker.finished.is_set()
    assert elapsed < BOUND, (
        f"dialed round trips took {elapsed:.3f}s (loop {time.monotonic() - start:.3f}s)"
    )
    blocked.close()
    assert blocker.finished.wait(IO_TIMEOUT)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("block", "gap"), [(1.3, 0.05), (0.004, 1.2)])
def test_invisibly_blocking_handler_moves_off_the_poller(
    serve: ServeFactory, block: float, gap: float
) -> None:
    """A handler that blocks where the library cannot see (time.sleep) runs its later
    requests on the slow pool, not on a poller thread: a long block is caught by the
    monitor, a short one by the timing of the batch it slowed down, however far apart
    the requests come."""
    netpoll.configure(poller_num=1)
    threads: list[str] = []

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = conn.next(len(conn)).tobytes()
        if data == b"slow":
            threads.append(threading.current_thread().name)
            time.sleep(block)  # invisible blocking
        conn.write_binary(data)
        conn.flush()
        conn.release()

    srv = serve(handler)
    stop = threading.Event()

    def pinger() -> None:  # other traffic keeps the poller busy all along
        p = srv.connect()
        while not stop.wait(0.005):
            p.sendall(b"ping")
            assert recv_exact(p, 4) == b"ping"
        p.close()

    ping = threading.Thread(target=pinger, daemon=True)
    ping.start()
    c = srv.connect()
    try:
        for _ in range(4):
            c.sendall(b"slow")
            assert recv_exact(c, 4) == b"slow"
            stop.wait(gap)  # never set here: it spaces the requests out
    finally:
        stop.set()
        ping.join(IO_TIMEOUT)
    assert all(name.startswith("netpoll-slow") for name in threads[2:]), threads
