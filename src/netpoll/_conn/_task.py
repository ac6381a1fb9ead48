"""The request task of a connection, its connect task, shutdown draining, and the
slow-handler policy.

The policy, all here: a handler run is timed when it runs on the slow pool, or inline
after a slow batch of its poller (``suspect_slow``, ``Poller.timing``); a run longer than
``SLOW_HANDLER`` on a poller thread marks the connection slow, and its later tasks run
on the slow pool. A run there longer than ``BLOCKED_ON_POOL`` blocked for sure (waiting
for the GIL lasts a switch interval, 5 ms, at a time) and renews the mark; one between
the two may just have waited for the GIL or been preempted, and so may a longer one while
the poller reports contention (``Poller.contended``: its leader waiting for a core, the
process busy, or the machine short of CPU), so after ``SLOW_RETRY`` seconds without a
sure sign the connection gets another, timed, run on the poller: a mark earned by a run
that was merely preempted cannot stick. While the poller reports contention, an inline
run between ``SLOW_HANDLER`` and ``BLOCKED_ON_POOL`` earns no mark at all, only another
timed run. The poller's monitor marks a connection whose handler kept a leader stuck
(``mark_slow``) unless the leader was only preempted; the poll layer only reports, and
the slow pool (``netpoll._runner``) only runs.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from .._config import CONFIG
from .._config import log as _log
from .._errors import ConnectionClosedError, PeerClosedError, ReadTimeoutError, WriteTimeoutError
from .._poll._poller import current_poller
from .._runner import SLOW_POOL
from ._receive import Receiving
from ._state import (
    CLOSE_ERROR,
    CLOSE_HANDLER,
    CLOSE_PEER,
    CLOSE_READ_TIMEOUT,
    CLOSE_SHUTDOWN,
    CLOSE_WRITE_TIMEOUT,
    lock_acquire,
    lock_release,
)

if TYPE_CHECKING:
    from .._connection import Connection

__all__ = ["BLOCKED_ON_POOL", "FIRST_REQUEST_GRACE", "SLOW_HANDLER", "SLOW_RETRY", "Tasks"]


SLOW_HANDLER: Final = 0.001  # seconds; a handler run longer than this moves off the poller
BLOCKED_ON_POOL: Final = 0.02  # a run on the pool this long blocked for sure
SLOW_RETRY: Final = 1.0  # seconds without a sure sign before a slow mark is retried
FIRST_REQUEST_GRACE: Final = 1.0  # shutdown: seconds a fresh connection has to send


class Tasks(Receiving):
    """Running the handlers: one task at a time per connection, inline or on the pool."""

    __slots__ = ()

    def _start_task(self) -> None:
        runner = CONFIG.runner
        if runner is None:
            if self._slow or self._poller.offload:
                SLOW_POOL.submit(self._process_on_pool)
            else:
                self._process()
        else:
            try:
                runner(self._ctx, self._process)
            except Exception:
                _log.exception("netpoll: runner failed to start a task; closing %r", self)
                with self._lock:
                    self._processing = False
                self._close(CLOSE_ERROR)
                self._closed_notice()

    def _connect_task(self, on_connect: Callable[[Any, Connection], Any] | None) -> None:
        """Run ``on_connect`` and then any input that arrived meanwhile."""
        if on_connect is not None:
            try:
                self._ctx = on_connect(self._ctx, self._me())
            except BaseException as exc:  # SystemExit too: a handler never kills a poller
                self._handler_failed(exc)
                return
        with self._lock:
            self._connected = True
            pending = self._disconnect_pending
            self._disconnect_pending = False
            run = bool(self._in._rlen) and self._on_request is not None and not self._closed
            if not run:
                self._processing = False
            eof = self._eof
        if pending and self._hooks is not None:
            self._hooks.on_disconnect(self._me())
        if run:
            self._process()
            return
        if eof:
            self._end_of_stream()
        elif self._hooks is not None and self._hooks.draining:
            # Accepted as the shutdown began: it gets the grace of a fresh connection
            # (closing it now would fail a client that connected in time).
            self._drain()
        self._closed_notice()

    def _process_on_pool(self) -> None:
        self._process(True)

    def _process(self, on_pool: bool = False) -> None:
        """The request task: call on_request while unread input remains and it progresses."""
        inb = self._in
        me: Any = self  # a Connection: what handlers take (free, unlike a call)
        replaced = False  # a replacement handler got its turn without progress
        while True:
            before = inb._rlen
            received = self._bytes_in
            handler = self._on_request
            # Runs are timed on the slow pool, and inline only after a slow batch of the
            # poller (this connection's, or any in the last second): timing every run
            # would cost two clock reads per request.
            timed = on_pool or self._suspect or self._poller.timing
            if timed:
                t0 = monotonic()
            try:
                if handler is not None:
                    handler(self._ctx, me)
            except BaseException as exc:  # SystemExit too: a handler never kills a poller
                self._handler_failed(exc)
                return
            # A handler that keeps the thread this long blocked somewhere the library
            # cannot see (a database call, a sleep): its next tasks run on the slow pool,
            # so the poller is not lent to it again. A quick run brings it back inline.
            # A leader that handed off (a visible wait) is not slow; one that kept the
            # poller, or a pool thread, is.
            slow = False
            if timed:
                now = monotonic()
                slow = self._judge_run(on_pool, now - t0, now)
            lock = self._lock
            lock_acquire(lock)
            again = False  # not `continue` in the try: mypyc does not compile that
            try:
                left = inb._rlen
                current = self._on_request
                # == as well as is: a handler that installs itself again as a bound
                # method installs an equal, not the same, object.
                if not self._closed and (handler is current or handler == current):
                    if left and (left != before or self._bytes_in != received):
                        if slow and not on_pool:
                            # Still processing: the rest of the input is the pool's.
                            SLOW_POOL.submit(self._process_on_pool)
                            return
                        replaced = False
                        again = True
                elif (
                    not self._closed
                    and left
                    and current is not None
                    and ((progress := left != before or self._bytes_in != received) or not replaced)
                ):
                    # The handler was replaced: the new one gets a turn, but one only while
                    # nothing moves (handlers that keep replacing themselves must not spin).
                    replaced = not progress
                    again = True
                if not again:
                    self._processing = False
                    if self._paused:
                        self._maybe_resume_locked()
                    closed = self._closed
                    eof = self._eof
            finally:
                lock_release(lock)
            if not again:
                break
        if closed or eof:
            if closed:
                self._drop_buffers()
                self._closed_notice()
            else:
                self._end_of_stream()
        elif self._hooks is not None and self._hooks.draining:
            self._hooks.on_idle(self._me())

    def _drain(self) -> None:
        """Shutdown: close unless busy; answer input already here first (on the poller,
        not the caller's thread, so no handler outlasts shutdown's timeout). A connection
        that has not sent a byte yet, accepted just before the shutdown, gets
        FIRST_REQUEST_GRACE seconds for its first request: closing it at once would fail
        a client that connected in time (a worker replaced on SIGHUP, for one)."""
        with self._lock:
            if self._closed or self._processing or self._need:
                return
            if self._in._rlen == 0 and not self._eof:
                self._read_through_locked()  # requests already in the kernel still count
            start = bool(self._in._rlen) and self._connected and self._on_request is not None
            if start:
                self._processing = True
            fresh = not start and self._bytes_in == 0 and not self._eof
        if start:
            self._poller.call_later(0, self._start_task)
        elif fresh:
            self._poller.call_later(FIRST_REQUEST_GRACE, self._drain_fresh)
        else:
            self._close(CLOSE_SHUTDOWN)

    def _drain_fresh(self) -> None:
        """The grace of a fresh connection is over: close it unless it is at work now
        (its handler closes it when done: the server's ``on_idle`` while draining)."""
        with self._lock:
            if self._closed or self._processing or self._need or self._in._rlen:
                return
        self._close(CLOSE_SHUTDOWN)

    def _handler_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._processing = False
            closed = self._closed
        if isinstance(exc, ReadTimeoutError):
            reason = CLOSE_READ_TIMEOUT
            _log.debug("netpoll: read timeout on %r; closing", self)
        elif isinstance(exc, WriteTimeoutError):
            reason = CLOSE_WRITE_TIMEOUT
        elif isinstance(exc, PeerClosedError) or (
            isinstance(exc, ConnectionClosedError) and closed
        ):
            reason = CLOSE_PEER
        else:
            reason = CLOSE_HANDLER
            _log.error("netpoll: handler raised on %r; closing it", self, exc_info=exc)
            if self._hooks is not None:
                self._hooks.on_handler_error(self._me(), exc)
        self._close(reason)
        self._drop_buffers()
        self._closed_notice()

    def suspect_slow(self) -> None:
        """The poller saw a slow batch with this connection in it: time its next run.

        Set from the leader without the lock: a lost update costs one untimed run more.
        """
        self._suspect = True

    def mark_slow(self) -> None:
        """The monitor replaced a leader stuck in this connection's handler."""
        self._slow_since = monotonic()
        self._slow = True

    def _judge_run(self, on_pool: bool, elapsed: float, now: float) -> bool:
        """After a timed handler run: is this connection's handler slow? (see SLOW_RETRY).
        Only the task's own thread calls it."""
        if elapsed <= SLOW_HANDLER or not (on_pool or current_poller() is not None):
            # Quick, or a leader that handed off before a wait the library saw: fine.
            self._slow = False
            self._suspect = False
            return False
        if not on_pool and elapsed <= BLOCKED_ON_POOL and self._poller.contended:
            # A little slow inline while the poller is short of a core (or the GIL): most
            # likely preempted. Not marked; its next run is timed again.
            self._suspect = True
            return False
        if (
            not on_pool
            or not self._slow
            or (elapsed > BLOCKED_ON_POOL and not self._poller.contended)
        ):
            # Slow on the poller, on the pool while its poller offloads, or blocked for
            # sure on the pool (a long run while the poller's process or core is
            # contended may have waited for a core or the GIL: not sure): slow from now on.
            self._slow_since = now
            self._slow = True
            return True
        if now - self._slow_since > SLOW_RETRY:
            self._slow = False  # no sure sign for a while: another, timed, try inline
            self._suspect = True
            return False
        return True
