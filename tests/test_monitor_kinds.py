"""The poller monitor's verdict on a stuck leader: blocked, computing, or preempted.

The leader thread's CPU clock, the process's CPU time, the machine's CPU pressure and the
wall clock are replaced by scripted values, so that each verdict is decided by its inputs
alone: a blocked leader offloads the poller and marks the connection; a computing one
marks it without offloading; a preempted one (off a core while the process keeps a core
busy, or while the machine is short of CPU) only gets a follower promoted. These are
internals of the interpreted module (the compiled one binds its helpers at build time),
hence ``pure_only``; the behaviour they produce is tested on both builds in
``tests/hostile/test_preemption.py``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from netpoll._poll import _poller

pytestmark = pytest.mark.pure_only

INTERVAL = 0.02  # seconds between the scripted looks


class Owner:
    def __init__(self) -> None:
        self.marked = 0

    def suspect_slow(self) -> None:
        pass

    def mark_slow(self) -> None:
        self.marked += 1


class Clock:
    """Scripted time for the test's own thread; the real clocks for any other thread (the
    process-wide monitor of earlier tests' pollers keeps running meanwhile and must see
    neither these values nor the scripted samplers below)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 1.0
        self.owner = threading.get_ident()

    def monotonic(self) -> float:
        return self.now if threading.get_ident() == self.owner else time.monotonic()

    def process_time(self) -> float:
        return self.cpu if threading.get_ident() == self.owner else time.process_time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def scripted(real: Any, fake: Any) -> Any:
    """``fake`` on the test's thread, ``real`` on any other."""
    owner = threading.get_ident()

    def call(*args: Any) -> Any:
        return (fake if threading.get_ident() == owner else real)(*args)

    return call


def stuck_poller(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Owner, list[int]]:
    """A poller whose leader (CPU clock 4242) is inside one batch, handling fd 7."""
    p = _poller.Poller(0)
    owner = Owner()
    promoted: list[int] = []
    monkeypatch.setattr(p, "_promote_locked", lambda: promoted.append(1))
    p._leader_ident = 1
    p._leader_clock = 4242
    p._busy_epoch = p._epoch
    p._tick = 5
    p._running = 7
    p._owners[7] = owner
    return p, owner, promoted


def verdict(
    monkeypatch: pytest.MonkeyPatch,
    *,
    cpu_ms: float,
    process_ms: float = 0.0,
    pressure_ms: float | None = 0.0,
    clocks: bool = True,
) -> tuple[bool, int, int]:
    """Two looks 20 ms apart at a leader stuck in one batch, the leader's CPU clock moving
    by ``cpu_ms``, the process's CPU time by ``process_ms``, the machine's CPU pressure by
    ``pressure_ms`` (None: not available). Returns (offloading, times the connection was
    marked slow, promotions)."""
    p, owner, promoted = stuck_poller(monkeypatch)
    clock = Clock()
    leader = [0.5, 0.5 + cpu_ms / 1000]
    pressure = [5.0, 5.0 + (pressure_ms or 0.0) / 1000]
    monkeypatch.setattr(_poller, "time", clock)
    monkeypatch.setattr(
        _poller,
        "_thread_cpu",
        scripted(_poller._thread_cpu, lambda c: leader.pop(0) if clocks and c == 4242 else -1.0),
    )
    monkeypatch.setattr(
        _poller,
        "_cpu_pressure",
        scripted(_poller._cpu_pressure, lambda: -1.0 if pressure_ms is None else pressure.pop(0)),
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
    assert verdict(monkeypatch, cpu_ms=0.1) == (True, 1, 1)


def test_a_leader_on_a_core_is_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert verdict(monkeypatch, cpu_ms=18, process_ms=18) == (False, 1, 1)


def test_off_a_core_on_a_machine_short_of_cpu_is_preempted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Waiting for a core (or for the GIL held by a thread waiting for one)."""
    assert verdict(monkeypatch, cpu_ms=2, pressure_ms=15) == (False, 0, 1)


def test_asleep_while_the_process_keeps_a_core_busy_is_the_gil(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader sleeps on the GIL while other threads of the process compute."""
    assert verdict(monkeypatch, cpu_ms=0, process_ms=19) == (False, 0, 1)


def test_a_half_busy_process_does_not_excuse_a_blocked_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Half a core of other work leaves the GIL free half the time: a leader asleep for
    the whole interval is blocked, not waiting for the GIL."""
    assert verdict(monkeypatch, cpu_ms=0, process_ms=10) == (True, 1, 1)


def test_without_clocks_a_stuck_leader_counts_as_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert verdict(monkeypatch, cpu_ms=0, clocks=False, pressure_ms=None) == (True, 1, 1)


def test_contention_is_reported_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """A look that finds the process keeping a core busy sets ``contended`` for
    CONTENDED_SPAN."""
    p = _poller.Poller(0)
    clock = Clock()
    monkeypatch.setattr(_poller, "time", clock)
    monkeypatch.setattr(_poller, "_cpu_pressure", scripted(_poller._cpu_pressure, lambda: -1.0))
    try:
        p._monitor_check(-1)
        assert not p.contended
        clock.now += INTERVAL
        clock.cpu += 0.019  # 95% of a core over the interval
        p._monitor_check(-1)
        assert p.contended
        clock.now += _poller.CONTENDED_SPAN + INTERVAL  # an idle process since
        p._monitor_check(-1)
        assert not p.contended
    finally:
        p.backend.close()


def test_the_monitor_outlives_a_failed_look() -> None:
    """A look that raises is logged and the monitor goes on looking: a dead monitor
    thread would leave every poller of the process blind to blocked handlers."""

    class Flaky:
        index = 99

        def __init__(self) -> None:
            self.looks = 0
            self.again = threading.Event()

        def _monitor_check(self, seen: int) -> int:
            self.looks += 1
            if self.looks == 1:
                raise RuntimeError("a bug in one look")
            self.again.set()
            return seen

    monitor = _poller._Monitor()
    monitor.interval = 0.005
    flaky = Flaky()
    monitor.watch(flaky)  # type: ignore[arg-type]  # only _monitor_check and index are used
    try:
        assert flaky.again.wait(5.0), "the monitor stopped after the failed look"
    finally:
        monitor.unwatch(flaky)  # type: ignore[arg-type]
        monitor.interval = 1.0  # its (daemon) thread idles for the rest of the session
