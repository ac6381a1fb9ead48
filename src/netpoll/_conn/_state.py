"""A connection's state: every flag, who changes it under which lock, and the lock order.

``Connection`` is a stack of layers in single inheritance (mypyc compiles that; it has
no mixins), each layer a module::

    ConnectionBase  (_conn/_state)    the fields below, closing, close notices
    Receiving       (_conn/_receive)  the poller half: receive, end of stream, hang-up,
                                      pause/resume at the read limit, receive memory
    Tasks           (_conn/_task)     the request task, on_connect, shutdown draining,
                                      and the slow-handler policy
    Reading         (_conn/_read)     reading's slow path: waiting for input
    Writing         (_conn/_write)    writing's slow path: spilling queued writes,
                                      flushing the buffer, waiting for the kernel
    Connection      (_connection)     the Reader/Writer calls with their fast paths,
                                      settings, addresses, the library's entry points
    TLSConnection   (_conn/_tls)      TLS over the above: receive-and-decrypt, flush-
                                      and-encrypt, the handshake (its state is
                                      documented there, in this style)

A layer calls only down the stack, except that receiving starts the request task
(``_process``/``_start_task``, declared in ``Receiving``, defined in ``Tasks``).

Lock order: a connection's ``_lock`` first, then the poller's locks (``FDOperator.control``,
``Poller.call_later``, ``note_hot``/``forget_hot``), then the slow pool's lock
(``SlowPool.submit``). No user code (handlers, callbacks, the server's hooks) runs with
the connection's lock held, and nothing here is called with the server's lock held.

The fields, all changed under ``_lock`` unless said otherwise:

``_closed``: open (False) -> closed (True), once, in ``_close`` (any thread). After it
    the fd is out of the poller and the socket closed; a task or a blocked reader may
    still run, so the input buffer is returned only when neither does
    (``_drop_buffers``). ``_close_reason`` says why; ``PEER_KEPT`` (the peer closed and
    there is no handler) keeps the last input readable until ``close()``.
``_eof``: the peer ended its stream, or reset it. Set by a receive (the poller's, or a
    reader's ``_read_through_locked``); never cleared.
``_eof_handled``: the poller acted on the end of stream (detached the fd, woke readers);
    implies ``_eof``. Set once, by the poller (``_eof_locked``).
``_processing``: a task owns the connection (a request task, or the connect task from
    accept until ``on_connect`` returns). Set by whoever starts the task (the poller on
    input, ``set_on_request``, shutdown's ``_drain``; from construction for a server's
    connection); cleared only by the task itself when it ends. Never two tasks at once.
``_need``: bytes a reader waits for (0: nobody waits). Set and cleared by the waiting
    reader around its ``Condition`` wait; the poller notifies ``_cond`` when enough came.
``_paused``: the read limit stopped receiving (the fd watches hang-ups only). Set by the
    poller (``_pause_locked``), cleared by ``_maybe_resume_locked`` (a reader,
    ``release``, the task's end, ``set_read_buffer_limit``, a hang-up).
``_hup``: ``HUP_NONE`` -> ``HUP_SEEN`` (the peer hung up while paused; its last bytes
    wait in the kernel) -> ``HUP_DRAIN`` (read them all now; never pauses again).
``_connected``: ``on_connect`` returned (true from the start without a server). Until
    then input is kept, not handled. ``_disconnect_pending``: the end of stream came
    before that; ``on_disconnect`` is told once ``on_connect`` returns.
``_held_close``: a close during a task: its callbacks and the server's notice wait for
    the task's end (``_closed_notice``), so ``on_request`` always comes before them.
``_wshut``: ``close_write`` shut the sending side. ``_wwaiting``: flushes blocked in
    ``poll()`` on the fd (``_close`` wakes them by shutting the socket down).
``_wpend``/``_wpend_len``: writes queued by reference, not yet in ``_wb``.
``_hot``: the input keeps a receive block the poller's sweep watches (``maybe_shed``).
``_slow``, ``_slow_since``, ``_suspect``: the slow-handler marks (see ``_task``). Written
    without the lock by the task's thread and by the poller's monitor: each is one
    attribute store, and a lost update only costs one handler run in the other place.
``_bytes_in``, ``_bytes_out``: counters, written under the lock, read without it for
    statistics (a stale value is fine there).

Legal combinations worth knowing: closed with ``_processing`` or ``_need`` (work still
running, buffers kept); ``_need`` only while a reader waits; ``_paused`` never with
``_hup == HUP_DRAIN``; ``_eof_handled`` only with ``_eof``; ``not _connected`` only with
``_processing`` (the connect task owns the connection).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .. import _config
from .._config import log as _log
from .._linkbuffer import LinkBuffer, _check_size, _size_class
from .._poll._operator import FDOperator, PollEvent
from .._timeouts import timeout_value

if TYPE_CHECKING:
    from .._connection import Connection
    from .._poll._operator import FDOperator
    from .._poll._poller import Poller, Timer

__all__ = [
    "CLOSE_ERROR",
    "CLOSE_HANDLER",
    "CLOSE_IDLE_TIMEOUT",
    "CLOSE_PEER",
    "CLOSE_READ_TIMEOUT",
    "CLOSE_SHUTDOWN",
    "CLOSE_USER",
    "CLOSE_WRITE_TIMEOUT",
    "DEFAULT_READ_BUFFER_LIMIT",
    "HUP_DRAIN",
    "HUP_NONE",
    "HUP_SEEN",
    "PEER_KEPT",
    "CloseCallback",
    "ConnectionBase",
    "Hooks",
    "OnRequest",
    "check_read_limit",
    "lock_acquire",
    "lock_release",
    "sock_recv_into",
    "sock_send",
    "sock_sendmsg",
]

OnRequest = Callable[[Any, "Connection"], Any]
CloseCallback = Callable[["Connection"], Any]

# Values of _hup.
HUP_NONE: Final = 0
HUP_SEEN: Final = 1
HUP_DRAIN: Final = 2

# Reasons a connection was closed, for the server's statistics.
CLOSE_USER: Final = "user"
CLOSE_PEER: Final = "peer"
CLOSE_ERROR: Final = "error"
CLOSE_HANDLER: Final = "handler"
CLOSE_READ_TIMEOUT: Final = "read_timeout"
CLOSE_WRITE_TIMEOUT: Final = "write_timeout"
CLOSE_IDLE_TIMEOUT: Final = "idle_timeout"
CLOSE_SHUTDOWN: Final = "shutdown"
PEER_KEPT: Final = "peer, input kept"  # CLOSE_PEER with the last bytes left readable

DEFAULT_READ_BUFFER_LIMIT: Final = 64 << 20

# Methods of the lock and socket types, called as functions: the compiled build then
# calls the C method directly instead of looking it up by name on every call (a few
# hundred instructions each, a dozen times per request); the pure build is no slower.
_LockType = type(threading.Lock())
lock_acquire: Final = _LockType.acquire
lock_release: Final = _LockType.release
sock_recv_into: Final = socket.socket.recv_into
sock_send: Final = socket.socket.send
sock_sendmsg: Final = socket.socket.sendmsg


def check_read_limit(n: int, name: str = "read_buffer_limit") -> int:
    """A read buffer limit: a positive int (bytes)."""
    _check_size(n, name)
    if n == 0:
        raise ValueError(f"{name} must be > 0")
    return n


class Hooks:
    """What a server attaches to its connections: callbacks and bookkeeping."""

    __slots__ = ()
    draining = False  # a server shutting down: idle connections get ``on_idle``

    def on_idle(self, conn: Connection) -> None:  # pragma: no cover - interface
        pass

    def on_disconnect(self, conn: Connection) -> None:  # pragma: no cover - interface
        pass

    def on_closed(self, conn: Connection, reason: str) -> None:  # pragma: no cover
        pass

    def on_handler_error(self, conn: Connection, exc: BaseException) -> None:  # pragma: no cover
        pass

    def on_tls_handshake_failed(  # pragma: no cover - interface
        self, conn: Connection, timed_out: bool
    ) -> None:
        pass


class ConnectionBase:
    """The fields of a connection (see the module docstring) and how it closes."""

    __slots__ = (
        "__weakref__",
        "_bytes_in",
        "_bytes_out",
        "_close_callbacks",
        "_close_reason",
        "_closed",
        "_cond",
        "_connected",
        "_ctx",
        "_disconnect_pending",
        "_eof",
        "_eof_handled",
        "_fd",
        "_held_close",
        "_hooks",
        "_hot",
        "_hup",
        "_idle_seen",
        "_idle_timeout",
        "_idle_timer",
        "_in",
        "_last",
        "_local_addr",
        "_lock",
        "_need",
        "_on_eof",
        "_on_request",
        "_op",
        "_paused",
        "_poller",
        "_processing",
        "_read_limit",
        "_read_timeout",
        "_recv_base",
        "_recv_cls",
        "_remote_addr",
        "_shed_mark",
        "_slow",
        "_slow_since",
        "_sock",
        "_suspect",
        "_wb",
        "_wpend",
        "_wpend_len",
        "_write_timeout",
        "_wshut",
        "_wwaiting",
    )

    def __init__(
        self,
        sock: socket.socket,
        poller: Poller,
        *,
        on_request: OnRequest | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        read_buffer_limit: int | None = None,
        hooks: Hooks | None = None,
        remote_addr: Any = None,
    ) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._sock = sock
        self._fd = sock.fileno()
        self._poller = poller
        self._lock = threading.Lock()
        # Created on the first wait: a Condition costs ~1 KiB and most connections never wait.
        self._cond: threading.Condition | None = None
        self._in = LinkBuffer()
        self._hot = False
        self._shed_mark = -1
        self._wb: LinkBuffer | None = None  # the output buffer, made on first use
        self._wpend: list[bytes | memoryview] | None = None  # writes queued by reference
        self._wpend_len = 0
        self._closed = False
        self._eof = False
        self._eof_handled = False
        # A server's connection starts owned by its connect task (see _processing).
        self._processing = hooks is not None
        self._slow = False
        self._slow_since = 0.0
        self._suspect = False
        self._need = 0
        self._paused = False
        self._hup = HUP_NONE
        self._held_close: list[Any] | None = None  # [callbacks, reason]
        self._on_request = on_request
        self._on_eof: CloseCallback | None = None  # see set_on_eof
        self._ctx: Any = None
        self._hooks = hooks
        self._connected = hooks is None
        self._disconnect_pending = False
        self._read_timeout = timeout_value(read_timeout, "read_timeout")
        self._write_timeout = timeout_value(write_timeout, "write_timeout")
        self._idle_timeout = 0.0
        self._idle_timer: Timer | None = None
        self._read_limit = (
            DEFAULT_READ_BUFFER_LIMIT
            if read_buffer_limit is None
            else check_read_limit(read_buffer_limit)
        )
        self._close_callbacks: list[CloseCallback] | None = None
        self._close_reason = ""
        self._bytes_in = 0
        self._bytes_out = 0
        self._last = time.monotonic()  # when the idle check last saw activity
        self._idle_seen = 0
        self._wwaiting = 0
        self._wshut = False
        # Receive blocks start at the configured size and double (up to RECV_GROWTH
        # times it) while receives fill them, so a large message lands in one block and
        # reads of it copy nothing. They shrink back when the connection goes quiet.
        self._recv_base = self._recv_cls = _size_class(_config.get_config().buffer_size)
        self._in.keep_drained_block(self._recv_cls)
        self._local_addr: Any = None  # looked up on first use
        if remote_addr is None:
            try:
                remote_addr = sock.getpeername()
            except OSError:
                remote_addr = None
        self._remote_addr: Any = remote_addr
        # The fd's handler and owner are upper layers (receiving, the slow-handler hooks):
        # the object is a Connection by now, whatever class this code is in.
        me = self._me()
        self._op = FDOperator(self._fd, me._on_event, poller, me)

    def _me(self) -> Any:
        """This object as the ``Connection`` it is (the only concrete layer of the stack),
        for the callbacks that take one."""
        return self

    def is_active(self) -> bool:
        """False once either side closed the connection (a peer close included)."""
        return not self._closed and not self._eof and self._hup == HUP_NONE

    def _close(self, reason: str) -> None:
        with self._lock:
            if self._closed:
                if reason == CLOSE_USER and self._close_reason in (CLOSE_PEER, PEER_KEPT):
                    self._close_reason = CLOSE_USER  # buffered input is dropped now
                    if not self._processing and not self._need:
                        self._in.close()
                return
            self._closed = True
            # Closed by the peer with no handler to read its last bytes: they stay
            # readable (a reason of its own, so a handler set later changes nothing).
            keep = reason == CLOSE_PEER and self._on_request is None
            self._close_reason = PEER_KEPT if keep else reason
            self._op.control(PollEvent.DETACH)
            if self._wwaiting:
                try:  # wake the flusher that waits in poll() on this fd
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                self._sock.close()
            except OSError:
                pass
            if self._cond is not None:
                self._cond.notify_all()
            timer, self._idle_timer = self._idle_timer, None
            callbacks, self._close_callbacks = self._close_callbacks, None
            busy = self._processing or self._need
            held = self._processing
            if held:  # run when the task ends (_closed_notice): after its on_request
                self._held_close = [callbacks or [], reason]
            hot, self._hot = self._hot, False
        if timer is not None:
            timer.cancel()
        if hot:  # don't keep a closed connection alive until the sweep
            self._poller.forget_hot(self._me())
        if not busy:
            self._drop_buffers()
        if not held:
            self._notify_closed(callbacks, reason)

    def _notify_closed(self, callbacks: list[CloseCallback] | None, reason: str) -> None:
        conn = self._me()
        for cb in reversed(callbacks or ()):
            try:
                cb(conn)
            except Exception:
                _log.exception("netpoll: close callback failed on %r", self)
        if self._hooks is not None:
            self._hooks.on_closed(conn, reason)

    def _closed_notice(self) -> None:
        """A task ended: run the close callbacks and notice a close during it held back."""
        with self._lock:
            held, self._held_close = self._held_close, None
        if held is not None:
            self._notify_closed(held[0], held[1])

    def _readable_after_close(self) -> bool:
        """A connection closed because the peer ended the stream, with no handler to read
        its last bytes: they stay readable until ``close()``, then reads say PeerClosed."""
        return self._close_reason == PEER_KEPT

    def _drop_buffers(self) -> None:
        """Return the input buffer's memory once nobody can be using it."""
        with self._lock:
            if (
                self._closed
                and not self._processing
                and not self._need
                and not self._readable_after_close()
            ):
                self._in.close()
