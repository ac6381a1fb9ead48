"""Connection: a socket with a zero-copy input and output LinkBuffer, driven by a poller.

The class is the top of a stack of layers (``netpoll._conn``: state, receiving, tasks,
reading, writing; ``_conn/_state.py`` documents every flag and the lock order). This
layer holds the settings, the addresses, closing by the user, and the entry points the
server, the dialer and the listener use.

Two halves share one lock. The poller half receives straight into free space of the
input buffer and then either wakes a reader waiting for ``n`` bytes or starts the
request task. The user half (the Reader/Writer methods) reads from the input buffer,
writes into the output buffer, and on ``flush`` sends the buffer's views with one
``sendmsg`` from the calling thread; only when the kernel buffer is full does it wait.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._config import CONFIG
from ._config import log as _log
from ._conn._state import (
    CLOSE_HANDLER,
    CLOSE_IDLE_TIMEOUT,
    CLOSE_SHUTDOWN,
    CLOSE_USER,
    CloseCallback,
    OnRequest,
    check_read_limit,
    lock_acquire,
    lock_release,
    sock_send,
    sock_sendmsg,
)
from ._conn._write import MAX_PENDING_PARTS, Writing
from ._errors import ConnectionClosedError, PeerClosedError, closed_error
from ._linkbuffer import MemoryView, _check_size, _delim_byte, trim_line
from ._nocopy import Reader, Writer, until_filling, writer_buffer
from ._poll._operator import PollEvent
from ._poll._poller import Poller
from ._timeouts import keepalive_seconds, timeout_value

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Connection", "OnRequest"]


class Connection(Writing):
    """A Reader and Writer over one socket; see ``netpoll.EventLoop`` and ``dial_connection``.

    Reads block (up to the read timeout) until enough bytes arrived. Views returned by
    reads stay valid until ``release()``. Writes collect in the output buffer and go out
    on ``flush()``. Writing from several threads at once needs the caller's own lock
    (or ``netpoll.mux.ShardQueue``), as in Netpoll.

    ``attach``, ``serve_accepted``, ``shutdown_drain`` and ``shutdown_close`` are how the
    library's own server, dialer and listener drive a connection; applications don't
    need them.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        state = "open" if self.is_active() else "closed"
        return f"<netpoll.Connection fd={self._fd} {state} remote={self._remote_addr!r}>"

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self._fd if not self._closed else -1

    @property
    def local_addr(self) -> Any:
        """This end's address, in the ``socket`` module's form."""
        addr = self._local_addr
        if addr is None and not self._closed:
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

    def add_close_callback(self, fn: CloseCallback) -> None:
        """Call ``fn(conn)`` once when the connection closes, whoever closes it."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._lock:
            if not self._closed:
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
                and (not self._closed or self._readable_after_close())
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
        self._read_timeout = timeout_value(t, "t")

    def set_write_timeout(self, t: float | None) -> None:
        """Seconds a flush may wait for the peer to take data; ``None`` or 0 waits forever."""
        self._write_timeout = timeout_value(t, "t")

    def set_idle_timeout(self, t: float | None) -> None:
        """Close the connection after ``t`` seconds with nothing sent or received."""
        value = timeout_value(t, "t")
        with self._lock:
            self._idle_timeout = value
            old, self._idle_timer = self._idle_timer, None
            if value and not self._closed:
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
            if not t or self._closed:
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
        check_read_limit(n, "n")
        with self._lock:
            self._read_limit = n
            if self._paused:
                self._maybe_resume_locked()

    def set_keepalive(self, idle: float | None, interval: float | None = None) -> None:
        """Turn TCP keepalive on with probes after ``idle`` seconds, or off with ``None``.

        ``interval`` (default: ``idle``) is the time between probes. Both are checked
        before anything is set, so a call that raises changes nothing.
        """
        # Held as objects: compiled, a value narrowed to float would turn a bool into
        # 1.0 before keepalive_seconds could refuse it.
        idle_arg: object = idle
        interval_arg: object = interval
        if interval_arg is not None:
            timeout_value(interval_arg, "interval")  # checked even beside idle=None
        idle_s = every = 0
        if idle_arg is not None:
            idle_s = every = keepalive_seconds(idle_arg, "idle")
            if interval_arg:
                every = keepalive_seconds(interval_arg, "interval")
        sock = self._sock
        if self._closed:
            raise ConnectionClosedError("connection is closed")
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(
                f"set_keepalive: keepalive is a TCP option; this connection is over "
                f"{socket.AddressFamily(sock.family).name}"
            )
        try:
            if idle is None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, every)
        except OSError as exc:
            if self._closed:  # closed meanwhile, by another thread
                raise ConnectionClosedError("connection is closed") from exc
            raise

    # ------------------------------------------------------------------ Reader and Writer
    # The calls applications make, with their fast paths inline. They are defined on
    # this class itself, not a layer below: CPython specializes a call of a C method
    # (the compiled build) only when the object's type is exactly the class that
    # defines it, and an inherited one cost 740 more instructions per echo request
    # (callgrind). Their slow paths (waiting) live in _conn/_read.py and _write.py.

    def __len__(self) -> int:
        return self._in._rlen

    def len(self) -> int:
        """Readable bytes buffered now."""
        return self._in._rlen

    def next(self, n: int) -> memoryview:
        """The next ``n`` bytes, zero-copy when possible; blocks until they arrive."""
        lock = self._lock
        lock_acquire(lock)
        try:
            inb = self._in
            if type(n) is int and 0 < n <= inb._rlen and not self._closed:
                node = inb._nodes[inb._hi]
                r = node.r
                e = r + n
                if e <= node.w:  # the common case, LinkBuffer.next inlined
                    node.r = e
                    inb._rlen -= n
                    ev = node.ev
                    if ev is None:  # _hand_out inlined: input nodes always own a block
                        ev = node.ev = MemoryView(node.buf)  # type: ignore[arg-type]
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
            lock_release(lock)

    def peek(self, n: int) -> memoryview:
        """Like ``next`` without advancing."""
        lock = self._lock
        lock_acquire(lock)
        try:
            inb = self._in
            if type(n) is int and 0 < n <= inb._rlen and not self._closed:
                node = inb._nodes[inb._hi]
                r = node.r
                e = r + n
                if e <= node.w:  # in the head node: LinkBuffer.peek inlined
                    ev = node.ev
                    if ev is None:  # input nodes always own their block
                        ev = node.ev = MemoryView(node.buf)  # type: ignore[arg-type]
                    v = ev[r:e]
                    inb._track(v)
                    return v
            else:
                _check_size(n)  # the bytes are not all here yet, or something is wrong
                self._ensure_locked(n)
            return inb.peek(n)
        finally:
            lock_release(lock)

    def skip(self, n: int) -> None:
        """Advance ``n`` bytes, waiting for them if needed."""
        lock = self._lock
        lock_acquire(lock)
        try:
            inb = self._in
            if type(n) is int and 0 < n <= inb._rlen and not self._closed:
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
            lock_release(lock)

    def until(self, delim: int | bytes) -> memoryview:
        """Data up to and including ``delim``; on a peer close first, ``PeerClosedError.partial``
        holds what was buffered."""
        byte = delim if type(delim) is int and 0 <= delim <= 255 else _delim_byte(delim)
        lock = self._lock
        lock_acquire(lock)
        try:
            inb = self._in
            if not self._closed and inb._rlen:
                # The common case inline: the delimiter is in the head node's own block.
                node = inb._nodes[inb._hi]
                buf = node.buf
                r = node.r
                if buf is not None:
                    pos = buf.find(byte, r, min(node.w, r + inb._rlen))
                    if pos >= 0:
                        pos += 1
                        node.r = pos
                        inb._rlen -= pos - r
                        ev = node.ev
                        if ev is None:
                            ev = node.ev = MemoryView(buf)
                        v = ev[r:pos]
                        inb._track(v)
                        return v
                pos = inb._find(byte)
                if pos >= 0:  # the delimiter is here already: one lock round, no waiting
                    return inb.next(pos + 1)
            self._check_readable_locked()
            return until_filling(inb, byte, self._ensure_locked)
        finally:
            lock_release(lock)

    def read_line(self) -> memoryview:
        """One line without ``\\n`` or ``\\r\\n``."""
        lock = self._lock
        lock_acquire(lock)
        try:
            inb = self._in
            if not self._closed and inb._rlen:
                # The common case inline: the whole line is in the head node's own block.
                node = inb._nodes[inb._hi]
                buf = node.buf
                r = node.r
                if buf is not None:
                    pos = buf.find(10, r, min(node.w, r + inb._rlen))
                    if pos >= 0:
                        node.r = pos + 1
                        inb._rlen -= pos + 1 - r
                        if pos > r and buf[pos - 1] == 13:
                            pos -= 1
                        ev = node.ev
                        if ev is None:
                            ev = node.ev = MemoryView(buf)
                        out = ev[r:pos]
                        inb._track(out)
                        return out
                pos = inb._find(10)
            else:
                pos = -1
            if pos >= 0:
                line = inb.next(pos + 1)
            else:
                self._check_readable_locked()
                line = until_filling(inb, 10, self._ensure_locked)
            out = trim_line(line)
            inb._track(out)
            return out
        finally:
            lock_release(lock)

    def read_binary(self, n: int) -> bytes:
        """The next ``n`` bytes as a ``bytes`` copy."""
        lock = self._lock
        lock_acquire(lock)
        try:
            inb = self._in
            if type(n) is int and 0 < n <= inb._rlen and not self._closed:
                node = inb._nodes[inb._hi]
                r = node.r
                e = r + n
                if e <= node.w:  # in the head node: LinkBuffer.read_binary inlined
                    node.r = e
                    inb._rlen -= n
                    return node.mv[r:e].tobytes()
            else:
                _check_size(n)  # the bytes are not all here yet, or something is wrong
                self._ensure_locked(n)
            return inb.read_binary(n)
        finally:
            lock_release(lock)

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
        lock_acquire(lock)
        try:
            if self._closed and not self._readable_after_close():
                raise ConnectionClosedError("connection is closed")
            self._in.release()
            if self._paused:
                self._maybe_resume_locked()
        finally:
            lock_release(lock)

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
        out = MemoryView(b).cast("B")
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

    def malloc(self, n: int) -> memoryview:
        """A writable view of ``n`` bytes, sent at the next flush."""
        with self._lock:
            if self._closed or self._wshut:
                self._check_writable_locked()
            if self._wpend:
                self._spill()
            return self._wbuf.malloc(n)

    def malloc_len(self) -> int:
        """Bytes written or allocated and not yet flushed."""
        with self._lock:
            if self._closed:
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
        n: int  # declared: an untyped count would be boxed and compared generically
        # Immutable bytes and contiguous views are queued by reference (see _wpend).
        if t is MemoryView:
            n = b.nbytes if b.c_contiguous else -1  # type: ignore[union-attr]
        else:
            n = len(b) if t is bytes else -1
        lock = self._lock
        lock_acquire(lock)
        try:
            if self._closed or self._wshut:
                self._check_writable_locked()
            if n >= 0:
                if not n:
                    return 0  # nothing to send: never queued, so flushes need not check
                wb = self._wb
                if wb is None or not wb._nodes:
                    parts = self._wpend
                    if parts is None:
                        self._wpend = [b]  # type: ignore[list-item]  # bytes or a view, by n
                    elif len(parts) < MAX_PENDING_PARTS:
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
            lock_release(lock)

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
        lock_acquire(lock)
        try:
            if self._closed or self._wshut:
                self._check_writable_locked()
            parts = self._wpend
            wb = self._wb
            if parts:
                if wb is None or not wb._nodes:
                    try:
                        n = (
                            sock_send(self._sock, parts[0])
                            if len(parts) == 1
                            else sock_sendmsg(self._sock, parts)
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
            lock_release(lock)
        self._flush_buffer(wb)

    def close_write(self) -> None:
        """Half-close (Go's ``TCPConn.CloseWrite``): flush, then shut the sending side.

        The peer reads the end of the stream; reading here goes on until it closes too.
        Later writes raise ``ConnectionClosedError``; a second call does nothing.
        """
        with self._lock:
            if self._closed:
                raise ConnectionClosedError("connection is closed")
            if self._wshut:
                return
        self.flush()
        with self._lock:
            if self._closed:
                raise ConnectionClosedError("connection is closed")
            if not self._wshut:
                self._wshut = True
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    raise closed_error(exc) from exc

    # ------------------------------------------------------------------ the library's side

    def attach(self) -> None:
        """Start receiving through the poller (the dialer and listener call it once)."""
        with self._lock:
            if not self._closed and not self._eof and not self._op.registered:
                self._op.control(PollEvent.READABLE)

    def serve_accepted(
        self,
        on_prepare: Callable[[Connection], Any] | None,
        on_connect: Callable[[Any, Connection], Any] | None,
        idle_timeout: float,
    ) -> None:
        """A server's accepted connection: ``on_prepare``, the idle timeout, receiving,
        then ``on_connect`` and any input that came meanwhile (in the connect task, which
        owns the connection from its construction with ``hooks``)."""
        if on_prepare is not None:
            try:
                self._ctx = on_prepare(self)
            except Exception as exc:
                _log.exception("netpoll: on_prepare raised; closing %r", self)
                if self._hooks is not None:
                    self._hooks.on_handler_error(self, exc)
                with self._lock:
                    self._processing = False
                self._close(CLOSE_HANDLER)
                self._closed_notice()
                return
        if idle_timeout:
            self.set_idle_timeout(idle_timeout)
        self.attach()
        runner = CONFIG.runner
        if runner is None:
            self._connect_task(on_connect)
        else:
            runner(self._ctx, lambda: self._connect_task(on_connect))

    def shutdown_drain(self) -> None:
        """The server shuts down: close now if idle, else once the work at hand is done."""
        self._drain()

    def shutdown_close(self) -> None:
        """The server shuts down and this connection's time is up: close it."""
        self._close(CLOSE_SHUTDOWN)

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The ``ssl.SSLObject`` of a TLS connection (peer certificate, cipher, ALPN);
        ``None`` on a plain one."""
        return self._ssl_object()

    def _ssl_object(self) -> ssl.SSLObject | None:
        return None  # overridden by TLSConnection

    @property
    def context(self) -> Any:
        """What ``on_prepare``/``on_connect`` returned: the ``ctx`` handlers receive."""
        return self._ctx
