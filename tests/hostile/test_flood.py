"""Input flood into a slow handler: read_buffer_limit bounds what a connection buffers."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import netpoll

from ._harness import Case, LiveServer, LogCapture, MiB, connect, frame_echo, mib, run_threads

LIMIT = 1 * MiB
# One receive block: netpoll's default buffer_size (64 KiB), grown up to 4 times while
# receives fill it. Pushback starts at the limit, so one receive can pass it.
BLOCK = 4 * 64 * 1024
FLOODERS = 2
TOTAL = 24 * MiB  # per flooder
CHUNK = 64 * 1024  # what the handler consumes per turn
PACE = 0.002  # seconds the handler "works" per chunk: ~30 MiB/s at most
PEAK_SLACK = 16 << 20
RSS_SLACK = 8 << 20
MAGIC = b"FLOD"


class Flood:
    """Server-side bookkeeping of one flooding connection."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.consumed = 0
        self.crc = 0
        self.max_buffered = 0
        self.done = threading.Event()


floods: list[Flood] = []
_work = threading.Event()  # never set: the handler's "work" is a bounded wait on it


def _open_flood(ctx: dict[str, Any], conn: netpoll.Connection) -> Flood | None:
    """The connection's Flood, reading MAGIC + total first; None for an echo connection
    (its frame is echoed) or while the header is incomplete."""
    state: Flood | None = ctx.get("flood")
    if state is not None:
        return state
    if len(conn) < 4:
        return None  # called again when more arrives
    if conn.peek(4).tobytes() != MAGIC:
        frame_echo(ctx, conn)
        return None
    if len(conn) < 12:
        return None
    conn.skip(4)
    (total,) = struct.unpack(">Q", conn.next(8))
    conn.release()
    state = ctx["flood"] = Flood(total)
    floods.append(state)
    return state


def buffered_consumer(ctx: dict[str, Any], conn: netpoll.Connection) -> None:
    """Consume CHUNK bytes of what is buffered per PACE seconds; return when it is empty
    (the loop calls the handler again when more arrives)."""
    state = _open_flood(ctx, conn)
    if state is None:
        return
    while len(conn):
        buffered = len(conn)
        state.max_buffered = max(state.max_buffered, buffered)
        k = min(CHUNK, buffered)
        state.crc = zlib.crc32(conn.next(k), state.crc)
        state.consumed += k
        conn.release()
        _work.wait(PACE)
    if state.consumed >= state.total:
        state.done.set()


def streaming_consumer(ctx: dict[str, Any], conn: netpoll.Connection) -> None:
    """One long call: next(CHUNK) (waiting when fewer are buffered), then PACE of "work".

    The work is a wait the library cannot see: the monitor hands the poller role to
    another thread, which keeps receiving until read_buffer_limit stops it."""
    state = _open_flood(ctx, conn)
    if state is None:
        return
    while state.consumed < state.total:
        state.max_buffered = max(state.max_buffered, len(conn))
        k = min(CHUNK, state.total - state.consumed)
        state.crc = zlib.crc32(conn.next(k), state.crc)
        state.consumed += k
        conn.release()
        _work.wait(PACE)
    state.done.set()


CONSUMERS = {
    # handlers inline on the poller (the default runner), the consumer waiting in next(n)
    "inline-next": (streaming_consumer, False),
    # handlers on a thread pool (a custom runner), consuming only what is buffered
    "pool-buffered": (buffered_consumer, True),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
def test_flood_into_slow_handler_is_bounded_and_lossless(
    netpoll_log: LogCapture, consumer: str
) -> None:
    handler, use_pool = CONSUMERS[consumer]
    floods.clear()
    payloads = [os.urandom(TOTAL) for _ in range(FLOODERS)]
    crcs = [zlib.crc32(p) for p in payloads]

    def flooder(i: int) -> None:
        s = connect(srv.addr, timeout=30)
        try:
            s.sendall(MAGIC + struct.pack(">Q", TOTAL))
            s.sendall(payloads[i])  # full speed: only TCP pushback slows it down
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""  # the server closes once it consumed everything
        finally:
            s.close()

    pool = ThreadPoolExecutor(8, thread_name_prefix="flood-runner")
    if use_pool:
        netpoll.set_runner(lambda ctx, task: pool.submit(task))
    try:
        with (
            LiveServer(handler, on_connect=lambda ctx, conn: {}, read_buffer_limit=LIMIT) as srv,
            Case(f"flood-{consumer}", srv) as case,
        ):
            errors = run_threads(flooder, FLOODERS, timeout=45)
            all_done = all(f.done.wait(10) for f in floods)
            case.finish()
    finally:
        netpoll.set_runner(None)
        pool.shutdown(wait=True)
    peak_growth = case.peak_rss - case.before.rss
    case.record(
        flooders=FLOODERS,
        mib_each=TOTAL // MiB,
        read_buffer_limit_mib=LIMIT / MiB,
        max_buffered_kib=[f.max_buffered // 1024 for f in floods],
        consumer_mib_per_s=round(FLOODERS * TOTAL / MiB / case.figures["duration_s"], 1),
        rss_peak_growth_mib=mib(peak_growth),
    )

    assert not errors, errors[:3]
    assert len(floods) == FLOODERS and all_done
    for f in floods:
        assert f.max_buffered <= LIMIT + BLOCK, f"buffered {f.max_buffered} > limit + one block"
        assert f.max_buffered >= LIMIT // 2, "the flood never filled the buffer: not a flood"
    assert sorted((f.consumed, f.crc) for f in floods) == sorted((TOTAL, c) for c in crcs)
    assert peak_growth <= PEAK_SLACK, f"RSS peaked {mib(peak_growth)} MiB above the baseline"
    case.check(RSS_SLACK)
    assert not netpoll_log.at_least(logging.WARNING), netpoll_log.describe()
