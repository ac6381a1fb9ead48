"""``netpoll.run``: serve in one call, on one core or every core, stopping on signals.

With ``workers=1`` the server runs in the calling process and SIGINT/SIGTERM become a
graceful ``shutdown``. With more, a supervisor (the calling process) opens the listening
socket once and forks workers that all accept from it; see ``_supervisor.py``.

Signals, in a process that serves (the caller, or a worker):
- the first SIGTERM (or SIGINT, when not a worker) starts ``shutdown(shutdown_timeout)``
  on a thread of its own, since the main thread is inside ``serve``; connections still
  busy at the deadline are closed (``force``) and a warning says how many;
- a second one closes every connection at once.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Final

from ._config import log as _log
from ._listener import Listener, create_listener
from ._server import EventLoop
from ._timeouts import wait_limit

__all__ = ["App", "ServeUntilSignalled", "run"]

App = EventLoop | Callable[[], EventLoop]
DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@contextlib.contextmanager
def signal_handlers(handlers: dict[int, _Handler]) -> Iterator[bool]:
    """Install ``handlers`` for the duration; yields False (and installs nothing) off the
    main thread, where Python cannot catch signals."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        yield True
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


class ServeUntilSignalled:
    """Runs ``loop.serve`` until a signal stops it gracefully (a second one at once)."""

    def __init__(self, loop: EventLoop, shutdown_timeout: float) -> None:
        self.loop = loop
        self.timeout = shutdown_timeout
        self._lock = threading.Lock()
        self._signals = 0
        self._serving = False  # serve() was entered and has not returned yet
        self._stopper: threading.Thread | None = None
        self.forced = 0  # connections closed at the deadline or by a second signal

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: the first starts a graceful stop, the next closes everything."""
        self.stop(immediate=False)

    def stop(self, immediate: bool = False) -> None:
        """Start stopping (from a signal handler or any thread); never blocks."""
        with self._lock:
            self._signals += 1
            first = self._signals == 1
        if first and not immediate:
            t = threading.Thread(target=self._graceful, name="netpoll-shutdown", daemon=True)
            self._stopper = t
            t.start()
        else:
            t = threading.Thread(target=self._now, name="netpoll-shutdown", daemon=True)
            t.start()

    def _started(self) -> bool:
        """Wait until serve() accepts (a shutdown before that would be undone by its
        start); False if it will not (it was never entered, or already returned)."""
        while True:
            with self._lock:
                if not self._serving:
                    return False
            if self.loop.wait_serving(0.05):
                return True

    def _graceful(self) -> None:
        if not self._started():
            return
        try:
            self.loop.shutdown(self.timeout)
        except TimeoutError:
            self._now()

    def _now(self) -> None:
        if not self._started():
            return
        busy = self.loop.stats().connections_open
        self.loop.shutdown(0, force=True)
        with self._lock:
            self.forced = max(self.forced, busy)

    def serve(self, listener: Listener | socket.socket, *, shared: bool = False) -> None:
        with self._lock:
            if self._signals:  # stopped before it started
                return
            self._serving = True
        try:
            self.loop.serve(listener, shared=shared)
        finally:
            with self._lock:
                self._serving = False
        stopper = self._stopper
        with self._lock:
            hurry = self._signals > 1
        while stopper is not None and not hurry and stopper.is_alive():
            # The graceful stop ends (it closes what is left at its deadline). In slices,
            # as in serve(): a second signal must get its handler run.
            stopper.join(0.25)
            with self._lock:
                hurry = self._signals > 1
        if self.forced:
            _log.warning(
                "netpoll: %d connection(s) were still busy at shutdown and were closed",
                self.forced,
            )


def _check_args(app: object, workers: object, shutdown_timeout: object) -> float:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be int, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if isinstance(app, EventLoop):
        if workers > 1:
            raise TypeError(
                "app must be a callable returning an EventLoop when workers > 1 "
                "(each worker makes its own), not an EventLoop instance"
            )
    elif not callable(app):
        raise TypeError(f"app must be an EventLoop or a callable, not {type(app).__name__}")
    limit = wait_limit(shutdown_timeout, "shutdown_timeout")
    return float("inf") if limit is None else limit


def make_loop(app: App) -> EventLoop:
    """The app's EventLoop: the instance itself, or what the factory returns."""
    loop = app if isinstance(app, EventLoop) else app()
    if not isinstance(loop, EventLoop):
        raise TypeError(f"app() must return a netpoll.EventLoop, not {type(loop).__name__}")
    return loop


def run(
    app: App,
    network: str,
    address: Any,
    *,
    workers: int = 1,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ssl: Any = None,
    backlog: int | None = None,
) -> None:
    """Serve ``app`` on ``address`` until SIGINT or SIGTERM; see the guide's "Running".

    ``app`` is an EventLoop (``workers=1`` only) or a callable returning one, called in
    each worker. ``workers > 1`` forks that many worker processes sharing one listening
    socket, supervised: a worker that dies is restarted with backoff, SIGHUP replaces
    them one by one, SIGUSR1 logs the sum of their stats. Returns None after a graceful
    stop; raises RuntimeError if workers had to be killed or kept failing at start.
    ``ssl``: an ``ssl.SSLContext`` to serve TLS (see ``create_listener``).
    """
    timeout = _check_args(app, workers, shutdown_timeout)
    if workers == 1:
        loop = make_loop(app)
        listener = create_listener(network, address, backlog=backlog, ssl=ssl)
        server = ServeUntilSignalled(loop, timeout)
        try:
            with signal_handlers(
                {signal.SIGINT: server.on_signal, signal.SIGTERM: server.on_signal}
            ):
                server.serve(listener)
        finally:
            listener.close()
        return
    from ._supervisor import Supervisor

    listener = create_listener(network, address, backlog=backlog, ssl=ssl)
    try:
        Supervisor(app, listener, workers, timeout).run()
    finally:
        listener.close()
