"""The poller monitor's verdict on a stuck leader: blocked, computing, or preempted.

The scheduler counters (``/proc/self/task/TID/schedstat``), the process's CPU time, the
machine's CPU pressure and the clock are replaced by scripted values, so that each
verdict is decided by its inputs alone: a blocked leader offloads the poller and marks
the connection; a computing one marks it without offloading; a preempted one (waiting
for a core, or asleep on the GIL while the process or the machine is short of CPU) only
gets a follower promoted. These are internals of the interpreted module (the compiled
one binds its helpers at build time), hence ``pure_only``; the behaviour they produce is
tested on both builds in ``tests/hostile/test_preemption.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from netpoll._poll import _poller

pytestmark = pytest.mark.pure_only

INTERVAL = 0.02  # seconds between the scripted looks
MS = 1_000_000  # ns


class Owner:
    def __init__(self) -> None:
        self.marked = 0

    def suspect_slow(self) -> None:
        pass

    def mark_slow(self) -> None:
        self.marked += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 1.0

    def monotonic(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu


def stuck_poller(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Owner, list[int]]:
    """A poller whose leader (tid 4242) is inside one batch, handling fd 7."""
    p = _poller.Poller(0)
    owner = Owner()
    promoted: list[int] = []
    monkeypatch.setattr(p, "_promote_locked", lambda: promoted.append(1))
    p._leader_ident = 1
    p._leader_tid = 4242
    p._busy_epoch = p._epoch
    p._tick = 5
    p._running = 7
    p._owners[7] = owner
    return p, owner, promoted


def verdict(
    monkeypatch: pytest.MonkeyPatch,
    *,
    cpu_ms: float,
    wait_ms: float,
    process_ms: float = 0.0,
    pressure_ms: float | None = 0.0,
    counters: bool = True,
) -> tuple[bool, int, int]:
    """Two looks 20 ms apart at a leader stuck in one batch, the leader's counters moving
    by ``cpu_ms`` on a core and ``wait_ms`` waiting for one, the process's CPU time by
    ``process_ms``, the machine's CPU pressure by ``pressure_ms``. Returns (offloading,
    times the connection was marked slow, promotions)."""
    p, owner, promoted = stuck_poller(monkeypatch)
    clock = Clock()
    sched = [(10 * MS, 20 * MS), (10 * MS + int(cpu_ms * MS), 20 * MS + int(wait_ms * MS))]
    pressure = [5.0, 5.0 + (pressure_ms or 0.0) / 1000]
    monkeypatch.setattr(_poller, "time", clock)
    monkeypatch.setattr(_poller, "_sched_sample", lambda tid: sched.pop(0) if counters else None)
    monkeypatch.setattr(
        _poller, "_cpu_pressure", lambda: None if pressure_ms is None else pressure.pop(0)
    )
    try:
        tick = p._monitor_check(-1)  # first look: a batch it has not seen before
        assert not promoted
        clock.now += INTERVAL
        clock.cpu += process_ms / 1000
        p._monitor_check(tick)  # second look: the same batch, so the leader is stuck
        return p.offload, owner.marked, len(promoted)
    finally:
        p.backend.close()


def test_a_leader_asleep_in_an_idle_process_is_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert verdict(monkeypatch, cpu_ms=0.1, wait_ms=0.1) == (True, 1, 1)


def test_a_leader_on_a_core_is_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert verdict(monkeypatch, cpu_ms=18, wait_ms=1) == (False, 1, 1)


def test_a_leader_waiting_for_a_core_is_preempted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert verdict(monkeypatch, cpu_ms=2, wait_ms=17) == (False, 0, 1)


def test_asleep_while_the_process_is_busy_is_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader sleeps (on the GIL) while other threads of the process compute."""
    assert verdict(monkeypatch, cpu_ms=0, wait_ms=0, process_ms=15) == (False, 0, 1)


def test_asleep_while_the_machine_is_short_of_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GIL's holder waits for a core: the process looks idle, the machine does not."""
    assert verdict(monkeypatch, cpu_ms=0, wait_ms=0, pressure_ms=15) == (False, 0, 1)


def test_without_counters_a_stuck_leader_counts_as_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert verdict(monkeypatch, cpu_ms=0, wait_ms=17, counters=False, pressure_ms=None) == (
        True,
        1,
        1,
    )


def test_contention_is_reported_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """A look that finds the process busy sets ``contended`` for CONTENDED_SPAN."""
    p = _poller.Poller(0)
    clock = Clock()
    monkeypatch.setattr(_poller, "time", clock)
    monkeypatch.setattr(_poller, "_cpu_pressure", lambda: None)
    try:
        p._monitor_check(-1)
        assert not p.contended
        clock.now += INTERVAL
        clock.cpu += 0.015  # 75% of a core over the interval
        p._monitor_check(-1)
        assert p.contended
        clock.now += _poller.CONTENDED_SPAN + INTERVAL  # an idle process since
        p._monitor_check(-1)
        assert not p.contended
    finally:
        p.backend.close()
