"""Churn: connect / exchange / close cycles at full speed; no descriptor or memory growth.

CI runs CHURN_CYCLES (100,000 by default, ~8 s here; NETPOLL_CHURN_CYCLES overrides it).
``python tools/soak.py churn`` runs longer versions (a million cycles by default).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from ._harness import Case, ServerProcess, run_threads

CHURN_CYCLES = int(os.environ.get("NETPOLL_CHURN_CYCLES", "100000"))
WARM_UP = 4000
THREADS = 4
RSS_SLACK = 8 << 20


def churn(addr: tuple[str, int], cycles: int, threads: int, timeout: float) -> list[BaseException]:
    """``cycles`` connect / 64-byte exchange / close cycles spread over ``threads``."""

    def worker(t: int) -> None:
        for k in range(cycles // threads):
            msg = b"%08d:%08d:" % (t, k) + b"c" * 46
            with socket.create_connection(addr, timeout=10) as s:
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        raise EOFError(f"cycle {t}/{k}: EOF after {len(got)} bytes")
                    got += chunk
                if got != msg:
                    raise AssertionError(f"cycle {t}/{k}: echo differs")

    return run_threads(worker, threads, timeout)


@pytest.mark.timeout(120)
def test_churn_leaks_no_descriptors_or_memory(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "server.log", handler="echo") as srv:
        with Case(
            "churn",
            srv,
            warm_up=lambda: churn(srv.addr, WARM_UP, THREADS, 60),
        ) as case:
            t0 = time.monotonic()
            errors = churn(srv.addr, CHURN_CYCLES, THREADS, timeout=90)
            churn_s = time.monotonic() - t0
            case.finish()
            accepted = case.delta("connections_accepted")
            closed = case.delta("connections_closed")
        log = srv.log_lines()
    case.record(
        cycles=CHURN_CYCLES,
        warm_up_cycles=WARM_UP,
        client_threads=THREADS,
        churn_s=round(churn_s, 2),
        cycles_per_s=round(CHURN_CYCLES / churn_s),
        accepted=accepted,
        closed=closed,
        log_lines=len(log),
    )

    assert not errors, errors[:3]
    assert accepted == CHURN_CYCLES
    assert closed == CHURN_CYCLES
    assert not log, log[:3]
    case.check(RSS_SLACK)
