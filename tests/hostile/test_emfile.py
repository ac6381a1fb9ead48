"""Descriptor exhaustion: a server at its RLIMIT_NOFILE pauses accepting without spinning,
keeps serving its connections, logs little, and resumes by itself once descriptors free up."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from ._harness import Case, ServerProcess, connect, cpu_seconds, frame, recv_exact

NOFILE = 64
CPU_WINDOW = 1.0  # seconds over which the exhausted server's CPU time is measured
MAX_CPU_RATE = 0.2  # CPU seconds per second while exhausted
MAX_LOG_LINES = 5
RESUME_BOUND = 3.0  # seconds from freeing descriptors to a new client's echo
RSS_SLACK = 4 << 20


def accepted(s: socket.socket, timeout: float) -> bool:
    """One round trip on ``s``: True if the server echoed (so it accepted the connection)."""
    s.settimeout(timeout)
    try:
        s.sendall(frame(b"ping"))
        return recv_exact(s, 8) == frame(b"ping")
    except TimeoutError:
        return False


@pytest.mark.timeout(60)
def test_descriptor_exhaustion_pauses_accepting_without_spinning(tmp_path: Path) -> None:
    hostile: list[socket.socket] = []
    srv = ServerProcess(tmp_path / "server.log", handler="frame", nofile=NOFILE)
    # Canaries pace their round trips so that the CPU they cost the server stays small.

    def warm_up() -> None:  # as many connections as fit, without exhausting
        socks = [connect(srv.addr) for _ in range(NOFILE // 2)]
        try:
            assert all(accepted(s, 5) for s in socks)
        finally:
            for s in socks:
                s.close()

    with srv, Case("emfile", srv, canaries=2, pace=0.05, warm_up=warm_up) as case:
        try:
            # Open connections until one is not accepted: the server is out of descriptors.
            exhausted = False
            for _ in range(NOFILE * 2):
                s = connect(srv.addr)
                hostile.append(s)
                if not accepted(s, 0.5):
                    exhausted = True
                    break
            paused = exhausted and srv.stats()["accept_pauses"] > 0
            lines_before = len(srv.log_lines())
            cpu0, t0 = cpu_seconds(srv.pid), time.monotonic()
            threading.Event().wait(CPU_WINDOW)  # the measuring interval, not a synchronisation
            cpu1, t1 = cpu_seconds(srv.pid), time.monotonic()
            cpu_rate = (cpu1 - cpu0) / (t1 - t0)
            log_lines = srv.log_lines()
            pauses = srv.stats()["accept_pauses"]
            stalled_canaries = case.canaries.worst_stall
        finally:
            for s in hostile:
                s.close()
        freed = time.monotonic()
        newcomer = connect(srv.addr)
        try:
            resumed = accepted(newcomer, RESUME_BOUND + 2)
            resume_s = time.monotonic() - freed
        finally:
            newcomer.close()
        case.finish()
    case.record(
        rlimit_nofile=NOFILE,
        connections_before_exhaustion=len(hostile) - 1,
        cpu_s_per_s_while_exhausted=round(cpu_rate, 3),
        log_lines=len(log_lines),
        log_lines_during_cpu_window=len(log_lines) - lines_before,
        accept_pauses=pauses,
        resume_s=round(resume_s, 2),
    )

    assert exhausted, f"{len(hostile)} connections never exhausted a {NOFILE}-descriptor server"
    assert paused, "the server's accept_pauses stayed 0 while it could not accept"
    assert cpu_rate < MAX_CPU_RATE, f"exhausted server used {cpu_rate:.2f} CPU s per s"
    assert 1 <= len(log_lines) <= MAX_LOG_LINES, log_lines
    assert all("WARNING" in ln for ln in log_lines), log_lines
    assert resumed and resume_s <= RESUME_BOUND, f"service resumed after {resume_s:.2f}s"
    assert stalled_canaries <= 1.0  # established connections kept being served
    case.check(RSS_SLACK)
