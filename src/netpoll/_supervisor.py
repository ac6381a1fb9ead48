"""The supervisor behind ``netpoll.run(workers=N)``: worker processes sharing a listener.

Design (see docs/design.md, "Several cores"):
- The supervisor opens the listening socket once and forks the workers; each registers
  the inherited socket with ``EPOLLEXCLUSIVE`` (one wake-up per new connection, not one
  per worker), accepts one connection per wake-up and registers the socket again, which
  moves it to the back of the kernel's queue of waiters, so idle workers take turns. The
  socket is never closed while serving, so replacing a worker loses nothing queued in
  its backlog (closing one of several ``SO_REUSEPORT`` listeners resets the connections
  in its queue), and unix sockets work as well as TCP.
- Workers report to the supervisor on one pipe, a line each (shorter than PIPE_BUF, so
  lines never mix): ``ready PID``, ``error PID TEXT``, ``stats PID JSON``. A second pipe
  is never written: a worker that reads its end of stream knows the supervisor is gone
  and stops by itself.
- Signals to the supervisor: SIGTERM or SIGINT stops every worker gracefully (a second
  one makes them close everything at once); SIGHUP replaces the workers one by one, each
  new one accepting before the old one stops; SIGUSR1 logs the sum of their ``stats()``.
  Workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and they
  follow the supervisor instead, so it counts once.
- A worker that dies is restarted; deaths before a worker was ready or within
  ``EARLY_DEATH`` seconds count as start failures, restarted with a doubling delay, and
  ``MAX_START_FAILURES`` in a row on one slot end the run with RuntimeError: a broken
  app must not fork-bomb the machine. A worker that served and then died is restarted at
  once the first time; if its successor dies too within ``STABLE_LIFE`` seconds of its
  start, the restarts of that slot back off the same way (never giving up: the app
  works, something kills it now and then), so a crash loop forks at most once per
  ``BACKOFF_MAX`` seconds.

All state lives in the supervisor's main thread: signal handlers only wake it (through
``signal.set_wakeup_fd``), so nothing here needs a lock.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Final, NoReturn

from ._config import log as _log
from ._listener import Listener
from ._poll._manager import reset_after_fork
from ._run import App, ServeUntilSignalled, make_loop
from ._runner import SLOW_POOL

__all__ = ["Supervisor"]

EARLY_DEATH: Final = 1.0  # seconds: a worker dying sooner than this failed to start
MAX_START_FAILURES: Final = 5
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0
STABLE_LIFE: Final = 30.0  # seconds: a worker that lived this long resets its slot's backoff
KILL_GRACE: Final = 2.0  # after a second stop signal, seconds before SIGKILL
STOP_GRACE: Final = 2.0  # beyond shutdown_timeout, for workers to exit after draining
ORPHAN_TIMEOUT: Final = 1.0  # a worker whose supervisor died drains this long at most
STATS_WAIT: Final = 3.0  # SIGUSR1 waits this long for ready workers (a loaded one is slow)
_WATCHED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)


@dataclasses.dataclass
class _Child:
    pid: int
    slot: int
    started: float
    replacement: bool = False  # started by SIGHUP, not yet in its slot
    ready: bool = False
    retiring: bool = False  # replaced: draining
    error: str = ""


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    """Forks and watches the workers of one ``netpoll.run`` call (see the module doc)."""

    def __init__(self, app: App, listener: Listener, workers: int, timeout: float) -> None:
        self.app = app
        self.listener = listener
        self.n = workers
        self.timeout = timeout
        self.children: dict[int, _Child] = {}
        self.slots: list[_Child | None] = [None] * workers
        self.failures = [0] * workers
        self.crashes = [0] * workers  # late deaths in a row, each within STABLE_LIFE
        self.restart_at: dict[int, float] = {}
        self.reload_queue: list[int] = []
        self.replacing: _Child | None = None
        self.stopping = False
        self.stop_signals = 0
        self.deadline = 0.0
        self.killed = 0
        self.fatal = ""
        self.stats: dict[int, dict[str, int]] | None = None
        self.stats_deadline = 0.0
        self._partial = b""

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("netpoll.run(workers > 1) must be called from the main thread")
        self.status_r, self.status_w = os.pipe()
        self.life_r, self.life_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.status_r, self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        previous = {sig: signal.signal(sig, _wake_only) for sig in _WATCHED}
        old_wakeup = signal.set_wakeup_fd(self.wake_w)
        try:
            for slot in range(self.n):
                self.spawn(slot)
            while self.children or not self.stopping:
                self.wait(self.next_timeout())
                self.reap()
                self.tick()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.kill_all()  # only after an error in the loop itself: no orphans
            for fd in (self.status_r, self.status_w, self.life_r, self.life_w):
                os.close(fd)
            os.close(self.wake_r)
            os.close(self.wake_w)
        if self.fatal:
            raise RuntimeError(self.fatal)
        if self.killed:
            raise RuntimeError(
                f"killed {self.killed} worker(s) still running {self.timeout:g}s after "
                "the stop signal (shutdown_timeout)"
            )

    def next_timeout(self) -> float:
        now = time.monotonic()
        times = [*self.restart_at.values()]
        if self.stopping:
            times.append(self.deadline)
        if self.stats is not None:
            times.append(self.stats_deadline)
        if not times:
            return 1.0
        return min(max(min(times) - now, 0.0), 1.0)

    def wait(self, timeout: float) -> None:
        """Sleep until a signal, a worker's message or ``timeout``; handle what came."""
        try:
            select.select([self.wake_r, self.status_r], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            pass
        try:
            signals = os.read(self.wake_r, 512)
        except BlockingIOError:
            signals = b""
        for sig in signals:
            self.on_signal(sig)
        self.read_status()

    # ------------------------------------------------------------------ signals

    def on_signal(self, sig: int) -> None:
        if sig in (signal.SIGINT, signal.SIGTERM):
            self.stop_signals += 1
            if self.stop_signals == 1:
                _log.info("netpoll: stopping %d worker(s) gracefully", len(self.children))
                self.begin_stop(time.monotonic() + self.timeout + STOP_GRACE)
            else:
                _log.info("netpoll: second stop signal: workers close everything now")
                self.signal_all(signal.SIGTERM)  # a worker's second SIGTERM: at once
                self.deadline = min(self.deadline, time.monotonic() + KILL_GRACE)
        elif sig == signal.SIGHUP and not self.stopping:
            _log.info("netpoll: SIGHUP: replacing the workers one by one")
            self.reload_queue = list(range(self.n))
        elif sig == signal.SIGUSR1 and not self.stopping and self.stats is None:
            self.stats = {}
            self.stats_deadline = time.monotonic() + STATS_WAIT
            self.signal_all(signal.SIGUSR1, ready_only=True)

    def begin_stop(self, deadline: float) -> None:
        self.stopping = True
        self.deadline = deadline
        self.restart_at.clear()
        self.reload_queue.clear()
        self.signal_all(signal.SIGTERM)

    def signal_all(self, sig: int, ready_only: bool = False) -> None:
        for child in self.children.values():
            if ready_only and not child.ready:
                continue
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        """SIGKILL every child left and reap it."""
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid, None)

    # ------------------------------------------------------------------ workers

    def spawn(self, slot: int, replacement: bool = False) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child (tested through processes)
            self.worker_main()
        child = _Child(pid, slot, time.monotonic(), replacement=replacement)
        self.children[pid] = child
        if replacement:
            self.replacing = child
        else:
            self.slots[slot] = child

    def read_status(self) -> None:
        while True:
            try:
                data = os.read(self.status_r, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
            pid_text, _, text = rest.partition(" ")
            child = self.children.get(int(pid_text)) if pid_text.isdigit() else None
            if child is None:
                continue
            if kind == "ready":
                self.on_ready(child)
            elif kind == "error":
                child.error = text
            elif kind == "stats" and self.stats is not None:
                self.stats[child.pid] = json.loads(text)

    def on_ready(self, child: _Child) -> None:
        child.ready = True
        if not child.replacement:
            return
        old = self.slots[child.slot]
        child.replacement = False
        self.slots[child.slot] = child
        self.replacing = None
        if old is not None and old.pid in self.children:
            old.retiring = True
            _log.info("netpoll: worker %d replaced by %d; draining it", old.pid, child.pid)
            try:
                os.kill(old.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self.on_exit(child, status)

    def on_exit(self, child: _Child, status: int) -> None:
        if self.stopping or child.retiring:
            return
        what = f"worker {child.pid} {_describe(status)}"
        if child.error:
            what += f": {child.error}"
        early = not child.ready or time.monotonic() - child.started < EARLY_DEATH
        slot = child.slot
        if child.replacement:
            self.replacing = None
            self.reload_queue.insert(0, slot)  # try that slot again after the backoff
        elif self.slots[slot] is child:
            self.slots[slot] = None
        if not early:
            self.failures[slot] = 0
            if time.monotonic() - child.started >= STABLE_LIFE:
                self.crashes[slot] = 0
            crashes = self.crashes[slot]
            self.crashes[slot] += 1
            delay = min(BACKOFF_FIRST * 2 ** (crashes - 1), BACKOFF_MAX) if crashes else 0.0
            if delay:
                _log.warning("netpoll: %s; restarting it in %.1fs", what, delay)
            else:
                _log.warning("netpoll: %s; restarting it", what)
            if not child.replacement:
                self.restart_at[slot] = time.monotonic() + delay
            return
        self.failures[slot] += 1
        if self.failures[slot] >= MAX_START_FAILURES:
            self.fatal = (
                f"netpoll.run: workers keep failing at start "
                f"({self.failures[slot]} times in a row); the last: {what}"
            )
            _log.error("%s; stopping", self.fatal)
            self.begin_stop(time.monotonic() + self.timeout + STOP_GRACE)
            return
        delay = min(BACKOFF_FIRST * 2 ** (self.failures[slot] - 1), BACKOFF_MAX)
        _log.warning("netpoll: %s; restarting it in %.1fs", what, delay)
        if child.replacement:
            self.restart_at[-1 - slot] = time.monotonic() + delay  # the reload waits too
        else:
            self.restart_at[slot] = time.monotonic() + delay

    def tick(self) -> None:
        now = time.monotonic()
        for key, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[key]
                if key >= 0 and self.slots[key] is None:
                    self.spawn(key)
        if (
            self.reload_queue
            and self.replacing is None
            and not self.stopping
            and not any(k < 0 for k in self.restart_at)
        ):
            slot = self.reload_queue.pop(0)
            if self.slots[slot] is not None:
                self.spawn(slot, replacement=True)
        if self.stopping and self.children and now >= self.deadline:
            _log.error(
                "netpoll: %d worker(s) still running after the deadline; killing them",
                len(self.children),
            )
            self.killed += len(self.children)
            self.kill_all()
        if self.stats is not None and (
            now >= self.stats_deadline
            or len(self.stats) >= sum(c.ready for c in self.children.values())
        ):
            self.log_stats(self.stats)
            self.stats = None

    def log_stats(self, per_worker: dict[int, dict[str, int]]) -> None:
        total: dict[str, int] = {}
        for figures in per_worker.values():
            for key, value in figures.items():
                total[key] = total.get(key, 0) + int(value)
        fields = ", ".join(f"{k}={v}" for k, v in total.items())
        _log.info("netpoll: stats of %d worker(s): %s", len(per_worker), fields)

    # ------------------------------------------------------------------ in a worker

    def worker_main(self) -> NoReturn:  # pragma: no cover - runs in forked children
        code = 0
        try:
            os.close(self.status_r)
            os.close(self.life_w)
            os.close(self.wake_r)
            os.close(self.wake_w)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            reset_after_fork()
            SLOW_POOL.reset_after_fork()
            loop = make_loop(self.app)
            server = ServeUntilSignalled(loop, self.timeout)
            signal.signal(signal.SIGTERM, server.on_signal)
            signal.signal(signal.SIGUSR1, lambda _s, _f: self.send_stats(loop))
            for target in (self.announce_ready, self.watch_supervisor):
                threading.Thread(target=target, args=(loop, server), daemon=True).start()
            server.serve(self.listener, shared=True)  # its TLS context too
        except BaseException as exc:
            code = 3
            _log.error("netpoll: worker %d failed: %r", os.getpid(), exc, exc_info=exc)
            self.send(f"error {os.getpid()} {type(exc).__name__}: {exc}")
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)

    def send(self, line: str) -> None:
        data = (line.replace("\n", " ")[:3000] + "\n").encode("utf-8", "replace")
        try:
            os.write(self.status_w, data)
        except OSError as exc:  # pragma: no cover - the supervisor is gone
            if exc.errno != errno.EPIPE:
                raise

    def announce_ready(self, loop: Any, server: ServeUntilSignalled) -> None:
        if loop.wait_serving(60.0):
            self.send(f"ready {os.getpid()}")

    def watch_supervisor(self, loop: Any, server: ServeUntilSignalled) -> None:
        """EOF on the life pipe: the supervisor died; stop within ORPHAN_TIMEOUT."""
        try:
            while os.read(self.life_r, 1):
                pass
        except OSError:
            pass
        _log.warning("netpoll: worker %d lost its supervisor; stopping", os.getpid())
        server.timeout = min(server.timeout, ORPHAN_TIMEOUT)
        server.stop()

    def send_stats(self, loop: Any) -> None:
        figures = dataclasses.asdict(loop.stats())
        self.send(f"stats {os.getpid()} {json.dumps(figures, separators=(',', ':'))}")


def _wake_only(signum: int, frame: object) -> None:
    """The supervisor's signal handler: the wake-up fd carries the signal to its loop."""
