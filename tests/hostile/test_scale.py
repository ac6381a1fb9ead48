"""10,000 concurrent connections, each doing one echo round trip, all held open at once."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._harness import Case, ServerProcess, frame, mib, wait_for

CONNECTIONS = 10_000
WINDOW = 500  # connections with a round trip in flight at once
BOUND = 30.0  # seconds for all of them to connect and get their echo
RSS_SLACK = 16 << 20
IDLE_COST = 16 * 1024  # bytes of server RSS an idle connection may cost


@pytest.fixture
def nofile_raised() -> Iterator[int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONNECTIONS + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"hard RLIMIT_NOFILE is {hard}; {CONNECTIONS} connections need {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_and_echo(
    addr: tuple[str, int], n: int, deadline: float
) -> tuple[list[socket.socket], int]:
    """Open ``n`` connections, each sending one frame; keep them all open.

    At most WINDOW round trips are in flight at once (a listen backlog's worth of SYNs at
    a time). Returns the sockets and how many got their exact echo.
    """
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    got: dict[int, bytearray] = {}
    want: dict[int, bytes] = {}
    echoed = 0
    try:
        while (len(socks) < n or sel.get_map()) and time.monotonic() < deadline:
            while len(socks) < n and len(sel.get_map()) < WINDOW:
                i = len(socks)
                s = socket.create_connection(addr, timeout=10)
                socks.append(s)
                s.setblocking(False)
                want[i] = frame(b"conn %d" % i)
                got[i] = bytearray()
                s.send(want[i])  # a few bytes: always fits the empty send buffer
                sel.register(s, selectors.EVENT_READ, i)
            for key, _ in sel.select(1.0):
                i = key.data
                chunk = socks[i].recv(4096)
                got[i] += chunk
                if not chunk or len(got[i]) >= len(want[i]):
                    sel.unregister(socks[i])
                    echoed += bytes(got.pop(i)) == want.pop(i)
    finally:
        sel.close()
    return socks, echoed


@pytest.mark.timeout(90)
def test_ten_thousand_concurrent_connections(tmp_path: Path, nofile_raised: int) -> None:
    def warm_up() -> None:  # the same 10,000, so the baseline includes the allocator's arenas
        socks, echoed = open_and_echo(srv.addr, CONNECTIONS, time.monotonic() + BOUND)
        for s in socks:
            s.close()
        assert echoed == CONNECTIONS

    with (
        ServerProcess(tmp_path / "server.log", handler="frame", raise_nofile=True) as srv,
        Case("10k-concurrent", srv, warm_up=warm_up) as case,
    ):
        assert srv.info["nofile"][0] >= CONNECTIONS + 100, srv.info
        t0 = time.monotonic()
        socks: list[socket.socket] = []
        try:
            socks, echoed = open_and_echo(srv.addr, CONNECTIONS, t0 + BOUND)
            served_s = time.monotonic() - t0
            all_open = wait_for(
                lambda: srv.stats()["connections_open"] == CONNECTIONS + case.canaries.count, 10
            )
            at_peak = srv.usage()
            # Each connection kept its drained receive block; the poller's sweep (every
            # second) hands back those of quiet connections: idle ones then cost little.
            idle_bound = case.before.rss + CONNECTIONS * IDLE_COST
            t_idle = time.monotonic()
            idle = wait_for(lambda: srv.usage().rss <= idle_bound, 5, interval=0.25)
            idle_s = time.monotonic() - t_idle
            held = srv.usage()
        finally:
            for s in socks:
                s.close()
        case.finish(timeout=30)
    case.record(
        connections=CONNECTIONS,
        echoed=echoed,
        served_s=round(served_s, 2),
        server_fds_with_all_open=at_peak.fds,
        server_rss_all_open_mib=at_peak.rss_mib,
        server_rss_all_idle_mib=held.rss_mib,
        idle_after_s=round(idle_s, 2),
        rss_per_idle_connection_kib=round((held.rss - case.before.rss) / CONNECTIONS / 1024, 1),
        log_lines=len(srv.log_lines()),
    )

    assert len(socks) == CONNECTIONS
    assert echoed == CONNECTIONS, f"only {echoed} of {CONNECTIONS} echoes came back intact"
    assert served_s <= BOUND
    assert all_open, "the server did not hold all connections open at once"
    assert at_peak.fds >= CONNECTIONS
    assert idle, f"{CONNECTIONS} idle connections hold {mib(held.rss - case.before.rss)} MiB"
    assert not srv.log_lines(("WARNING", "ERROR", "CRITICAL"))
    case.check(RSS_SLACK)
