"""TLS connections: a ``Connection`` whose bytes on the wire are TLS.

``TLSConnection`` is one more layer on top of ``Connection`` (single inheritance, as the
rest of the stack); the plain ``Connection`` keeps its paths unchanged. Handlers see the
same Reader/Writer: the poller receives ciphertext, feeds it to an ``ssl.SSLObject`` over
two ``ssl.MemoryBIO``s and decrypts straight into free space of the input LinkBuffer
(``SSLObject.read(n, buffer)``), so reads hand out the same zero-copy views. ``flush``
encrypts what the output buffer holds and sends the ciphertext with the same waiting
(write timeout, full kernel buffer) as a plain flush.

The TLS state, beside ``ConnectionBase``'s (see ``_state.py``), all under ``_lock``:

``_sslobj`` over ``_inbio`` (ciphertext received, not yet decrypted) and ``_outbio``
    (ciphertext made, not yet taken for sending). Every call on any of the three is made
    with ``_lock`` held: they release the GIL, and correctness does not lean on it.
    ``_tlsio`` is what reads and writes application data go through: the C object behind
    ``_sslobj`` when it is there (see ``_record_layer``), else ``_sslobj`` itself.
``_hs``: ``HS_PENDING`` -> ``HS_DONE``, or ``HS_PENDING`` -> ``HS_FAILED``, once. A
    server's connection shakes hands on the poller, one step per readable event
    (``_handshake_event``), never waiting for bytes; ``_hs_timer`` (a poller timer,
    ``ssl_handshake_timeout``) fails it. Its connect task owns the connection
    (``_processing``, as for a plain one) from accept until ``on_connect`` returned;
    the task starts only at ``HS_DONE``, so whoever closes the connection before that
    (``_close``: a failure, the timer, shutdown) ends that ownership itself and sets
    ``HS_FAILED``, which also stops the handshake. A dialed connection, or one from
    ``Listener.accept()``, shakes hands on the caller's thread before anyone else has it
    (``handshake_blocking``).
``_ctout``: ciphertext taken from ``_outbio`` that the kernel has not taken yet. It is
    always older than what ``_outbio`` holds, so every sender (a flush, the poller during
    the handshake, a close) sends it first (``_send_locked``).
``_tls_shut``: ``close_notify`` was sent (``close``, ``close_write``): no more writes.
``_hs_on_connect``, ``_hs_timeout``: the server's ``on_connect`` to run at ``HS_DONE``,
    and the handshake's time limit.

The end of the stream: a TCP end, the peer's ``close_notify`` or a TLS error after the
handshake all end the input (``_eof``) as a plain end of stream does; plaintext decrypted
before it is still delivered. A reader that meets the end while receiving for itself
(``_read_through_locked``) acts on it at once, as the poller would (``_eof_locked``): a
``close_notify`` leaves the fd quiet, so the poller might never look again; the notices
(``on_disconnect``) follow on the poller, outside the lock.

The read limit bounds plaintext plus ciphertext: the poller receives at most what the
limit leaves room for (at least one record), and decrypts everything it received at once.

Lock order as in ``_state.py``: ``_lock`` first, then the poller's (timers, control).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._config import CONFIG
from .._config import log as _log
from .._connection import Connection
from .._errors import ConnectionClosedError, closed_error
from .._linkbuffer import MemoryView
from .._poll._backend import EVENT_OUT
from .._poll._operator import PollEvent
from .._poll._poller import Poller, Timer, before_block
from ._receive import MIN_RECV_FREE, RECV_GROWTH
from ._state import (
    CLOSE_ERROR,
    CLOSE_HANDLER,
    CLOSE_SHUTDOWN,
    Hooks,
    OnRequest,
    lock_acquire,
    lock_release,
    sock_recv_into,
    sock_send,
)
from ._task import FIRST_REQUEST_GRACE

if TYPE_CHECKING:
    from .._linkbuffer import LinkBuffer

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "HS_DONE", "HS_FAILED", "HS_PENDING", "TLSConnection"]

HS_PENDING: Final = 0
HS_DONE: Final = 1
HS_FAILED: Final = 2

DEFAULT_HANDSHAKE_TIMEOUT: Final = 60.0
CT_RECV: Final = 256 * 1024  # ciphertext received per readable event, at most
TLS_RECORD: Final = 16384 + 2048  # one TLS record with its header and overhead (a bound)
ENCRYPT_CHUNK: Final = 256 * 1024  # plaintext encrypted per step of a flush
SPARE_SCRATCH: Final = 4  # receive buffers kept between receives

# Ciphertext receive buffers, lent for one receive (the bytes go on into the incoming BIO
# at once). A 64 KiB receive split every 64 KiB message in two events; 256 KiB takes one
# (2.3 -> 1.1 receives per request). Lending them keeps the memory to the receives running
# at one moment: one per thread would cost 1,000 blocked handlers 256 MiB. deque's append
# and pop are atomic, on free-threaded builds too.
_spare: Final[deque[memoryview]] = deque()
_spare_pop: Final = _spare.pop  # bound once: the compiled build then calls them directly
_spare_push: Final = _spare.append


def _record_layer(obj: ssl.SSLObject) -> Any:
    """What to call ``read(n, buffer)`` and ``write(data)`` on for ``obj``'s application data.

    ``ssl.SSLObject.read`` and ``.write`` are Python methods that only pass their arguments
    on to the ``_ssl._SSLSocket`` they wrap (checked on CPython 3.10, 3.11, 3.13); calling it
    directly skips an interpreted frame per call: 2,200 and 1,500 of a small TLS echo's
    41,000 server instructions. The object is taken only when it is what CPython puts
    there; anything else (another Python, a changed ``ssl`` module) gets ``obj``.
    """
    inner = getattr(obj, "_sslobj", None)
    cls = type(inner)
    if (
        cls.__module__ == "_ssl"
        and cls.__name__ == "_SSLSocket"
        and callable(getattr(inner, "read", None))
        and callable(getattr(inner, "write", None))
    ):
        return inner
    return obj


def _take_scratch() -> memoryview:
    """A receive buffer of CT_RECV bytes, to give back with ``_give_scratch``."""
    try:
        return _spare_pop()
    except IndexError:  # none kept, or other threads hold them: one more
        return MemoryView(bytearray(CT_RECV))


def _give_scratch(mv: memoryview) -> None:
    if len(_spare) < SPARE_SCRATCH:
        _spare_push(mv)


class TLSConnection(Connection):
    """A connection speaking TLS; ``ssl_object`` gives the peer certificate, cipher, ALPN."""

    __slots__ = (
        "_ctout",
        "_hs",
        "_hs_on_connect",
        "_hs_timeout",
        "_hs_timer",
        "_inbio",
        "_outbio",
        "_sslobj",
        "_tls_shut",
        "_tlsio",
    )

    def __init__(
        self,
        sock: socket.socket,
        poller: Poller,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        on_request: OnRequest | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        read_buffer_limit: int | None = None,
        hooks: Hooks | None = None,
        remote_addr: Any = None,
    ) -> None:
        super().__init__(
            sock,
            poller,
            on_request=on_request,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            read_buffer_limit=read_buffer_limit,
            hooks=hooks,
            remote_addr=remote_addr,
        )
        self._inbio = ssl.MemoryBIO()
        self._outbio = ssl.MemoryBIO()
        self._sslobj: ssl.SSLObject = context.wrap_bio(
            self._inbio, self._outbio, server_side=server_side, server_hostname=server_hostname
        )
        self._tlsio: Any = _record_layer(self._sslobj)
        self._hs = HS_PENDING
        self._hs_timer: Timer | None = None
        self._hs_timeout = handshake_timeout
        self._hs_on_connect: Callable[[Any, Connection], Any] | None = None
        self._ctout: memoryview | None = None
        self._tls_shut = False

    def __repr__(self) -> str:
        state = "open" if self.is_active() else "closed"
        return f"<netpoll.TLSConnection fd={self._fd} {state} remote={self._remote_addr!r}>"

    def _ssl_object(self) -> ssl.SSLObject | None:
        return self._sslobj

    # ------------------------------------------------------------------ receiving

    def _decrypt_locked(self, fed: bool = False) -> tuple[int, bool]:
        """Decrypt what the incoming BIO holds into the input buffer's free space (the same
        tail/fresh-node choice as a plain receive). Lock held.

        Returns the plaintext bytes added, and whether the TLS stream ended (the peer's
        close_notify, or an error: the stream can no longer be trusted).
        """
        inb = self._in
        inbio = self._inbio
        if not fed and not inbio.pending:  # fed: ciphertext was just written to the BIO
            return 0, False  # nothing to decrypt (and no close_notify to find)
        # Any: with a buffer, read() returns a count, not the bytes its stub promises.
        sslobj: Any = self._tlsio
        got = 0
        ended = False
        while True:
            nodes = inb._nodes
            if nodes:
                tail = nodes[-1]
                w = tail.w
                if not w:
                    target = tail.mv
                else:
                    free = tail.cap - w
                    need = self._need
                    if free >= MIN_RECV_FREE or (
                        free and need > inb._rlen and free >= need - inb._rlen
                    ):
                        target = tail.mv[w : tail.cap]
                    else:
                        tail = self._fresh_tail(nodes)
                        w = 0
                        target = tail.mv
            else:
                tail = self._fresh_tail(nodes)
                w = 0
                target = tail.mv
            try:
                k: int = sslobj.read(len(target), target)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                ended = True
                break
            except ssl.SSLError as exc:
                _log.debug("netpoll: TLS error on %r: %s; ending its input", self, exc)
                ended = True
                break
            if not k:  # the peer's close_notify (read returns 0 until ours is sent)
                ended = True
                break
            w += k
            tail.w = w
            inb._rlen += k
            got += k
            if w == tail.cap and self._recv_cls < self._recv_base * RECV_GROWTH:
                self._grow_recv()
            elif k < len(target) and not inbio.pending:
                # A short read ends its record; with no ciphertext left there is nothing
                # more. Asking again would only raise SSLWantReadError (1.4 us a time).
                break
        if not inb._rlen:
            inb.drop_empty_tail()
        return got, ended

    def _feed_locked(self, size: int) -> int:
        """Receive up to ``size`` bytes of ciphertext into the incoming BIO, through a lent
        buffer; the count, 0 at the end of the stream. Lock held; raises as ``recv_into``."""
        buf = _take_scratch()
        try:
            n: int = sock_recv_into(self._sock, buf, size)
            if n:
                self._bytes_in += n
                self._inbio.write(buf[:n])
            return n
        finally:
            _give_scratch(buf)

    def _receive_locked(self, need: int) -> tuple[int, bool, bool]:
        """Receive ciphertext and decrypt it. Lock held.

        Returns (plaintext bytes added, the stream ended, nothing was there to receive).
        At most what the read limit leaves room for is received, but at least one record.
        """
        # Plaintext, ciphertext waiting in the BIO (part of a record) and what comes now
        # stay within the limit, or the limit and one record (to complete the next one).
        # The BIO holds less than a record between receives (every receive decrypts all it
        # can), so with this much room it need not be asked.
        room = max(self._read_limit, need) - self._in._rlen
        if room >= CT_RECV + TLS_RECORD:
            size = CT_RECV
        else:
            room -= self._inbio.pending
            size = CT_RECV if room >= CT_RECV else max(room, TLS_RECORD)
        try:
            n = self._feed_locked(size)
        except (BlockingIOError, InterruptedError):
            return 0, False, True
        except OSError:
            n = 0  # a reset: the end of the stream
        got, ended = self._decrypt_locked(n > 0)
        if not n:
            ended = True  # a TCP end without close_notify is a peer close too
        if self._outbio.pending:  # something the TLS layer owes the peer
            try:
                self._send_locked(False)
            except OSError:
                pass
        return got, ended, False

    def _on_event(self, ev: int) -> None:
        if self._hs != HS_DONE:
            self._handshake_event(ev)
            return
        start = eof = False
        lock = self._lock
        lock_acquire(lock)
        try:
            if self._closed or self._eof_handled:
                return
            if ev & EVENT_OUT:  # ciphertext left over from the handshake
                try:
                    self._send_locked(False)
                except OSError:
                    pass
                if self._ctout is None and not self._paused:
                    self._op.control(PollEvent.READABLE)
            got, ended, _empty = self._receive_locked(0)
            if got:
                inb = self._in
                rlen = inb._rlen
                need = self._need
                if need:
                    if rlen >= need and self._cond is not None:
                        self._cond.notify_all()
                elif not self._processing and self._on_request is not None and self._connected:
                    self._processing = start = True
                if rlen >= self._read_limit and rlen >= need:
                    self._pause_locked()
            if ended:
                eof = True
                if self._eof_locked():
                    start = True
        finally:
            lock_release(lock)
        if eof:
            self._after_eof(start)
        if start:
            if self._slow or self._poller.offload or CONFIG.runner is not None:
                self._start_task()
            else:
                self._process(False)

    def _read_through_locked(self, need: int = 0) -> bool:
        """Receive and decrypt on the reader's thread; True if plaintext came, or the end."""
        if self._paused or self._eof_handled or self._eof or self._hs != HS_DONE:
            return False
        got, ended, _empty = self._receive_locked(need)
        if ended:
            # Acted on here, as the poller would (a close_notify leaves the fd quiet, and
            # the handler may close before the poller looks): the notices follow on the
            # poller, outside this lock.
            start = self._eof_locked()
            self._poller.call_later(0, lambda: self._tls_after_eof(start))
            return True  # the caller looks again, and sees the end
        return got > 0

    def _tls_after_eof(self, start: bool) -> None:
        self._after_eof(start)
        if start:
            self._start_task()

    def _tls_eof_event(self) -> None:
        """The end of the TLS stream was seen off the poller: act on it as the poller does."""
        with self._lock:
            if self._closed or self._eof_handled:
                return
            start = self._eof_locked()
        self._after_eof(start)
        if start:
            self._start_task()

    # ------------------------------------------------------------------ sending

    def _encrypt_locked(self, wb: LinkBuffer, budget: int) -> None:
        """Encrypt up to ``budget`` bytes of the output buffer's flushed plaintext."""
        sslobj: Any = self._tlsio
        total = 0
        for v in wb.send_views():
            left = budget - total
            if left <= 0:
                break
            if len(v) > left:
                v = v[:left]
            total += sslobj.write(v)
        wb.consume_sent(total)

    def _encrypt_pending_locked(self) -> None:
        """Encrypt the parts ``write_binary`` queued by reference, straight from the caller's
        memory (a plain flush sends them with ``sendmsg``; copying them into the output
        buffer first cost 4,600 instructions per small echo). Parts are queued only while
        the output buffer is empty, so nothing written earlier is left behind them."""
        parts = self._take_pending()
        if not parts:
            return
        sslobj: Any = self._tlsio
        for p in parts:  # never empty (write_binary queues no empty part)
            sslobj.write(p)

    def _send_locked(self, encrypt: bool) -> bool:
        """Send ciphertext without waiting: what is left over first, then the outgoing
        BIO's, then (``encrypt``) the output buffer's plaintext, encrypted chunk by chunk.
        True when nothing is left to send. Lock held; raises OSError (SSLError too)."""
        sock = self._sock
        drained = False  # the BIO was emptied (read() takes all) and nothing encrypted since
        while True:
            ct: bytes | memoryview | None = self._ctout
            if ct is None:
                outbio = self._outbio
                if drained or not outbio.pending:
                    if not encrypt:
                        return True
                    wb = self._wb
                    if wb is None or not wb._rlen:
                        return True
                    self._encrypt_locked(wb, ENCRYPT_CHUNK)
                    drained = False
                    continue
                ct = outbio.read()  # sent as it is; a view only for what is left over
                drained = True
            try:
                n = sock_send(sock, ct)
            except (BlockingIOError, InterruptedError):
                self._ctout = MemoryView(ct)
                return False
            self._bytes_out += n
            if n < len(ct):  # the kernel's buffer is full
                self._ctout = MemoryView(ct)[n:]
                return False
            self._ctout = None

    def flush(self) -> None:
        """Encrypt everything written and send it; waits at most the write timeout while
        the kernel is full (a write timeout closes the connection, as a plain one's)."""
        err: ConnectionClosedError | None = None
        lock = self._lock
        lock_acquire(lock)
        try:
            if self._closed or self._wshut or self._tls_shut:
                self._check_writable_locked()
                raise ConnectionClosedError("the TLS session is shut down (close_notify sent)")
            if self._wpend:
                if self._hs == HS_DONE and self._wpend_len <= ENCRYPT_CHUNK:
                    self._encrypt_pending_locked()
                else:
                    self._spill()
            wb = self._wb
            if self._hs != HS_DONE:
                # Written before the handshake finished (on_prepare): sent once it has.
                if wb is not None:
                    wb.flush()
                return
            if wb is not None:
                wb._publish()  # encrypted before flush returns: borrowed data needs no copy
            try:
                if self._send_locked(True):
                    return
            except OSError as exc:
                err = closed_error(exc)
        finally:
            lock_release(lock)
        if err is not None:
            self._close(CLOSE_ERROR)
            raise err
        self._flush_buffer(self._wbuf)

    def _send_buffer_locked(self, out: LinkBuffer) -> bool:
        """The flush's wait loop (Writing._flush_buffer) sends ciphertext: ``out`` is
        encrypted as the kernel takes what was encrypted before."""
        return self._send_locked(True)

    def _send_close_notify_locked(self) -> None:
        """Send close_notify, best effort and without waiting. Lock held."""
        if self._hs != HS_DONE or self._tls_shut:
            return
        self._tls_shut = True
        try:
            self._sslobj.unwrap()
        except (ssl.SSLError, ValueError):
            pass  # SSLWantReadError: ours is sent, the peer's has not come (nor need it)
        try:
            self._send_locked(False)
        except OSError:
            pass

    def close_write(self) -> None:
        """Half-close: flush, send close_notify, then shut the sending side."""
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
                self._send_close_notify_locked()
                self._wshut = True
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    raise closed_error(exc) from exc

    def _close(self, reason: str) -> None:
        release = False
        with self._lock:
            if not self._closed:
                if reason != CLOSE_ERROR:
                    self._send_close_notify_locked()
                if self._hs != HS_DONE and self._hooks is not None:
                    # A server's connection closed before its connect task could start:
                    # nobody else ends the task's ownership (see the module docstring).
                    self._hs = HS_FAILED
                    release = True
                timer, self._hs_timer = self._hs_timer, None
            else:
                timer = None
        if timer is not None:
            timer.cancel()
        super()._close(reason)
        if release:
            with self._lock:
                self._processing = False
            self._drop_buffers()
            self._closed_notice()

    # ------------------------------------------------------------------ the handshake

    def serve_accepted(
        self,
        on_prepare: Callable[[Connection], Any] | None,
        on_connect: Callable[[Any, Connection], Any] | None,
        idle_timeout: float,
    ) -> None:
        """A server's accepted connection: ``on_prepare``, then the handshake driven by
        the poller (bounded by its timer); ``on_connect`` and input once it is done."""
        if on_prepare is not None:
            try:
                self._ctx = on_prepare(self)
            except Exception as exc:
                _log.exception("netpoll: on_prepare raised; closing %r", self)
                if self._hooks is not None:
                    self._hooks.on_handler_error(self, exc)
                self._close(CLOSE_HANDLER)
                return
        if idle_timeout:
            self.set_idle_timeout(idle_timeout)
        with self._lock:
            self._hs_on_connect = on_connect
            if not self._closed and self._hs == HS_PENDING and self._hs_timeout:
                self._hs_timer = self._poller.call_later(self._hs_timeout, self._handshake_expired)
        self.attach()

    def _handshake_event(self, ev: int) -> None:
        """One step of a server's handshake, on the poller: take what came, answer it."""
        done = failed = False
        err: BaseException | None = None
        on_connect: Callable[[Any, Connection], Any] | None = None
        timer: Timer | None = None
        eof = False
        with self._lock:
            if self._closed or self._hs != HS_PENDING:
                return
            try:
                n = self._feed_locked(CT_RECV)
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError as exc:
                n = 0
                err = exc
            try:
                self._sslobj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                if n == 0:
                    failed = True  # the peer left in the middle of the handshake
            except (ssl.SSLError, ValueError) as exc:
                failed = True
                err = exc
            try:
                self._send_locked(False)  # our flight, or the alert of a failure
            except OSError as exc:
                if not done:
                    failed = True
                    err = err or exc
            if failed:
                self._hs = HS_FAILED
            elif done:
                self._hs = HS_DONE
                timer, self._hs_timer = self._hs_timer, None
                on_connect, self._hs_on_connect = self._hs_on_connect, None
                _got, ended = self._decrypt_locked()  # data sent along with the Finished
                if ended:
                    self._eof = eof = True
                wb = self._wb
                if wb is not None and wb._rlen:  # written in on_prepare
                    try:
                        self._send_locked(True)
                    except OSError:
                        pass
            if not failed:
                if self._ctout is not None:
                    self._op.control(PollEvent.R2RW)  # the rest goes when writable
                elif ev & EVENT_OUT:
                    self._op.control(PollEvent.READABLE)
        if failed:
            self._handshake_failed(err, False)
            return
        if not done:
            return
        if timer is not None:
            timer.cancel()
        if eof:
            self._poller.call_later(0, self._tls_eof_event)
        runner = CONFIG.runner
        if runner is None:
            self._connect_task(on_connect)
        else:
            runner(self._ctx, lambda: self._connect_task(on_connect))

    def _handshake_expired(self) -> None:
        """The handshake timer: not done in time, the connection is closed."""
        with self._lock:
            if self._closed or self._hs != HS_PENDING:
                return
            self._hs = HS_FAILED
            self._hs_timer = None
        self._handshake_failed(None, True)

    def _handshake_failed(self, err: BaseException | None, timed_out: bool) -> None:
        if timed_out:
            _log.debug("netpoll: TLS handshake timed out on %r; closing", self)
        else:
            why = str(err) if err is not None else "the peer closed the connection"
            _log.debug("netpoll: TLS handshake failed on %r: %s; closing", self, why)
        if self._hooks is not None:
            self._hooks.on_tls_handshake_failed(self._me(), timed_out)
        self._close(CLOSE_ERROR)

    def shutdown_drain(self) -> None:
        """A server shutting down: a connection still shaking hands gets the grace of a
        fresh connection to finish it (and then its first request), as a plain one does."""
        with self._lock:
            pending = self._hs == HS_PENDING and not self._closed
        if pending:
            self._poller.call_later(FIRST_REQUEST_GRACE, self._drain_handshake)
            return
        self._drain()

    def _drain_handshake(self) -> None:
        with self._lock:
            pending = self._hs == HS_PENDING and not self._closed
        if pending:
            self._close(CLOSE_SHUTDOWN)

    def handshake_blocking(
        self, timeout: float | None, timeout_error: type[Exception] = TimeoutError
    ) -> None:
        """Shake hands on the caller's thread, before the connection is attached (a dialed
        connection, or one from ``Listener.accept()``); raises ``ssl.SSLError`` (the
        peer's refusal, a certificate that does not verify) or ``timeout_error``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        before_block()
        p = select.poll()
        while True:
            err: BaseException | None = None
            done = False
            with self._lock:
                if self._closed:
                    raise ConnectionClosedError("connection is closed")
                try:
                    self._sslobj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    err = exc
                data = self._outbio.read() if self._outbio.pending else b""
            if data:
                try:
                    self._send_blocking(p, MemoryView(data), deadline, timeout, timeout_error)
                except OSError:
                    if err is None:
                        raise
            if err is not None:
                raise err
            if done:
                break
            self._wait_fd(p, select.POLLIN, deadline, timeout, timeout_error)
            with self._lock:
                try:
                    n = self._feed_locked(CT_RECV)
                except (BlockingIOError, InterruptedError):
                    n = -1  # not `continue` in the try: mypyc does not compile that
                if n == 0:
                    self._inbio.write_eof()  # the handshake then fails: EOF in violation
        with self._lock:
            self._hs = HS_DONE
            _got, ended = self._decrypt_locked()  # data that came with the last flight
            if ended:
                self._eof = True

    def _wait_fd(
        self,
        p: Any,
        event: int,
        deadline: float | None,
        timeout: float | None,
        timeout_error: type[Exception],
    ) -> None:
        p.register(self._fd, event)
        try:
            while True:
                if deadline is None:
                    ms = 1000
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise timeout_error(f"TLS handshake timed out after {timeout}s")
                    ms = min(int(left * 1000) + 1, 1000)
                if self._closed:
                    raise ConnectionClosedError("connection is closed")
                if p.poll(ms):
                    return
        finally:
            p.unregister(self._fd)

    def _send_blocking(
        self,
        p: Any,
        data: memoryview,
        deadline: float | None,
        timeout: float | None,
        timeout_error: type[Exception],
    ) -> None:
        while data:
            try:
                n = sock_send(self._sock, data)
            except (BlockingIOError, InterruptedError):
                self._wait_fd(p, select.POLLOUT, deadline, timeout, timeout_error)
                continue
            self._bytes_out += n
            data = data[n:]

    def start_after_handshake(self) -> None:
        """A connection shaken hands by ``handshake_blocking``: start receiving."""
        self.attach()
        with self._lock:
            eof = self._eof and not self._eof_handled
        if eof:
            self._poller.call_later(0, self._tls_eof_event)
