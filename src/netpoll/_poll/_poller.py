"""The poller: one readiness backend served by a leader thread, with hand-off on blocking.

Handlers run inline on the thread that polled (the leader): no queue and no thread switch
per request. A handler may block, though (``next(n)`` waiting for bytes, a
slow call). Before the library blocks a leader it hands the leader role to a follower
thread (``before_block``), as Go's scheduler hands off its P when a goroutine enters a
syscall; for blocking it cannot see (``time.sleep`` in user code), a monitor thread notices
a leader stuck in one batch and promotes a follower. The old leader finishes its handler,
finds it was replaced, drops the rest of its batch and becomes a follower. Dropping is
safe because the backend is level-triggered: whatever was not handled is reported again.

After a leader stuck *blocked* the poller *offloads* for ``OFFLOAD_SPAN`` seconds: its
connections run their tasks on the slow pool instead of inline. Many handlers blocking at
once (a slow database behind every connection) then wait side by side on pool threads
instead of taking the leader one after another, one monitor look each.

A leader can also sit in one batch because it is *preempted* (runnable, waiting for a
core: a busy machine, a container's CPU quota), asleep on the GIL while another thread
holds it, or computing. The monitor tells these apart from three clocks it samples at
each look: the leader thread's CPU time (``time.pthread_getcpuclockid``), the process's
CPU time, and the machine's CPU pressure (Linux ``/proc/pressure/cpu``: the time during
which some task waited for a CPU, read through one descriptor kept open). Over the
interval the leader was stuck: on a core half of it or more is *running* (promote, and
mark the connection slow: its handler computes for long; no offload, more threads do not
help CPU work under the GIL); otherwise, if the process kept a core busy (the GIL never
free) or the machine was under CPU pressure half the interval, it is *preempted*, by the
scheduler or by the GIL (a follower is promoted and nothing else: offloading would move
fast connections to the pool for nothing); otherwise it is *blocked* (promote, mark,
offload). Without those clocks (not Linux), *blocked*.

The same samples keep ``contended`` (read by the connections' slow-handler policy): true
for ``CONTENDED_SPAN`` seconds after a look found the process keeping a core busy
or the machine under CPU pressure half the interval. While it is true, a long run on the
slow pool is no sure sign of blocking (it may have waited for a core or the GIL).

Leadership state, under ``_lock``: ``_epoch`` names the current leader (a thread leads
while the epoch it was promoted with is current); ``_busy_epoch`` is the epoch of a leader
inside a batch, 0 while it waits. Only the thread leading that epoch sets or clears it, so
a replaced leader finishing late can never clear the busy mark of its successor (which
would blind the monitor to the successor being stuck). ``_tick`` counts batches.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from .._config import log as _log
from ._backend import Backend, new_backend

__all__ = ["Poller", "SlowAware", "Timer", "before_block", "current_poller", "reset_monitor"]


MAX_WAIT: Final = 3600.0  # longest single wait for a timer, in seconds
MONITOR_INTERVAL: Final = 0.02  # seconds between the monitor's looks at the pollers
MAX_IDLE_FOLLOWERS: Final = 8
FOLLOWER_IDLE_EXIT: Final = 30.0  # an idle follower beyond the first exits after this

SWEEP_INTERVAL: Final = 1.0  # seconds between looks for quiet connections' spare blocks
# A batch of events that kept the leader this long makes the owners of its events
# suspects, whose next handler runs are timed, and has every handler run timed for
# TIMING_SPAN seconds: that finds the handlers that block where the library cannot see.
SLOW_BATCH: Final = 0.001
TIMING_SPAN: Final = 1.0
OFFLOAD_SPAN: Final = 1.0  # seconds of running tasks on the slow pool after a stuck leader
# What a stuck leader was doing over the monitor's last interval (see the module doc).
STUCK_BLOCKED: Final = 0
STUCK_RUNNING: Final = 1
STUCK_PREEMPTED: Final = 2
RUNNING_SHARE: Final = 0.5  # of an interval on a core: the leader is computing
BUSY_PROCESS: Final = 0.9  # of a core the process kept busy: the GIL is never free
STARVED_SHARE: Final = 0.5  # of an interval with some task of the machine waiting for a CPU
CONTENDED_SPAN: Final = 0.5  # seconds ``contended`` stays true after a contended look

_PSI_PATH: Final = "/proc/pressure/cpu"
_psi_fd = -2  # -2: not opened yet; -1: not available here


def _open_pressure() -> None:
    """Open the CPU pressure file once, at import, so that reading it never opens a
    descriptor afterwards: the process's descriptor count stays steady while it serves."""
    global _psi_fd
    if _psi_fd == -2:
        try:
            _psi_fd = os.open(_PSI_PATH, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            _psi_fd = -1


def _cpu_pressure() -> float:
    """Seconds since boot during which some task of the machine waited for a CPU (pressure
    stall information); -1.0 where the kernel does not say."""
    global _psi_fd
    fd = _psi_fd
    if fd < 0:
        return -1.0
    try:
        first = os.pread(fd, 128, 0).split(b"\n", 1)[0]
        return int(first.rsplit(b"total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        _psi_fd = -1
        return -1.0


_open_pressure()


def _thread_cpu(clock: int) -> float:
    """CPU seconds of the thread whose CPU clock is ``clock``; -1.0 if unknown (it ended)."""
    if clock < 0:
        return -1.0
    try:
        return time.clock_gettime(clock)
    except OSError:
        return -1.0


def _cpu_clock_of_this_thread() -> int:
    """The CPU-time clock of the calling thread, for the monitor to read; -1 if none."""
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return -1


_tls = threading.local()


class SlowAware(Protocol):
    """What the poller asks of the owner of an fd (a connection) about its handler."""

    def suspect_slow(self) -> None:
        """It took part in a slow batch: time its next handler run."""

    def mark_slow(self) -> None:
        """The monitor found the leader stuck in its handler: run its tasks off the poller."""


class _Sheddable(Protocol):
    def maybe_shed(self) -> bool: ...


def _noop() -> None:
    pass


def current_poller() -> Poller | None:
    """The poller the calling thread currently leads, if any."""
    return getattr(_tls, "leading", None)


def before_block() -> None:
    """Called before the library blocks: a leading thread hands its role to a follower."""
    poller = getattr(_tls, "leading", None)
    if poller is not None:
        _tls.leading = None
        poller.handoff()


class Timer:
    """A one-shot callback on a poller's timer heap; ``cancel()`` before it runs."""

    __slots__ = ("deadline", "fn")

    def __init__(self, deadline: float, fn: Callable[[], None]) -> None:
        self.deadline = deadline
        self.fn: Callable[[], None] | None = fn

    def cancel(self) -> None:
        self.fn = None


class _Follower:
    __slots__ = ("epoch", "gate")

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.gate.acquire()
        self.epoch = -1


class Poller:
    """One backend, its fd handlers and timers, and the threads that take turns leading."""

    def __init__(self, index: int, backend: Backend | None = None) -> None:
        self.index = index
        self.backend = backend or new_backend()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._owners: dict[int, SlowAware] = {}
        self._lock = threading.Lock()
        self._epoch = 0
        self._leader_ident = 0
        self._leader_clock = -1  # the leader thread's CPU-time clock (see the module doc)
        self._idle: list[_Follower] = []
        self._threads = 0
        self._closed = False
        self._busy_epoch = 0  # the epoch of a leader handling a batch; 0 while it waits
        self._tick = 0  # batches handled; the monitor watches it move
        self._timers: list[tuple[float, int, Timer]] = []
        self._tseq = itertools.count()
        # The fd whose handler is running, for the monitor to blame when the leader is stuck.
        self._running = -1
        # True for a while after a slow batch: connections then time their handler runs.
        self.timing = False
        self._timing_until = 0.0
        # True for a while after a stuck leader: connections run their tasks on the pool.
        self.offload = False
        self._offload_until = 0.0
        # The monitor's last sample of a busy leader: (tick, clock, monotonic s, the
        # leader's CPU s). Only the monitor thread touches it.
        self._mon_sample: tuple[int, int, float, float] | None = None
        # The previous look's (monotonic s, process CPU s, CPU pressure s); monitor only.
        self._mon_process: tuple[float, float, float] | None = None
        # Set by the monitor, read unlocked by connections (a stale read is harmless).
        self.contended = False
        self._contended_until = 0.0
        waker = self.backend.waker
        self._handlers[waker.rfd] = lambda _ev: waker.drain()
        self._started = False
        # Connections keeping a drained receive block between requests; a sweep hands
        # the blocks of quiet ones back to the pool so idle connections hold no buffers.
        self._hot: set[_Sheddable] = set()
        self._hot_lock = threading.Lock()
        self._sweep_timer: Timer | None = None

    def __repr__(self) -> str:
        return f"<Poller #{self.index} {self.backend.name} fds={len(self._handlers) - 1}>"

    # --------------------------------------------------------------- registration

    def attach(
        self,
        fd: int,
        events: int,
        handler: Callable[[int], None],
        owner: SlowAware | None = None,
    ) -> None:
        """Start watching ``fd`` for ``events``; ``handler(events)`` runs when ready.

        ``owner`` is told when its handler runs slow (see ``SlowAware``).
        """
        self._handlers[fd] = handler
        if owner is not None:
            self._owners[fd] = owner
        try:
            self.backend.register(fd, events)
        except BaseException:
            self._handlers.pop(fd, None)
            self._owners.pop(fd, None)
            raise
        if not self._started:
            self.start()

    def modify(self, fd: int, events: int) -> None:
        self.backend.modify(fd, events)

    def set_handler(self, fd: int, handler: Callable[[int], None]) -> None:
        """Send ``fd``'s next events to ``handler`` (an event already taken may still go to
        the old one)."""
        if fd in self._handlers:
            self._handlers[fd] = handler

    def detach(self, fd: int) -> None:
        """Stop watching ``fd``; safe if it was already closed."""
        self._handlers.pop(fd, None)
        self._owners.pop(fd, None)
        try:
            self.backend.unregister(fd)
        except (OSError, ValueError, KeyError):
            pass

    def note_hot(self, obj: _Sheddable) -> None:
        """Track an object holding a spare buffer; it is asked to shed it when quiet."""
        with self._hot_lock:
            self._hot.add(obj)
            arm = self._sweep_timer is None
            if arm:
                self._sweep_timer = Timer(0.0, _noop)  # placeholder until armed below
        if arm:
            self._sweep_timer = self.call_later(SWEEP_INTERVAL, self._sweep)

    def forget_hot(self, obj: _Sheddable) -> None:
        """Stop tracking ``obj`` (it was closed)."""
        with self._hot_lock:
            self._hot.discard(obj)

    def _sweep(self) -> None:
        with self._hot_lock:
            hot = list(self._hot)
        shed = [obj for obj in hot if obj.maybe_shed()]
        with self._hot_lock:
            self._hot.difference_update(shed)
            again = bool(self._hot)
            if not again:
                self._sweep_timer = None
        if again:
            self._sweep_timer = self.call_later(SWEEP_INTERVAL, self._sweep)

    # --------------------------------------------------------------- timers

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the leader thread after ``delay`` seconds."""
        timer = Timer(time.monotonic() + max(delay, 0.0), fn)
        with self._lock:
            heapq.heappush(self._timers, (timer.deadline, next(self._tseq), timer))
            first = self._timers[0][2] is timer
            idle = not self._busy_epoch
        if first and idle:
            self.backend.trigger()
        if not self._started:
            self.start()
        return timer

    def _next_timeout_locked(self) -> float:
        timers = self._timers
        while timers and timers[0][2].fn is None:
            heapq.heappop(timers)
        if not timers:
            return -1.0
        # Capped: epoll and poll reject waits beyond about 24 days (a C int of
        # milliseconds), and a far timer is simply looked at again after the cap.
        return min(max(timers[0][0] - time.monotonic(), 0.0), MAX_WAIT)

    def _run_timers(self) -> None:
        now = time.monotonic()
        due: list[Callable[[], None]] = []
        with self._lock:
            timers = self._timers
            while timers and timers[0][0] <= now:
                fn = heapq.heappop(timers)[2].fn
                if fn is not None:
                    due.append(fn)
        for fn in due:
            try:
                fn()
            except Exception:
                _log.exception("netpoll: timer callback failed")

    # --------------------------------------------------------------- threads

    def start(self) -> None:
        """Start the first leader thread (idempotent)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._promote_locked()
        _monitor.watch(self)

    def _promote_locked(self) -> None:
        """Make a new leader: wake an idle follower or start a thread. Lock held."""
        self._epoch += 1
        self._leader_ident = 0
        epoch = self._epoch
        if self._idle:
            f = self._idle.pop()
            f.epoch = epoch
            f.gate.release()
            return
        self._threads += 1
        t = threading.Thread(
            target=self._thread_main,
            args=(epoch,),
            name=f"netpoll-poller-{self.index}",
            daemon=True,
        )
        t.start()

    def handoff(self) -> None:
        """Give up leadership from the leading thread (it is about to block)."""
        with self._lock:
            if self._leader_ident == threading.get_ident() and not self._closed:
                self._promote_locked()

    def _monitor_check(self, seen_tick: int) -> int:
        """Promote a follower if the leader sat in one batch since the last look; offload
        and blame the handler only as far as the clocks say it is blocked or computing,
        not merely preempted (see the module doc)."""
        with self._lock:
            tick = self._tick
            epoch = self._epoch
            busy = self._busy_epoch == epoch and self._leader_ident != 0 and not self._closed
            clock = self._leader_clock
        now = time.monotonic()
        process = time.process_time()
        pressure = _cpu_pressure()
        starved = False  # the process busy, or the machine short of cores
        before = self._mon_process
        self._mon_process = (now, process, pressure)
        if before is not None and now > before[0]:
            span = now - before[0]
            starved = process - before[1] >= BUSY_PROCESS * span
            if pressure >= 0 and before[2] >= 0:
                starved = starved or pressure - before[2] >= STARVED_SHARE * span
        self._note_contention(now, starved)
        if not busy:
            self._mon_sample = None
            return tick
        cpu = _thread_cpu(clock)
        last = self._mon_sample
        self._mon_sample = None if cpu < 0 else (tick, clock, now, cpu)
        if tick != seen_tick:
            return tick  # a new batch since the last look: not stuck
        kind = STUCK_BLOCKED
        if cpu >= 0 and last is not None and last[0] == tick and last[1] == clock:
            elapsed = now - last[2]
            if elapsed > 0 and cpu - last[3] >= RUNNING_SHARE * elapsed:
                kind = STUCK_RUNNING
            elif starved:
                # Off a core while the process or the machine is short of CPU: waiting
                # for one, or for the GIL: nothing to blame, and more threads would only
                # add to the contention.
                kind = STUCK_PREEMPTED
        owner: SlowAware | None = None
        with self._lock:
            if (
                self._tick != tick
                or self._epoch != epoch
                or self._busy_epoch != epoch
                or not self._leader_ident
                or self._closed
            ):
                return tick  # it moved on meanwhile
            _log.debug(
                "netpoll: poller %d leader %s in a handler; promoting",
                self.index,
                ("blocked", "computing", "preempted")[kind],
            )
            if kind != STUCK_PREEMPTED:
                owner = self._owners.get(self._running)
            if kind == STUCK_BLOCKED:
                # Until OFFLOAD_SPAN passes, tasks run on the slow pool: if many handlers
                # block at once, they wait side by side instead of one leader each.
                self._offload_until = time.monotonic() + OFFLOAD_SPAN
                self.offload = self.timing = True
            self._promote_locked()
        self._mon_sample = None
        if owner is not None:
            # The stuck run was not timed: tell its owner it is slow, so its next
            # tasks go to the slow pool instead of taking a leader again.
            owner.mark_slow()
        return tick

    def _note_contention(self, now: float, contended: bool) -> None:
        """Monitor only: keep ``contended`` true for CONTENDED_SPAN after a contended look."""
        if contended:
            self._contended_until = now + CONTENDED_SPAN
        self.contended = now < self._contended_until

    def _thread_main(self, epoch: int) -> None:
        try:
            while epoch >= 0:
                self._lead(epoch)
                epoch = self._follow()
        except BaseException:  # pragma: no cover - a bug in the poller itself
            _log.exception("netpoll: poller %d thread died", self.index)
            with self._lock:
                self._threads -= 1
                if not self._closed:
                    self._promote_locked()

    def _follow(self) -> int:
        """Wait, idle, until promoted; -1 means exit the thread."""
        f = _Follower()
        with self._lock:
            if self._closed or len(self._idle) >= MAX_IDLE_FOLLOWERS:
                self._threads -= 1
                return -1
            self._idle.append(f)
        if f.gate.acquire(timeout=FOLLOWER_IDLE_EXIT):
            return f.epoch
        with self._lock:
            if f in self._idle:
                self._idle.remove(f)
                self._threads -= 1
                return -1
        f.gate.acquire()  # promoted just as the wait timed out
        return f.epoch

    def _lead(self, epoch: int) -> None:
        """The event loop, run while ``epoch`` is current."""
        _tls.leading = self
        lock = self._lock
        handlers = self._handlers
        wait = self.backend.wait
        monotonic = time.monotonic
        with lock:
            self._leader_ident = threading.get_ident()
            self._leader_clock = _cpu_clock_of_this_thread()
        try:
            while True:
                with lock:
                    if self._epoch != epoch or self._closed:
                        return
                    self._busy_epoch = 0
                    timeout = self._next_timeout_locked() if self._timers else -1.0
                events = wait(timeout)
                # Unlocked: only close() changes the epoch while a leader waits, and a
                # stale epoch here is harmless (the monitor compares it with the current).
                self._busy_epoch = epoch
                self._tick += 1
                start = monotonic()
                for fd, ev in events:
                    handler = handlers.get(fd)
                    if handler is not None:
                        self._running = fd
                        try:
                            handler(ev)
                        except BaseException:  # user code must not end the poller thread
                            _log.exception("netpoll: event handler for fd %d failed", fd)
                        if self._epoch != epoch:  # replaced while in the handler
                            self._check_batch(events, start)
                            return
                self._running = -1
                end = self._check_batch(events, start)
                if self._timers and self._timers[0][0] <= end:
                    self._run_timers()
                    if self._epoch != epoch:
                        return
        finally:
            if getattr(_tls, "leading", None) is self:
                _tls.leading = None
            with lock:
                if self._busy_epoch == epoch:  # never a successor's mark (see the docstring)
                    self._busy_epoch = 0

    def _check_batch(self, events: list[tuple[int, int]], start: float) -> float:
        """One clock read per batch instead of two per handler run; after a slow batch,
        handler runs are timed (see SLOW_BATCH). Returns the time now."""
        end = time.monotonic()
        if end - start > SLOW_BATCH:
            self._timing_until = end + TIMING_SPAN
            owners = self._owners
            for fd, _ev in events:
                owner = owners.get(fd)
                if owner is not None:
                    owner.suspect_slow()
        self.offload = offload = end < self._offload_until
        self.timing = offload or end < self._timing_until
        return end

    def close(self) -> None:
        """Stop the poller threads and close the backend (connections must be gone)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._epoch += 1
            idle, self._idle = self._idle, []
        for f in idle:
            f.epoch = -1
            f.gate.release()
        self.backend.trigger()
        _monitor.unwatch(self)


class _Monitor:
    """Looks at every poller each interval; promotes a follower where a leader is stuck."""

    def __init__(self) -> None:
        # A plain dict, emptied by Poller.close(): compiled Pollers take no weak references.
        self._pollers: dict[Poller, int] = {}
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.interval = MONITOR_INTERVAL

    def watch(self, poller: Poller) -> None:
        with self._lock:
            self._pollers[poller] = -1
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="netpoll-monitor", daemon=True
                )
                self._worker.start()

    def unwatch(self, poller: Poller) -> None:
        with self._lock:
            self._pollers.pop(poller, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                items = list(self._pollers.items())
            for poller, seen in items:
                try:
                    tick = poller._monitor_check(seen)
                except Exception:  # pragma: no cover - a bug; the monitor must live on
                    _log.exception("netpoll: the monitor failed looking at poller %d", poller.index)
                    continue
                with self._lock:
                    if poller in self._pollers:
                        self._pollers[poller] = tick


_monitor = _Monitor()


def reset_monitor() -> None:
    """After a fork: the monitor thread did not come along; the next poller starts one."""
    global _monitor
    _monitor = _Monitor()
