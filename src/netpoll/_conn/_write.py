"""Writing's slow path: spilling queued writes into the buffer, and flushing it.

Every Writer call and every flush runs under the connection's lock, so the bytes of one
call never interleave with another thread's and none is lost or sent twice (keeping
several calls together, a frame's header and body, stays the caller's job).

``write_binary`` of bytes or memoryviews into an empty output buffer is queued by
reference in ``_wpend`` instead of being copied into nodes: flush hands the queue to one
``send``/``sendmsg``. Any other writer call first moves the queue into the buffer
(``_spill``), which keeps the order. What the kernel does not take at once is sent from
the output buffer, waiting for writability up to the write timeout.
"""

from __future__ import annotations

import select
import time
from typing import Final

from .._errors import ConnectionClosedError, WriteTimeoutError, closed_error
from .._linkbuffer import LinkBuffer, MemoryView
from .._poll._poller import before_block
from .._runner import input_wait_begin, input_wait_end
from ._read import Reading
from ._state import (
    CLOSE_ERROR,
    CLOSE_WRITE_TIMEOUT,
    sock_send,
    sock_sendmsg,
)

__all__ = ["MAX_PENDING_PARTS", "Writing"]


_WAIT_SLICE: Final = 0.5  # a flush waiting for writability re-checks state this often
MAX_PENDING_PARTS: Final = 64  # beyond this many queued writes, copy into the buffer


class Writing(Reading):
    """The output buffer, the queue of writes by reference, and waiting to send."""

    __slots__ = ()

    def _check_writable_locked(self) -> None:
        if self._closed:
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
        parts = self._take_pending()
        if parts:
            wb = self._wbuf
            for p in parts:
                wb.write_binary(p)

    def _take_pending(self) -> list[bytes | memoryview] | None:
        """Take the parts queued by reference off the queue, all or nothing: a view
        released since it was queued raises (see ``_released_write``). Lock held."""
        parts = self._wpend
        if not parts:
            return None
        for p in parts:
            if type(p) is MemoryView:
                try:
                    p.nbytes  # noqa: B018  # raises once released
                except ValueError:
                    raise self._released_write() from None
        self._wpend = None
        self._wpend_len = 0
        return parts

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
            first = MemoryView(parts[0]).cast("B")  # sizes are in bytes, whatever the format
            if len(first) <= n:
                n -= len(first)
                del parts[0]
            else:
                parts[0] = first[n:]
                n = 0

    def _send_buffer_locked(self, out: LinkBuffer) -> bool:
        """Send what ``out`` holds, lock held: True once all is sent, False when the kernel's
        buffer is full; raises OSError on a socket error. (TLS sends ciphertext instead.)"""
        sock = self._sock
        try:
            while out._rlen:
                views = out.send_views()
                n = sock_send(sock, views[0]) if len(views) == 1 else sock_sendmsg(sock, views)
                out.consume_sent(n)
                self._bytes_out += n
        except (BlockingIOError, InterruptedError):
            return False
        return True

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
                    if self._closed:
                        raise ConnectionClosedError("connection is closed")
                    try:
                        if self._send_buffer_locked(out):
                            return
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
                if self._closed:
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
