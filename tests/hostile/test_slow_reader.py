"""A reader that never reads while the server writes megabytes: the write timeout closes it."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

import netpoll

from ._harness import Case, LiveServer, LogCapture, MiB, connect, frame, mib, wait_for

READERS = 4
REQUESTED = 256 * MiB  # per reader: far more than socket buffers hold
WRITE_TIMEOUT = 0.5
CHUNK = bytes(MiB)
PEAK_SLACK = 24 << 20  # peak RSS growth allowed while 4 x 256 MiB are being pushed
RSS_SLACK = 8 << 20


def streaming_handler(ctx: Any, conn: netpoll.Connection) -> None:
    """Echo frames; a frame b"STREAM<n>" is answered with n bytes in 1 MiB flushes."""
    hdr = conn.next(4)
    body = conn.next(int.from_bytes(hdr, "big"))
    if body[:6] == b"STREAM":
        total = int(bytes(body[6:]))
        conn.release()
        for _ in range(total // len(CHUNK)):
            conn.write_binary(CHUNK)
            conn.flush()  # raises WriteTimeoutError once the peer stops taking data
        return
    conn.write_binary(hdr)
    conn.write_binary(body)
    conn.flush()
    conn.release()


@pytest.mark.timeout(60)
def test_reader_that_never_reads_is_closed_by_write_timeout(netpoll_log: LogCapture) -> None:
    with (
        LiveServer(streaming_handler, write_timeout=WRITE_TIMEOUT) as srv,
        Case("write-timeout", srv) as case,
    ):
        readers = [connect(srv.addr) for _ in range(READERS)]
        t0 = time.monotonic()
        for s in readers:
            s.sendall(frame(b"STREAM%d" % REQUESTED))
        closed = wait_for(lambda: case.delta("closed_by_write_timeout") >= READERS, 10)
        closed_within = time.monotonic() - t0
        sent = case.delta("bytes_sent")
        for s in readers:
            s.close()
        case.finish()
        by_timeout = case.delta("closed_by_write_timeout")
        exceptions = case.delta("handler_exceptions")
    peak_growth = case.peak_rss - case.before.rss
    case.record(
        readers=READERS,
        requested_mib_each=REQUESTED // MiB,
        write_timeout_s=WRITE_TIMEOUT,
        all_closed_within_s=round(closed_within, 2),
        closed_by_write_timeout=by_timeout,
        server_bytes_sent_mib=mib(sent),
        rss_peak_growth_mib=mib(peak_growth),
    )

    assert closed, f"only {case.delta('closed_by_write_timeout')} of {READERS} timed out"
    assert by_timeout == READERS
    assert closed_within <= WRITE_TIMEOUT * 6
    assert exceptions == 0  # a write timeout is not a handler bug
    assert sent < READERS * 64 * MiB, "the server claims to have sent more than sockets hold"
    assert peak_growth <= PEAK_SLACK, f"RSS peaked {mib(peak_growth)} MiB above the baseline"
    case.check(RSS_SLACK)
    assert not netpoll_log.at_least(logging.WARNING), netpoll_log.describe()
