"""EventLoop: accepts connections, runs the callbacks in order, shuts down gracefully."""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._config import log as _log
from ._conn._state import (
    CLOSE_IDLE_TIMEOUT,
    CLOSE_READ_TIMEOUT,
    CLOSE_WRITE_TIMEOUT,
    Hooks,
    OnRequest,
    check_read_limit,
)
from ._conn._tls import DEFAULT_HANDSHAKE_TIMEOUT, TLSConnection
from ._connection import Connection
from ._listener import Listener
from ._poll._manager import manager
from ._poll._operator import FDOperator, PollEvent
from ._poll._poller import Poller, Timer
from ._runner import SLOW_POOL
from ._timeouts import timeout_value, wait_limit

__all__ = ["EventLoop", "ServerStats"]


_ACCEPT_BATCH: Final = 256
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE_MIN: Final = 0.05
_PAUSE_MAX: Final = 1.0
_SIGNAL_SLICE: Final = 0.25  # serve() wakes this often to let signal handlers run


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of an EventLoop's counters."""

    connections_open: int
    connections_accepted: int
    connections_closed: int
    bytes_received: int
    bytes_sent: int
    handler_exceptions: int
    closed_by_read_timeout: int
    closed_by_write_timeout: int
    closed_by_idle_timeout: int
    accept_pauses: int  # accepting paused for want of file descriptors
    connection_limit_pauses: int = 0  # accepting paused at ``max_connections``
    # Threads of the process-wide pool that runs handlers which blocked (running, waiting
    # for input, or idle until they exit): a figure for the process, not this loop.
    slow_pool_threads: int = 0
    # TLS listeners: handshakes that failed (alerts, plaintext or garbage, the peer
    # leaving mid-way) and handshakes not done within ``ssl_handshake_timeout``.
    tls_handshake_failures: int = 0
    tls_handshake_timeouts: int = 0


class _ServerHooks(Hooks):
    """The EventLoop's side of its connections: callbacks, bookkeeping, draining."""

    __slots__ = ("_loop", "draining")

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop
        self.draining = False

    def on_disconnect(self, conn: Connection) -> None:
        fn = self._loop._on_disconnect
        if fn is not None:
            try:
                fn(conn.context, conn)
            except Exception:
                _log.exception("netpoll: on_disconnect raised on %r", conn)

    def on_closed(self, conn: Connection, reason: str) -> None:
        self._loop._forget(conn, reason)

    def on_handler_error(self, conn: Connection, exc: BaseException) -> None:
        with self._loop._lock:
            self._loop._handler_errors += 1

    def on_idle(self, conn: Connection) -> None:
        conn.shutdown_close()

    def on_tls_handshake_failed(self, conn: Connection, timed_out: bool) -> None:
        loop = self._loop
        with loop._lock:
            if timed_out:
                loop._tls_timeouts += 1
            else:
                loop._tls_failures += 1


class EventLoop:
    """A netpoll server: ``serve(listener)`` runs it, ``shutdown()`` stops it gracefully.

    ``on_request(ctx, conn)`` runs whenever a connection has unread input, never twice at
    once for one connection. It may block; other connections keep being served.
    """

    def __init__(
        self,
        on_request: OnRequest,
        *,
        on_prepare: Callable[[Connection], Any] | None = None,
        on_connect: Callable[[Any, Connection], Any] | None = None,
        on_disconnect: Callable[[Any, Connection], Any] | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        idle_timeout: float | None = None,
        read_buffer_limit: int | None = None,
        max_connections: int | None = None,
    ) -> None:
        if not callable(on_request):
            raise TypeError(f"on_request must be callable, not {type(on_request).__name__}")
        for name, fn in (
            ("on_prepare", on_prepare),
            ("on_connect", on_connect),
            ("on_disconnect", on_disconnect),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")
        self._on_request = on_request
        self._on_prepare = on_prepare
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._read_timeout = timeout_value(read_timeout, "read_timeout")
        self._write_timeout = timeout_value(write_timeout, "write_timeout")
        self._idle_timeout = timeout_value(idle_timeout, "idle_timeout")
        if read_buffer_limit is not None:
            check_read_limit(read_buffer_limit)
        self._read_buffer_limit = read_buffer_limit
        if max_connections is not None:
            if isinstance(max_connections, bool) or not isinstance(max_connections, int):
                raise TypeError(
                    f"max_connections must be an int or None, not {type(max_connections).__name__}"
                )
            if max_connections < 1:
                raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._max_conns = max_connections or 0
        self._hooks = _ServerHooks(self)
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        self._serving = False
        self._stopped = threading.Event()
        self._ready = threading.Event()  # the listener is registered (wait_serving)
        self._drained = threading.Condition(self._lock)
        self._lsock: socket.socket | None = None
        self._lop: FDOperator | None = None
        self._lpoller: Poller | None = None
        self._pause_timer: Timer | None = None
        self._pause_delay = _PAUSE_MIN
        self._at_limit = False  # accepting paused at max_connections
        self._accept_batch = _ACCEPT_BATCH  # connections accepted per wake-up
        self._fatal: BaseException | None = None
        # counters
        self._accepted = 0
        self._closed = 0
        self._closed_in = 0
        self._closed_out = 0
        self._handler_errors = 0
        self._timeouts = {
            CLOSE_READ_TIMEOUT: 0,
            CLOSE_WRITE_TIMEOUT: 0,
            CLOSE_IDLE_TIMEOUT: 0,
        }
        self._accept_pauses = 0
        self._limit_pauses = 0
        self._tls_failures = 0
        self._tls_timeouts = 0
        # The TLS context of the listener being served (None: plain connections).
        self._ssl: ssl.SSLContext | None = None
        self._ssl_timeout = DEFAULT_HANDSHAKE_TIMEOUT

    # ------------------------------------------------------------------ serving

    def serve(self, listener: Listener | socket.socket, *, shared: bool = False) -> None:
        """Accept and serve connections until ``shutdown()``; blocks the caller.

        ``shared=True`` when other processes accept from the same listening socket (as
        ``netpoll.run``'s workers do): each wake-up then accepts one connection, so they
        spread evenly instead of going to whichever process woke first.

        Whatever ends it (``shutdown()``, a fatal accept error, an exception such as
        ``KeyboardInterrupt`` raised in the waiting caller), the listener stops accepting
        before it returns or raises; connections already open are left to ``shutdown``.
        """
        ssl_context: ssl.SSLContext | None = None
        ssl_timeout = DEFAULT_HANDSHAKE_TIMEOUT
        if isinstance(listener, Listener):
            lsock = listener.socket
            ssl_context = listener.ssl_context
            ssl_timeout = listener.ssl_handshake_timeout
        elif isinstance(listener, socket.socket):
            lsock = listener
        else:
            raise TypeError(
                f"listener must be a netpoll Listener or a socket.socket, "
                f"not {type(listener).__name__}"
            )
        with self._lock:
            if self._serving:
                raise RuntimeError("this EventLoop is already serving")
            self._serving = True
            self._stopped.clear()
            self._hooks.draining = False
            self._fatal = None
            self._accept_batch = 1 if shared else _ACCEPT_BATCH
            self._ssl = ssl_context
            self._ssl_timeout = ssl_timeout
        try:
            lsock.setblocking(False)
            poller = manager().pick(None)
            # Registered under the lock that shutdown() takes to begin draining: a
            # shutdown that came first leaves the listener alone, one that comes later
            # finds it and stops it. (Unlocked, a shutdown in between found nothing to
            # stop and serve() then returned with the listener still accepting.)
            with self._lock:
                if not self._hooks.draining:
                    self._lsock = lsock
                    self._lpoller = poller
                    self._lop = FDOperator(lsock.fileno(), self._on_acceptable, poller)
                    self._lop.control(PollEvent.ACCEPT)
                    self._ready.set()
            # Waits in slices: Python runs signal handlers on the main thread only, and a
            # signal the kernel gave another thread would wait for an untimed wait forever.
            while not self._stopped.wait(_SIGNAL_SLICE):
                pass
            if self._fatal is not None:
                raise self._fatal
        finally:
            self._stop_accepting()  # a no-op after shutdown(); vital after an exception
            with self._lock:
                self._serving = False
                self._ready.clear()

    def wait_serving(self, timeout: float | None = None) -> bool:
        """Wait until ``serve()`` is accepting; False if ``timeout`` seconds pass first.

        The readiness signal for tests and for code that starts ``serve()`` in a thread:
        once it returns True, a client that connects is accepted and served.
        """
        return self._ready.wait(wait_limit(timeout, "timeout"))

    def _on_acceptable(self, _ev: int) -> None:
        lsock = self._lsock
        if lsock is None:
            return
        limit = self._max_conns
        for _ in range(self._accept_batch):
            if limit and len(self._conns) >= limit and self._pause_at_limit():
                return
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._pause_accepting(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                if exc.errno == errno.EBADF or lsock.fileno() < 0:
                    return  # closed under us by shutdown
                _log.error("netpoll: accept failed fatally: %s", exc)
                self._fatal = exc
                self._stop_accepting()
                self._stopped.set()
                return
            self._pause_delay = _PAUSE_MIN
            self._new_connection(sock, addr)
        if self._accept_batch == 1:
            self._requeue_listener()

    def _requeue_listener(self) -> None:
        """A listener shared with other processes: after an accept, register it again, so
        this process goes to the back of the listener's wait queue. EPOLLEXCLUSIVE wakes
        the first idle waiter in that queue, so otherwise one idle process would take
        every connection that arrives while the others are idle too."""
        with self._lock:
            op = self._lop
            if op is not None and op.registered and not self._at_limit:
                op.control(PollEvent.DETACH)
                op.control(PollEvent.ACCEPT)

    def _pause_at_limit(self) -> bool:
        """``max_connections`` are open: stop watching the listener until one closes (new
        clients wait in the kernel's backlog). False if a close came first."""
        with self._lock:
            if len(self._conns) < self._max_conns:
                return False
            op = self._lop
            if op is not None and not self._at_limit:
                self._at_limit = True
                self._limit_pauses += 1
                op.control(PollEvent.DETACH)
            return True

    def _resume_locked(self) -> None:
        """Watch the listener again, unless something still holds accepting back. Lock held."""
        op = self._lop
        if (
            op is not None
            and not self._hooks.draining
            and not self._at_limit
            and self._pause_timer is None
        ):
            op.control(PollEvent.ACCEPT)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: stop watching the listener and retry later, with backoff."""
        with self._lock:
            op = self._lop
            poller = self._lpoller
            if op is None or poller is None:
                return
            op.control(PollEvent.DETACH)
            delay = self._pause_delay
            self._pause_delay = min(delay * 2, _PAUSE_MAX)
            self._accept_pauses += 1
            first = self._accept_pauses == 1 or delay == _PAUSE_MIN
        if first:
            _log.warning(
                "netpoll: accept failed (%s); pausing the listener, retrying in %.2fs",
                exc.strerror,
                delay,
            )
        timer = poller.call_later(delay, self._resume_accepting)
        with self._lock:
            if self._lop is op:
                self._pause_timer = timer
                return
        timer.cancel()  # accepting stopped meanwhile

    def _resume_accepting(self) -> None:
        with self._lock:
            self._pause_timer = None
            self._resume_locked()

    def _new_connection(self, sock: socket.socket, addr: Any) -> None:
        ssl_context = self._ssl
        try:
            settings: dict[str, Any] = {
                "on_request": self._on_request,
                "read_timeout": self._read_timeout or None,
                "write_timeout": self._write_timeout or None,
                "read_buffer_limit": self._read_buffer_limit,
                "hooks": self._hooks,
                "remote_addr": addr,
            }
            poller = manager().pick(addr)
            if ssl_context is None:
                conn = Connection(sock, poller, **settings)
            else:
                conn = TLSConnection(
                    sock,
                    poller,
                    ssl_context,
                    server_side=True,
                    handshake_timeout=self._ssl_timeout,
                    **settings,
                )
        except (OSError, ValueError) as exc:
            _log.warning("netpoll: could not set up a connection from %r: %s", addr, exc)
            sock.close()
            return
        with self._lock:  # counted before on_prepare, so its failure shows in the stats
            self._accepted += 1
            self._conns.add(conn)
        conn.serve_accepted(self._on_prepare, self._on_connect, self._idle_timeout)

    def _forget(self, conn: Connection, reason: str) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.discard(conn)
                self._closed += 1
                self._closed_in += conn.bytes_received
                self._closed_out += conn.bytes_sent
                if reason in self._timeouts:
                    self._timeouts[reason] += 1
                if not self._conns:
                    self._drained.notify_all()
                if self._at_limit and len(self._conns) < self._max_conns:
                    self._at_limit = False
                    self._resume_locked()

    # ------------------------------------------------------------------ stopping

    def _stop_accepting(self) -> None:
        with self._lock:
            op, self._lop = self._lop, None
            if op is not None:
                op.control(PollEvent.DETACH)
            timer, self._pause_timer = self._pause_timer, None
            lsock, self._lsock = self._lsock, None
            self._at_limit = False
        if timer is not None:
            timer.cancel()
        if lsock is not None:
            try:
                lsock.close()
            except OSError:
                pass

    def shutdown(self, timeout: float | None = None, force: bool = False) -> None:
        """Stop accepting, close idle connections now, wait for busy ones, then return.

        A handler waiting for input (in ``next(n)``) counts as busy. If some connections
        are still busy after ``timeout`` seconds (``None`` or infinity: no limit; 0: don't
        wait), it raises TimeoutError and leaves them running; with ``force=True`` it
        closes them instead (their handlers' reads and writes raise
        ``ConnectionClosedError``) and returns. ``serve`` returns either way.
        """
        limit = wait_limit(timeout, "timeout")
        with self._lock:  # see serve(): ordered against the listener's registration
            self._hooks.draining = True
        self._stop_accepting()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.shutdown_drain()
        deadline = None if limit is None else time.monotonic() + limit
        try:
            with self._lock:
                while self._conns:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if force:
                            break
                        raise TimeoutError(
                            f"shutdown timed out with {len(self._conns)} busy connection(s)"
                        )
                    self._drained.wait(left)
                busy = list(self._conns)
            for conn in busy:  # only with force: the deadline passed
                conn.shutdown_close()
        finally:
            self._stopped.set()

    # ------------------------------------------------------------------ introspection

    def stats(self) -> ServerStats:
        """Counters since the loop was created (cheap: no per-request bookkeeping)."""
        with self._lock:
            live = list(self._conns)
            return ServerStats(
                connections_open=len(live),
                connections_accepted=self._accepted,
                connections_closed=self._closed,
                bytes_received=self._closed_in + sum(c.bytes_received for c in live),
                bytes_sent=self._closed_out + sum(c.bytes_sent for c in live),
                handler_exceptions=self._handler_errors,
                closed_by_read_timeout=self._timeouts[CLOSE_READ_TIMEOUT],
                closed_by_write_timeout=self._timeouts[CLOSE_WRITE_TIMEOUT],
                closed_by_idle_timeout=self._timeouts[CLOSE_IDLE_TIMEOUT],
                accept_pauses=self._accept_pauses,
                connection_limit_pauses=self._limit_pauses,
                slow_pool_threads=SLOW_POOL.threads,
                tls_handshake_failures=self._tls_failures,
                tls_handshake_timeouts=self._tls_timeouts,
            )

    @property
    def addr(self) -> Any:
        """The listening address while serving, else None."""
        lsock = self._lsock
        return None if lsock is None else lsock.getsockname()

    @property
    def serving(self) -> bool:
        """True while ``serve()`` runs (see ``wait_serving`` for when it accepts)."""
        return self._serving
