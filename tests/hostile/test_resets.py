"""Resets: clients that send part of a frame (or all of it) and then reset the connection."""

from __future__ import annotations

import logging
import random

import pytest

from ._harness import (
    Case,
    LiveServer,
    LogCapture,
    connect,
    frame,
    frame_echo,
    recv_exact,
    reset_close,
    run_threads,
    wait_for,
)

CYCLES = 3000
WARM_UP = CYCLES // 2
THREADS = 4
SEED = 20240611
RSS_SLACK = 8 << 20  # allocator drift; pooled blocks are not counted
# Where a client resets: right after connecting, inside the header, inside the body,
# after a whole frame (while the server may be writing), or in the middle of a big reply.
POINTS = ("connect", "header", "body", "frame", "mid-reply")


def one_reset(addr: object, rng: random.Random, counts: dict[str, int]) -> None:
    point = rng.choice(POINTS)
    counts[point] += 1
    s = connect(addr)
    try:
        if point == "header":
            s.sendall(rng.randbytes(rng.randint(1, 3)))
        elif point == "body":
            n = rng.randint(2, 200_000)
            s.sendall(frame(rng.randbytes(n))[: 4 + rng.randrange(1, n)])
        elif point == "frame":
            s.sendall(frame(rng.randbytes(rng.randint(0, 20_000))))
        elif point == "mid-reply":
            n = rng.randint(200_000, 600_000)
            s.sendall(frame(bytes(n)))
            recv_exact(s, rng.randint(1, n // 2))
    finally:
        reset_close(s)


@pytest.mark.timeout(60)
def test_resets_at_random_points_leak_nothing(netpoll_log: LogCapture) -> None:
    counts = [dict.fromkeys(POINTS, 0) for _ in range(THREADS)]

    def client(t: int, cycles: int = CYCLES // THREADS) -> None:
        rng = random.Random(SEED + t * cycles)
        for _ in range(cycles):
            one_reset(srv.addr, rng, counts[t])

    def all_accepted(since: int, count: int) -> bool:
        return srv.stats().connections_accepted - since >= count

    def warm_up() -> None:
        before = srv.stats()
        assert not run_threads(lambda t: client(t, WARM_UP // THREADS), THREADS, timeout=20)
        # A client's reset does not take its connection out of the accept queue: the
        # server may still have warm-up connections to accept (seen: 14 of 1,500) and to
        # close. Let it finish, so they are not counted in the measured window.
        assert wait_for(lambda: all_accepted(before.connections_accepted, WARM_UP), 10)
        assert wait_for(lambda: srv.stats().connections_open <= before.connections_open, 10)
        for c in counts:
            c.update(dict.fromkeys(POINTS, 0))

    with LiveServer(frame_echo) as srv, Case("resets", srv, warm_up=warm_up) as case:
        errors = run_threads(client, THREADS, timeout=45)
        wait_for(lambda: all_accepted(int(case.stats0["connections_accepted"]), CYCLES), 10)
        case.finish()
        accepted = case.delta("connections_accepted")
        closed = case.delta("connections_closed")
        exceptions = case.delta("handler_exceptions")
    per_point = {p: sum(c[p] for c in counts) for p in POINTS}
    case.record(
        cycles=CYCLES,
        warm_up_cycles=WARM_UP,
        seed=SEED,
        accepted=accepted,
        closed=closed,
        points=per_point,
    )

    assert not errors, errors[:3]
    assert accepted == CYCLES, f"{accepted} of {CYCLES} reset connections were accepted"
    assert closed == CYCLES
    assert exceptions == 0
    case.check(RSS_SLACK)
    assert not netpoll_log.at_least(logging.WARNING), netpoll_log.describe()
