"""Reading's slow path: waiting, lock held, until enough input is buffered.

The Reader calls themselves (``next``, ``peek``, ...) are on ``Connection``, with the
common case (the bytes are here) inline; they come here only when they must wait.
"""

from __future__ import annotations

import threading
import time

from .._errors import ConnectionClosedError, PeerClosedError, ReadTimeoutError
from .._poll._poller import before_block
from .._runner import input_wait_begin, input_wait_end
from ._task import Tasks

__all__ = ["Reading"]


class Reading(Tasks):
    """Waiting for input: receive on the reader's thread if the kernel has it, else wait
    on the connection's Condition for the poller (up to the read timeout)."""

    __slots__ = ()

    def _check_readable_locked(self) -> None:
        """Raise unless reads are allowed: open, or kept readable after a peer close."""
        if self._closed and not self._readable_after_close():
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
            if self._closed and not self._readable_after_close():
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
