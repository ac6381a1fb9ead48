"""Connection: a socket with a zero-copy input and output LinkBuffer, driven by a poller.

Two halves share one lock. The poller half (``_on_event``) receives straight into free
space of the input buffer and then either wakes a reader waiting for ``n`` bytes or starts
the request task. The user half (the Reader/Writer methods) reads from the input buffer,
writes into the output buffer, and on ``flush`` sends the buffer's views with one
``sendmsg`` from the calling thread; only when the kernel buffer is full does it wait.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from . import _config
from ._config import log as _log
from ._errors import (
    ConnectionClosedError,
    PeerClosedError,
    ReadTimeoutError,
    WriteTimeoutError,
    closed_error,
)
from ._linkbuffer import (
    POOL,
    LinkBuffer,
    _check_size,
    _delim_byte,
    _Node,
    _size_class,
    trim_line,
)
from ._nocopy import Reader, Writer, until_filling, writer_buffer
from ._poll._operator import FDOperator, PollEvent
from ._poll._poller import Poller, Timer, before_block, current_poller
from ._runner import SLOW_POOL, input_wait_begin, input_wait_end

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Connection", "OnRequest"]

_LockType = type(threading.Lock())


OnRequest = Callable[[Any, "Connection"], Any]
CloseCallback = Callable[["Connection"], Any]

# Methods of the lock and socket types, called as functions: the compiled build then
# calls the C method directly instead of looking it up by name on every call (a few
# hundred instructions each, a dozen times per request); the pure build is no slower.
_acquire: Final = _LockType.acquire
_release: Final = _LockType.release
_recv_into: Final = socket.socket.recv_into
_send: Final = socket.socket.send
_sendmsg: Final = socket.socket.sendmsg

_OPEN: Final = 0
_CLOSED: Final = 2
_MIN_RECV_FREE: Final = 2048  # below this much tail space, receive into a new node
DEFAULT_READ_BUFFER_LIMIT: Final = 64 << 20
_WAIT_SLICE: Final = 0.5  # a flush waiting for writability re-checks state this often
_MAX_PENDING_PARTS: Final = 64  # beyond this many queued writes, copy into the buffer
FIRST_REQUEST_GRACE: Final = 1.0  # shutdown: seconds a fresh connection has to send
_SLOW_HANDLER: Final = 0.001  # seconds; a handler run longer than this moves off the poller
# A connection marked slow runs its tasks on the slow pool until a run there is quick.
# A run there longer than _BLOCKED_ON_POOL blocked for sure (waiting for the GIL lasts a
# switch interval, 5 ms, at a time) and renews the mark; one between the two may just
# have waited for the GIL or been preempted, so after SLOW_RETRY seconds without a sure
# sign the connection gets another, timed, run on the poller: a mark earned by a run that
# was merely preempted cannot stick.
_BLOCKED_ON_POOL: Final = 0.02
SLOW_RETRY: Final = 1.0
_RECV_GROWTH: Final = 4  # receive blocks grow up to this many times the configured size

# Reasons a connection was closed, for the server's statistics.
CLOSE_USER: Final = "user"
CLOSE_PEER: Final = "peer"
CLOSE_ERROR: Final = "error"
CLOSE_HANDLER: Final = "handler"
CLOSE_READ_TIMEOUT: Final = "read_timeout"
CLOSE_WRITE_TIMEOUT: Final = "write_timeout"
CLOSE_IDLE_TIMEOUT: Final = "idle_timeout"
CLOSE_SHUTDOWN: Final = "shutdown"
_PEER_KEPT: Final = "peer, input kept"  # CLOSE_PEER with the last bytes left readable

_HUNG_UP: Final = 1  # values of Connection._hup
_DRAIN: Final = 2


def _timeout_value(t: float | None, name: str) -> float:
    """Seconds as a float, 0.0 meaning none: ``None``, 0, infinity and anything from
    ``NO_LIMIT`` seconds (about 31 years) up mean no limit."""
    if t is None:
        return 0.0
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(t).__name__}")
    if not t >= 0:  # NaN fails this too
        raise ValueError(f"{name} must be >= 0, got {t}")
    if t >= NO_LIMIT:  # also keeps deadlines within what the OS waits accept
        return 0.0
    return float(t)


NO_LIMIT: Final = 1e9  # seconds; a timeout this long or longer is no timeout
_MAX_KEEPALIVE: Final = 32767  # the kernel's limit for TCP_KEEPIDLE and TCP_KEEPINTVL


def _wait_limit(t: float | None, name: str) -> float | None:
    """Seconds a wait may last: ``None`` for no limit (``None``, infinity, ``NO_LIMIT``
    up), 0 for not waiting at all (where ``_timeout_value`` reads 0 as no limit)."""
    if t is None:
        return None
    seconds = _timeout_value(t, name)  # checks t
    return None if t >= NO_LIMIT else seconds


def _keepalive_seconds(t: float, name: str) -> int:
    """Whole seconds for a keepalive option, 1 to the kernel's limit (infinity: the limit)."""
    value = _timeout_value(t, name)
    if not value:
        return 1 if t == 0 else _MAX_KEEPALIVE
    return min(max(int(value), 1), _MAX_KEEPALIVE)


def _check_read_limit(n: int, name: str = "read_buffer_limit") -> int:
    _check_size(n, name)
    if n == 0:
        raise ValueError(f"{name} must be > 0")
    return n


class _Hooks:
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


class Connection:
    """A Reader and Writer over one socket; see ``netpoll.EventLoop`` and ``dial_connection``.

    Reads block (up to the read timeout) until enough bytes arrived. Views returned by
    reads stay valid until ``release()``. Writes collect in the output buffer and go out
    on ``flush()``. Writing from several threads at once needs the caller's own lock
    (or ``netpoll.mux.ShardQueue``), as in Netpoll.
    """

    __slots__ = (
        "__weakref__",
        "_bytes_in",
        "_bytes_out",
        "_close_callbacks",
        "_close_reason",
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
        "_state",
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
        idle_timeout: float | None = None,
        read_buffer_limit: int | None = None,
        hooks: _Hooks | None = None,
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
        self._hot = False  # the input keeps a drained block; the poller's sweep tracks it
        self._shed_mark = -1
        self._wb: LinkBuffer | None = None  # the output buffer, made on first use
        self._wpend: list[bytes | memoryview] | None = None  # queued by reference
        self._wpend_len = 0
        self._state = _OPEN
        self._eof = False  # the peer's end of stream (or a reset) was seen
        self._eof_handled = False
        self._processing = False
        self._slow = False  # its handler blocks invisibly: run tasks on the slow pool
        self._slow_since = 0.0  # when it was marked slow (see SLOW_RETRY)
        self._suspect = False  # time the next handler run (a slow batch, back from the pool)
        self._need = 0  # bytes a blocked reader waits for
        self._paused = False  # reading stopped by the read buffer limit
        # The peer hung up while reading was paused (_HUNG_UP): its last bytes wait in the
        # kernel; _DRAIN once the handler can go no further either: read to the end.
        self._hup = 0
        # Close callbacks and the server's notice, held back while a task runs (the order
        # is on_request... then close callbacks): [callbacks, reason].
        self._held_close: list[Any] | None = None
        self._on_request = on_request
        self._on_eof: CloseCallback | None = None  # see set_on_eof
        self._ctx: Any = None
        self._hooks = hooks
        self._connected = hooks is None  # on_connect finished (trivially, without a server)
        self._disconnect_pending = False
        self._read_timeout = _timeout_value(read_timeout, "read_timeout")
        self._write_timeout = _timeout_value(write_timeout, "write_timeout")
        self._idle_timeout = 0.0
        self._idle_timer: Timer | None = None
        self._read_limit = DEFAULT_READ_BUFFER_LIMIT
        if read_buffer_limit is not None:
            self.set_read_buffer_limit(read_buffer_limit)
        self._close_callbacks: list[CloseCallback] | None = None
        self._close_reason = ""
        self._bytes_in = 0
        self._bytes_out = 0
        self._last = time.monotonic()  # when the idle check last saw activity
        self._idle_seen = 0
        self._wwaiting = 0  # flushes waiting for the socket to take data
        self._wshut = False  # close_write() shut the sending side
        # Receive blocks start at the configured size and double (up to _RECV_GROWTH
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
        self._op = FDOperator(self._fd, self._on_event, poller, self)
        if idle_timeout:
            self.set_idle_timeout(idle_timeout)

    def _register(self) -> None:
        """Start receiving through the poller."""
        with self._lock:
            if self._state == _OPEN and not self._eof:
                self._op.control(PollEvent.READABLE)

    def __repr__(self) -> str:
        state = "open" if self.is_active() else "closed"
        return f"<netpoll.Connection fd={self._fd} {state} remote={self._remote_addr!r}>"

    # ------------------------------------------------------------------ poller half

    def _on_event(self, ev: int) -> None:
        # Registered for input only (a flush that must wait polls the fd itself), so every
        # event here means readable, hung up or failed: a receive tells which.
        start = eof = False
        lock = self._lock
        _acquire(lock)
        try:
            if self._state or self._eof_handled:  # _OPEN is 0
                return
            inb = self._in
            nodes = inb._nodes
            # Receive into the tail's free space, or a fresh pooled node (inlined
            # LinkBuffer.recv_target/commit_recv: this runs once per readable event). Every
            # node of an input buffer owns its block, so the tail's free space is writable.
            if nodes:
                tail = nodes[-1]
                w = tail.w
                if not w:
                    target = tail.mv  # the usual case: the kept block, drained and reset
                else:
                    free = tail.cap - w
                    # A short free tail still takes the rest of a frame a reader waits for
                    # (so the frame stays in one node), but never an empty one: recv_into
                    # would return 0, which reads as the end of the stream.
                    if free >= _MIN_RECV_FREE or (
                        free and self._need > inb._rlen and free >= self._need - inb._rlen
                    ):
                        target = tail.mv[w : tail.cap]  # nodes span their whole block
                    else:
                        tail = self._fresh_tail(nodes)
                        w = 0
                        target = tail.mv
            else:
                tail = self._fresh_tail(nodes)
                w = 0
                target = tail.mv
            try:
                n = _recv_into(self._sock, target)
            except (BlockingIOError, InterruptedError):
                inb.drop_empty_tail()
                return
            except OSError:
                n = 0  # a reset: treated as the end of the stream
            if n:
                w += n
                tail.w = w
                if w == tail.cap and self._recv_cls < self._recv_base * _RECV_GROWTH:
                    self._grow_recv()
                rlen = inb._rlen = inb._rlen + n
                self._bytes_in += n
                need = self._need
                if need:
                    if rlen >= need and self._cond is not None:
                        self._cond.notify_all()
                elif not self._processing and self._on_request is not None and self._connected:
                    self._processing = start = True
                if rlen >= self._read_limit and rlen >= need:
                    self._pause_locked()
            else:
                inb.drop_empty_tail()
                eof = True
                start = self._eof_locked()
        finally:
            _release(lock)
        if eof:
            self._after_eof(start)
        if start:
            if self._slow or self._poller.offload or _config._config.runner is not None:
                self._start_task()
            else:
                self._process(False)  # inline on the poller thread: the fast, common case

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
        if elapsed <= _SLOW_HANDLER or not (on_pool or current_poller() is not None):
            # Quick, or a leader that handed off before a wait the library saw: fine.
            self._slow = False
            self._suspect = False
            return False
        if not on_pool or not self._slow or elapsed > _BLOCKED_ON_POOL:
            # Slow on the poller, on the pool while its poller offloads, or blocked for
            # sure on the pool: (still) slow from now on.
            self._slow_since = now
            self._slow = True
            return True
        if now - self._slow_since > SLOW_RETRY:
            self._slow = False  # no sure sign for a while: another, timed, try inline
            self._suspect = True
            return False
        return True

    def _grow_recv(self) -> None:
        """A receive filled its block: the next fresh block is twice as large."""
        self._recv_cls <<= 1
        self._in.keep_drained_block(self._recv_cls)
        if not self._hot:  # the poller's sweep brings the size back down when quiet
            self._hot = True
            self._poller.note_hot(self)

    def _fresh_tail(self, nodes: list[_Node]) -> _Node:
        """Append a fresh pooled receive node; the poller's sweep will reclaim it when quiet."""
        tail = POOL.take(self._recv_cls)
        nodes.append(tail)
        if not self._hot:
            self._hot = True
            self._poller.note_hot(self)
        return tail

    def _eof_locked(self) -> bool:
        """The peer ended the stream: stop watching and wake readers.

        Returns True when the request task must run to deliver what is still buffered.
        """
        self._eof = True
        self._eof_handled = True
        self._op.control(PollEvent.DETACH)
        if self._cond is not None:
            self._cond.notify_all()
        if (
            self._connected
            and not self._processing
            and self._in._rlen
            and self._on_request is not None
        ):
            self._processing = True
            return True
        return False

    def _after_eof(self, delivering: bool) -> None:
        """Outside the lock: tell the server, and close unless a task will close later."""
        with self._lock:
            connected = self._connected
            if not connected:
                self._disconnect_pending = True
            close_now = (
                connected and not delivering and not self._processing and self._state == _OPEN
            )
        if self._hooks is not None and connected:
            self._hooks.on_disconnect(self)
        if close_now:
            self._end_of_stream()

    def _end_of_stream(self) -> None:
        """Everything the peer sent before its end of stream was delivered: close, or hand
        the half-open connection to ``on_eof`` once (see ``set_on_eof``)."""
        with self._lock:
            fn, self._on_eof = self._on_eof, None
            if self._state != _OPEN:
                return
        if fn is None:
            self._close(CLOSE_PEER)
            return
        try:
            fn(self)
        except Exception:
            _log.exception("netpoll: on_eof raised on %r; closing it", self)
            self._close(CLOSE_HANDLER)

    def maybe_shed(self) -> bool:
        """Poller sweep: return the kept receive block if nothing arrived since last look."""
        with self._lock:
            if self._state != _OPEN:
                self._hot = False
                return True
            if self._bytes_in != self._shed_mark or self._processing or self._need:
                self._shed_mark = self._bytes_in
                return False
            if self._in.shed() or not self._in._nodes:
                self._hot = False
                self._recv_cls = self._recv_base  # quiet now: start small again
                self._in.keep_drained_block(self._recv_base)
                return True
            return False

    def _pause_locked(self) -> None:
        if not self._paused and self._hup != _DRAIN:
            self._paused = True
            # Input stops (TCP pushes back), but a hang-up still reports (_on_hangup). The
            # bound method is made here: idle connections should not each hold one.
            self._op.control(PollEvent.HANGUP, self._on_hangup)

    def _on_hangup(self, ev: int) -> None:
        """The peer hung up while reading is paused: inactive from now on.

        What it sent before stays in the kernel while a task runs, until the handler makes
        room (draining it at once would break the read limit); reading then resumes and
        meets the end of the stream as usual (on_disconnect, close). A handler that is
        idle cannot make room, so then the rest is read at once (_maybe_resume_locked).
        """
        with self._lock:
            if self._paused and not self._state and not self._eof_handled:
                self._hup = _HUNG_UP
                self._op.control(PollEvent.DETACH)  # level-triggered: it would repeat
                self._maybe_resume_locked()  # an idle handler cannot free room: drain

    def _maybe_resume_locked(self) -> None:
        """Read again once the handler made room, or for good once the peer hung up while
        the handler, idle, waits for more than fits (what is left is bounded by the
        kernel's buffer, and nobody else can free room)."""
        if not self._paused:
            return
        if self._in._rlen >= max(self._read_limit, self._need):
            if not (self._hup and not self._processing and not self._need):
                return
            self._hup = _DRAIN
        self._paused = False
        if self._state == _OPEN and not self._eof_handled:
            self._op.control(PollEvent.READABLE)

    def _start_task(self) -> None:
        runner = _config._config.runner
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
                self._ctx = on_connect(self._ctx, self)
            except BaseException as exc:  # SystemExit too: a handler never kills a poller
                self._handler_failed(exc)
                return
        with self._lock:
            self._connected = True
            pending = self._disconnect_pending
            self._disconnect_pending = False
            run = bool(self._in._rlen) and self._on_request is not None and self._state == _OPEN
            if not run:
                self._processing = False
            eof = self._eof
        if pending and self._hooks is not None:
            self._hooks.on_disconnect(self)
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
                    handler(self._ctx, self)
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
            _acquire(lock)
            again = False  # not `continue` in the try: mypyc does not compile that
            try:
                left = inb._rlen
                current = self._on_request
                # == as well as is: a handler that installs itself again as a bound
                # method installs an equal, not the same, object.
                if not self._state and (handler is current or handler == current):
                    if left and (left != before or self._bytes_in != received):
                        if slow and not on_pool:
                            # Still processing: the rest of the input is the pool's.
                            SLOW_POOL.submit(self._process_on_pool)
                            return
                        replaced = False
                        again = True
                elif (
                    not self._state
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
                    closed = self._state
                    eof = self._eof
            finally:
                _release(lock)
            if not again:
                break
        if closed or eof:
            if closed:
                self._drop_buffers()
                self._closed_notice()
            else:
                self._end_of_stream()
        elif self._hooks is not None and self._hooks.draining:
            self._hooks.on_idle(self)

    def _drain(self) -> None:
        """Shutdown: close unless busy; answer input already here first (on the poller,
        not the caller's thread, so no handler outlasts shutdown's timeout). A connection
        that has not sent a byte yet, accepted just before the shutdown, gets
        FIRST_REQUEST_GRACE seconds for its first request: closing it at once would fail
        a client that connected in time (a worker replaced on SIGHUP, for one)."""
        with self._lock:
            if self._state != _OPEN or self._processing or self._need:
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
            if self._state != _OPEN or self._processing or self._need or self._in._rlen:
                return
        self._close(CLOSE_SHUTDOWN)

    def _handler_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._processing = False
            state = self._state
        if isinstance(exc, ReadTimeoutError):
            reason = CLOSE_READ_TIMEOUT
            _log.debug("netpoll: read timeout on %r; closing", self)
        elif isinstance(exc, WriteTimeoutError):
            reason = CLOSE_WRITE_TIMEOUT
        elif isinstance(exc, PeerClosedError) or (
            isinstance(exc, ConnectionClosedError) and state != _OPEN
        ):
            reason = CLOSE_PEER
        else:
            reason = CLOSE_HANDLER
            _log.error("netpoll: handler raised on %r; closing it", self, exc_info=exc)
            if self._hooks is not None:
                self._hooks.on_handler_error(self, exc)
        self._close(reason)
        self._drop_buffers()
        self._closed_notice()

    # ------------------------------------------------------------------ state

    def is_active(self) -> bool:
        """False once either side closed the connection (a peer close included)."""
        return self._state == _OPEN and not self._eof and not self._hup

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self._fd if self._state == _OPEN else -1

    @property
    def local_addr(self) -> Any:
        """This end's address, in the ``socket`` module's form."""
        addr = self._local_addr
        if addr is None and self._state == _OPEN:
            try:
                addr = self._local_addr = self._sock.getsockname()
            except OSError:
                return None
        return addr

    @property
    def remote_addr(self) -> Any:
        """The peer's address, in the ``socket`` module's form."""
        return self._remote_addr

    @property
    def reader(self) -> Reader:
        """The connection's Reader (the connection itself)."""
        return self

    @property
    def writer(self) -> Writer:
        """The connection's Writer (the connection itself)."""
        return self

    @property
    def poller(self) -> Poller:
        """The poller this connection is registered with."""
        return self._poller

    @property
    def bytes_received(self) -> int:
        return self._bytes_in

    @property
    def bytes_sent(self) -> int:
        return self._bytes_out

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent); close callbacks run once, newest first."""
        self._close(CLOSE_USER)

    def _close(self, reason: str) -> None:
        with self._lock:
            if self._state == _CLOSED:
                if reason == CLOSE_USER and self._close_reason in (CLOSE_PEER, _PEER_KEPT):
                    self._close_reason = CLOSE_USER  # buffered input is dropped now
                    if not self._processing and not self._need:
                        self._in.close()
                return
            self._state = _CLOSED
            # Closed by the peer with no handler to read its last bytes: they stay
            # readable (a reason of its own, so a handler set later changes nothing).
            keep = reason == CLOSE_PEER and self._on_request is None
            self._close_reason = _PEER_KEPT if keep else reason
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
        if hot:
            self._poller.forget_hot(self)  # don't keep a closed connection alive until the sweep
        if not busy:
            self._drop_buffers()
        if not held:
            self._notify_closed(callbacks, reason)

    def _notify_closed(self, callbacks: list[CloseCallback] | None, reason: str) -> None:
        for cb in reversed(callbacks or ()):
            try:
                cb(self)
            except Exception:
                _log.exception("netpoll: close callback failed on %r", self)
        if self._hooks is not None:
            self._hooks.on_closed(self, reason)

    def _closed_notice(self) -> None:
        """A task ended: run the close callbacks and notice a close during it held back."""
        with self._lock:
            held, self._held_close = self._held_close, None
        if held is not None:
            self._notify_closed(held[0], held[1])

    def _readable_after_close(self) -> bool:
        """A connection closed because the peer ended the stream, with no handler to read
        its last bytes: they stay readable until ``close()``, then reads say PeerClosed."""
        return self._close_reason == _PEER_KEPT

    def _drop_buffers(self) -> None:
        """Return the input buffer's memory once nobody can be using it."""
        with self._lock:
            if (
                self._state == _CLOSED
                and not self._processing
                and not self._need
                and not self._readable_after_close()
            ):
                self._in.close()

    def add_close_callback(self, fn: CloseCallback) -> None:
        """Call ``fn(conn)`` once when the connection closes, whoever closes it."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._lock:
            if self._state != _CLOSED:
                if self._close_callbacks is None:
                    self._close_callbacks = [fn]
                else:
                    self._close_callbacks.append(fn)
                return
            if self._held_close is not None:  # closed while a task runs: with the others
                self._held_close[0].append(fn)
                return
        fn(self)  # already closed: run it now, still exactly once

    def set_on_request(self, fn: OnRequest | None) -> None:
        """Replace the request handler; on a dialed connection it receives responses."""
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._lock:
            self._on_request = fn
            start = (
                fn is not None
                and not self._processing
                and self._connected
                and self._in._rlen > 0
                and (self._state == _OPEN or self._readable_after_close())
            )
            if start:
                self._processing = True
        if start:
            self._poller.call_later(0, self._start_task)

    def set_on_eof(self, fn: CloseCallback | None) -> None:
        """Keep the connection open for writing when the peer ends its stream.

        By default a connection closes once the peer's end of stream was seen and the
        input before it delivered (Netpoll's behaviour). With ``fn`` set, ``fn(conn)``
        runs once at that point instead, and the connection stays open: a half-closed
        peer can still be written to (asyncio's ``eof_received`` returning True). Reads
        past the input raise ``PeerClosedError``; ``fn`` or later code calls ``close()``.
        """
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable or None, not {type(fn).__name__}")
        with self._lock:
            self._on_eof = fn

    def set_read_timeout(self, t: float | None) -> None:
        """Seconds a read may wait for data; ``None`` or 0 waits forever."""
        self._read_timeout = _timeout_value(t, "t")

    def set_write_timeout(self, t: float | None) -> None:
        """Seconds a flush may wait for the peer to take data; ``None`` or 0 waits forever."""
        self._write_timeout = _timeout_value(t, "t")

    def set_idle_timeout(self, t: float | None) -> None:
        """Close the connection after ``t`` seconds with nothing sent or received."""
        value = _timeout_value(t, "t")
        with self._lock:
            self._idle_timeout = value
            old, self._idle_timer = self._idle_timer, None
            if value and self._state == _OPEN:
                self._last = time.monotonic()
                self._idle_seen = self._bytes_in + self._bytes_out
                self._idle_timer = self._poller.call_later(value / 4, self._idle_check)
        if old is not None:
            old.cancel()

    def _idle_check(self) -> None:
        # Activity is seen by the byte counters moving between checks, so the receive and
        # send paths need not read a clock. A check every quarter of the timeout bounds
        # the close to between t and 1.25 t after the last byte. A handler at work counts
        # as activity (its peer awaits the answer); one waiting for input does not.
        with self._lock:
            t = self._idle_timeout
            if not t or self._state != _OPEN:
                return
            now = time.monotonic()
            seen = self._bytes_in + self._bytes_out
            if seen != self._idle_seen or (self._processing and not self._need):
                self._idle_seen = seen
                self._last = now
            left = self._last + t - now
            if left > 0:
                self._idle_timer = self._poller.call_later(min(left, t / 4), self._idle_check)
                return
            self._idle_timer = None
        _log.debug("netpoll: idle timeout on %r", self)
        self._close(CLOSE_IDLE_TIMEOUT)

    def set_read_buffer_limit(self, n: int) -> None:
        """Stop reading the socket while ``n`` unread bytes are buffered (TCP pushes back)."""
        _check_read_limit(n, "n")
        with self._lock:
            self._read_limit = n
            if self._paused:
                self._maybe_resume_locked()

    def set_keepalive(self, idle: float | None, interval: float | None = None) -> None:
        """Turn TCP keepalive on with probes after ``idle`` seconds, or off with ``None``."""
        sock = self._sock
        if idle is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
            return
        idle_s = _keepalive_seconds(idle, "idle")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
            every = idle_s if not interval else _keepalive_seconds(interval, "interval")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, every)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self._in._rlen

    def len(self) -> int:
        """Readable bytes buffered now."""
        return self._in._rlen

    def _check_readable_locked(self) -> None:
        """Raise unless reads are allowed: open, or kept readable after a peer close."""
        if self._state != _OPEN and not self._readable_after_close():
            raise ConnectionClosedError("connection is closed")

    def _ensure_locked(self, n: int) -> None:
        """Wait, lock held, until ``n`` bytes are buffered; raise on timeout or close."""
        inb = self._in
        self._check_readable_locked()
        if inb._rlen >= n:
            return
        timeout = self._read_timeout
        deadline = time.monotonic() + timeout if timeout else 0.0
        while inb._rlen < n:
            if self._state != _OPEN and not self._readable_after_close():
                if not self._processing:
                    # Closed while this reader waited: close() left the buffer to it (a
                    # reader might still be using it); hand its blocks back now.
                    inb.close()
                raise ConnectionClosedError("connection is closed")
            if self._eof:
                raise PeerClosedError(
                    f"peer closed the connection: need {n} bytes, {inb._rlen} buffered"
                )
            if self._read_through_locked(n):
                continue
            if deadline:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReadTimeoutError(
                        f"read timed out after {timeout}s waiting for {n} bytes "
                        f"({inb._rlen} buffered)"
                    )
            else:
                left = None
            self._need = n
            if n <= self._recv_base << 1:
                # A large frame then arrives contiguous and next(n) copies nothing. Bounded:
                # a length a peer merely claims must not pin memory it never sends.
                inb.reserve(n)
            if self._paused:
                self._maybe_resume_locked()
            before_block()
            cond = self._cond
            if cond is None:
                cond = self._cond = threading.Condition(self._lock)
            freed = input_wait_begin()  # a pool thread waiting for a peer holds no slot
            try:
                cond.wait(left)
            finally:
                self._need = 0
                input_wait_end(freed)

    def _read_through_locked(self, need: int = 0) -> bool:
        """Receive straight from the socket on the reader's thread; True if bytes came.

        Saves a thread hand-off when the data is already in the kernel (a large frame
        whose first part the poller took). End of stream is left for the poller to see.
        """
        if self._paused or self._eof_handled:
            return False
        inb = self._in
        min_free = min(_MIN_RECV_FREE, max(need - inb._rlen, 1))
        target = inb.recv_target(min_free, self._recv_cls)
        try:
            n = _recv_into(self._sock, target)
        except (BlockingIOError, InterruptedError):
            inb.drop_empty_tail()
            return False
        except OSError:
            n = 0
        if n:
            inb.commit_recv(n)
            if n == len(target) and self._recv_cls < self._recv_base * _RECV_GROWTH:
                self._grow_recv()
            self._bytes_in += n
            return True
        inb.drop_empty_tail()
        self._eof = True  # the poller's next look at the fd does the rest
        return False

    def next(self, n: int) -> memoryview:
        """The next ``n`` bytes, zero-copy when possible; blocks until they arrive."""
        lock = self._lock
        _acquire(lock)
        try:
            inb = self._in
            if type(n) is int and 0 < n <= inb._rlen and not self._state:
                node = inb._nodes[inb._hi]
                r = node.r
                e = r + n
                if e <= node.w:  # the common case, LinkBuffer.next inlined
                    node.r = e
                    inb._rlen -= n
                    ev = node.ev
                    if ev is None:  # _hand_out inlined: input nodes always own a block
                        ev = node.ev = memoryview(node.buf)  # type: ignore[arg-type]
                    v = ev[r:e]
                    views = inb._views
                    if views is None:
                        inb._views = [v]
                    else:
                        views.append(v)
                    return v
                return inb.next(n)
            _check_size(n)
            self._ensure_locked(n)
            return inb.next(n)
        finally:
            _release(lock)

    def peek(self, n: int) -> memoryview:
        """Like ``next`` without advancing."""
        lock = self._lock
        _acquire(lock)
        try:
            if type(n) is not int or n > self._in._rlen or self._state:
                _check_size(n)  # the bytes are not all here yet, or something is wrong
                self._ensure_locked(n)
            return self._in.peek(n)
        finally:
            _release(lock)

    def skip(self, n: int) -> None:
        """Advance ``n`` bytes, waiting for them if needed."""
        lock = self._lock
        _acquire(lock)
        try:
            inb = self._in
            if type(n) is int and 0 < n <= inb._rlen and not self._state:
                node = inb._nodes[inb._hi]
                if node.w - node.r >= n:  # in the head node: LinkBuffer.skip inlined
                    node.r += n
                    inb._rlen -= n
                else:
                    inb.skip(n)
                return
            _check_size(n)
            self._ensure_locked(n)
            inb.skip(n)
        finally:
            _release(lock)

    def until(self, delim: int | bytes) -> memoryview:
        """Data up to and including ``delim``; on a peer close first, ``PeerClosedError.partial``
        holds what was buffered."""
        byte = _delim_byte(delim)
        lock = self._lock
        _acquire(lock)
        try:
            inb = self._in
            if not self._state:
                pos = inb._find(byte)
                if pos >= 0:  # the delimiter is here already: one lock round, no waiting
                    return inb.next(pos + 1)
            self._check_readable_locked()
            return until_filling(inb, byte, self._ensure_locked)
        finally:
            _release(lock)

    def read_line(self) -> memoryview:
        """One line without ``\\n`` or ``\\r\\n``."""
        lock = self._lock
        _acquire(lock)
        try:
            inb = self._in
            pos = inb._find(10) if not self._state else -1
            if pos >= 0:
                line = inb.next(pos + 1)
            else:
                self._check_readable_locked()
                line = until_filling(inb, 10, self._ensure_locked)
            out = trim_line(line)
            inb._track(out)
            return out
        finally:
            _release(lock)

    def read_binary(self, n: int) -> bytes:
        """The next ``n`` bytes as a ``bytes`` copy."""
        lock = self._lock
        _acquire(lock)
        try:
            inb = self._in
            if type(n) is not int or n > inb._rlen or self._state:
                _check_size(n)  # the bytes are not all here yet, or something is wrong
                self._ensure_locked(n)
            return inb.read_binary(n)
        finally:
            _release(lock)

    def read_string(self, n: int, encoding: str = "utf-8") -> str:
        """The next ``n`` bytes decoded."""
        _check_size(n)
        with self._lock:
            self._ensure_locked(n)
            return self._in.read_string(n, encoding)

    def read_byte(self) -> int:
        """The next byte as an int."""
        with self._lock:
            self._ensure_locked(1)
            return self._in.read_byte()

    def slice(self, n: int) -> Reader:
        """An independent LinkBuffer over the next ``n`` bytes (zero-copy)."""
        _check_size(n)
        with self._lock:
            self._ensure_locked(n)
            return self._in.slice(n)

    def release(self) -> None:
        """Free what was read; views handed out before become unusable."""
        lock = self._lock
        _acquire(lock)
        try:
            if self._state and not self._readable_after_close():
                raise ConnectionClosedError("connection is closed")
            self._in.release()
            if self._paused:
                self._maybe_resume_locked()
        finally:
            _release(lock)

    def read(self, n: int = -1) -> bytes:
        """Copying read as in Go's ``net.Conn``: wait for a byte, return up to ``n``.

        Returns ``b""`` at the end of the stream.
        """
        if type(n) is not int:
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        with self._lock:
            self._check_readable_locked()  # a closed connection raises, even for n == 0
            if n == 0:
                return b""
            inb = self._in
            if not inb._rlen:
                try:
                    self._ensure_locked(1)
                except PeerClosedError:
                    return b""
            k = inb._rlen if n < 0 else min(n, inb._rlen)
            data = inb.read_binary(k)
            inb.release()
            if self._paused:
                self._maybe_resume_locked()
            return data

    def readinto(self, b: Any) -> int:
        """Copying read into a writable buffer; 0 at the end of the stream."""
        out = memoryview(b).cast("B")
        if out.readonly:  # checked first: nothing is consumed, nothing waited for
            raise TypeError(f"readinto() needs a writable buffer, got read-only {type(b).__name__}")
        with self._lock:
            self._check_readable_locked()  # a closed connection raises, even for len(b) 0
            if not len(out):
                return 0
            inb = self._in
            if not inb._rlen:
                try:
                    self._ensure_locked(1)
                except PeerClosedError:
                    return 0
            k = min(len(out), inb._rlen)
            out[:k] = inb.next(k)
            inb.release()
            if self._paused:
                self._maybe_resume_locked()
            return k

    # ------------------------------------------------------------------ writing

    # Every Writer call and every flush runs under the connection's lock, so the bytes of
    # one call never interleave with another thread's and none is lost or sent twice
    # (keeping several calls together, a frame's header and body, stays the caller's job).
    #
    # write_binary of bytes or memoryviews into an empty output buffer is queued by
    # reference in ``_wpend`` instead of being copied into nodes: flush hands the queue to
    # one send/sendmsg. Any other writer call first moves the queue into the buffer
    # (``_spill``), which keeps the order.

    def _check_writable_locked(self) -> None:
        if self._state != _OPEN:
            raise ConnectionClosedError("connection is closed")
        if self._wshut:
            raise ConnectionClosedError("the sending side is shut down (close_write)")

    @property
    def _wbuf(self) -> LinkBuffer:
        wb = self._wb
        if wb is None:
            wb = self._wb = LinkBuffer()
        return wb

    def _spill(self) -> None:
        parts = self._wpend
        if parts:
            for p in parts:
                if type(p) is memoryview:
                    try:
                        p.nbytes  # noqa: B018  # raises once released
                    except ValueError:
                        raise self._released_write() from None
            self._wpend = None
            self._wpend_len = 0
            wb = self._wbuf
            for p in parts:
                wb.write_binary(p)

    def malloc(self, n: int) -> memoryview:
        """A writable view of ``n`` bytes, sent at the next flush."""
        with self._lock:
            if self._state or self._wshut:
                self._check_writable_locked()
            if self._wpend:
                self._spill()
            return self._wbuf.malloc(n)

    def malloc_len(self) -> int:
        """Bytes written or allocated and not yet flushed."""
        with self._lock:
            if self._state != _OPEN:
                self._check_writable_locked()
            wb = self._wb
            return (0 if wb is None else wb._wlen) + self._wpend_len

    def malloc_ack(self, n: int) -> None:
        """Keep the first ``n`` unflushed bytes; drop the rest."""
        with self._lock:
            self._check_writable_locked()
            self._spill()
            self._wbuf.malloc_ack(n)

    def write_binary(self, b: bytes | bytearray | memoryview) -> int:
        """Append bytes for the next flush; don't mutate ``b`` until then (it may be referenced)."""
        t = type(b)
        # Immutable bytes and contiguous views are queued by reference (see _wpend).
        if t is memoryview:
            n = b.nbytes if b.c_contiguous else -1  # type: ignore[union-attr]
        else:
            n = len(b) if t is bytes else -1
        lock = self._lock
        _acquire(lock)
        try:
            if self._state or self._wshut:
                self._check_writable_locked()
            if n >= 0:
                wb = self._wb
                if wb is None or not wb._nodes:
                    parts = self._wpend
                    if parts is None:
                        self._wpend = [b]  # type: ignore[list-item]  # bytes or a view, by n
                    elif len(parts) < _MAX_PENDING_PARTS:
                        parts.append(b)  # type: ignore[arg-type]
                    else:
                        self._spill()
                        return self._wbuf.write_binary(b)
                    self._wpend_len += n
                    return n
            if self._wpend:
                self._spill()
            return self._wbuf.write_binary(b)
        finally:
            _release(lock)

    def write_string(self, s: str, encoding: str = "utf-8") -> int:
        with self._lock:
            self._check_writable_locked()
            self._spill()
            return self._wbuf.write_string(s, encoding)

    def write_byte(self, b: int) -> None:
        with self._lock:
            self._check_writable_locked()
            self._spill()
            self._wbuf.write_byte(b)

    def write_direct(self, p: bytes | bytearray | memoryview, remain_cap: int) -> None:
        with self._lock:
            self._check_writable_locked()
            self._spill()
            self._wbuf.write_direct(p, remain_cap)

    def append(self, w: Writer) -> None:
        """Move ``w``'s unflushed data to this connection's output, zero-copy."""
        src = writer_buffer(w)
        with self._lock:
            self._check_writable_locked()
            self._spill()
            self._wbuf.append(src)

    def write(self, b: bytes | bytearray | memoryview) -> int:
        """Copying write as in Go's ``net.Conn``: append ``b`` and flush."""
        n = self.write_binary(b)
        self.flush()
        return n

    def flush(self) -> None:
        """Send everything written; waits at most the write timeout while the kernel is full.

        A write timeout closes the connection: part of the data may have gone out, so the
        stream can no longer be trusted.
        """
        lock = self._lock
        _acquire(lock)
        try:
            if self._state or self._wshut:
                self._check_writable_locked()
            parts = self._wpend
            wb = self._wb
            if parts:
                if wb is None or not wb._nodes:
                    try:
                        n = (
                            _send(self._sock, parts[0])
                            if len(parts) == 1
                            else _sendmsg(self._sock, parts)
                        )
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    except OSError:
                        n = 0  # the slow path below meets the error again and reports it
                    except ValueError:
                        raise self._released_write() from None
                    self._bytes_out += n
                    if n == self._wpend_len:
                        parts.clear()
                        self._wpend_len = 0
                        return
                    self._drop_sent_parts(n)
                self._spill()
                wb = self._wb
            if wb is None:
                return
            wb._publish()  # sent before flush returns, so borrowed data needs no copy
            if not wb._rlen:
                return
        finally:
            _release(lock)
        self._flush_buffer(wb)

    def close_write(self) -> None:
        """Half-close (Go's ``TCPConn.CloseWrite``): flush, then shut the sending side.

        The peer reads the end of the stream; reading here goes on until it closes too.
        Later writes raise ``ConnectionClosedError``; a second call does nothing.
        """
        with self._lock:
            if self._state != _OPEN:
                raise ConnectionClosedError("connection is closed")
            if self._wshut:
                return
        self.flush()
        with self._lock:
            if self._state != _OPEN:
                raise ConnectionClosedError("connection is closed")
            if not self._wshut:
                self._wshut = True
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    raise closed_error(exc) from exc

    def _released_write(self) -> ValueError:
        """A queued view was released before the flush: drop the queue, which can no longer
        be sent, and say what happened."""
        self._wpend = None
        self._wpend_len = 0
        return ValueError(
            "a view given to write_binary() was released before flush(); "
            "nothing queued since the last flush was sent (flush before release())"
        )

    def _drop_sent_parts(self, n: int) -> None:
        """Forget the first ``n`` bytes of the pending queue (the kernel took them)."""
        parts = self._wpend
        if parts is None:  # pragma: no cover - callers hold the lock and saw a queue
            raise RuntimeError("no queued writes to drop")
        self._wpend_len -= n
        while n:
            first = memoryview(parts[0]).cast("B")  # sizes are in bytes, whatever the format
            if len(first) <= n:
                n -= len(first)
                del parts[0]
            else:
                parts[0] = first[n:]
                n = 0

    def _flush_buffer(self, out: LinkBuffer) -> None:
        """Send what the output buffer holds, waiting while the kernel's buffer is full."""
        deadline = 0.0
        waiting = False  # counted in _wwaiting (close() then wakes the wait)
        try:
            while True:
                err: ConnectionClosedError | None = None
                with self._lock:
                    if waiting:
                        self._wwaiting -= 1
                        waiting = False
                    if self._state != _OPEN:
                        raise ConnectionClosedError("connection is closed")
                    sock = self._sock
                    try:
                        while out._rlen:
                            views = out.send_views()
                            n = _send(sock, views[0]) if len(views) == 1 else _sendmsg(sock, views)
                            out.consume_sent(n)
                            self._bytes_out += n
                        return
                    except (BlockingIOError, InterruptedError):
                        self._wwaiting += 1
                        waiting = True
                    except OSError as exc:
                        err = closed_error(exc)
                if err is not None:
                    self._close(CLOSE_ERROR)
                    raise err
                deadline = self._wait_writable(deadline)
        finally:
            if waiting:
                with self._lock:
                    self._wwaiting -= 1

    def _wait_writable(self, deadline: float) -> float:
        """Block until the socket is writable; raise WriteTimeoutError past the deadline."""
        timeout = self._write_timeout
        now = time.monotonic()
        if timeout and not deadline:
            deadline = now + timeout
        before_block()
        p = select.poll()
        p.register(self._fd, select.POLLOUT)
        freed = input_wait_begin()  # waiting for the peer: a pool thread holds no slot
        try:
            while True:
                if self._state != _OPEN:
                    raise ConnectionClosedError("connection is closed")
                left = (
                    _WAIT_SLICE if not deadline else min(deadline - time.monotonic(), _WAIT_SLICE)
                )
                if left <= 0:
                    err = WriteTimeoutError(
                        f"write timed out after {timeout}s with {self._wbuf._rlen} bytes unsent"
                    )
                    self._close(CLOSE_WRITE_TIMEOUT)
                    raise err
                if p.poll(int(left * 1000) + 1):
                    return deadline
        finally:
            input_wait_end(freed)
