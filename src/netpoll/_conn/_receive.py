"""The poller half of a connection: receiving, end of stream, hang-up, and the read limit.

Also the receive-memory policy: receives land in the free tail of the input buffer or in
a fresh pooled block; blocks grow while receives fill them (up to ``RECV_GROWTH`` times
the configured size, so a large frame lands in one block and reads of it copy nothing)
and shrink back when the poller's sweep finds the connection quiet (``maybe_shed``).
"""

from __future__ import annotations

from typing import Final

from .._config import CONFIG
from .._config import log as _log
from .._linkbuffer import POOL, _Node
from .._poll._operator import PollEvent
from ._state import (
    CLOSE_HANDLER,
    CLOSE_PEER,
    HUP_DRAIN,
    HUP_NONE,
    HUP_SEEN,
    ConnectionBase,
    lock_acquire,
    lock_release,
    sock_recv_into,
)

__all__ = ["MIN_RECV_FREE", "RECV_GROWTH", "Receiving"]


MIN_RECV_FREE: Final = 2048  # below this much tail space, receive into a new node
RECV_GROWTH: Final = 4  # receive blocks grow up to this many times the configured size


class Receiving(ConnectionBase):
    """The poller half: what happens when the fd is readable or hung up."""

    __slots__ = ()

    # Defined by the task layer (Tasks) above: receiving starts the request task.
    def _process(self, on_pool: bool = False) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _start_task(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_event(self, ev: int) -> None:
        # Registered for input only (a flush that must wait polls the fd itself), so every
        # event here means readable, hung up or failed: a receive tells which.
        start = eof = False
        lock = self._lock
        lock_acquire(lock)
        try:
            if self._closed or self._eof_handled:
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
                    if free >= MIN_RECV_FREE or (
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
                n = sock_recv_into(self._sock, target)
            except (BlockingIOError, InterruptedError):
                inb.drop_empty_tail()
                return
            except OSError:
                n = 0  # a reset: treated as the end of the stream
            if n:
                w += n
                tail.w = w
                if w == tail.cap and self._recv_cls < self._recv_base * RECV_GROWTH:
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
            lock_release(lock)
        if eof:
            self._after_eof(start)
        if start:
            if self._slow or self._poller.offload or CONFIG.runner is not None:
                self._start_task()
            else:
                self._process(False)  # inline on the poller thread: the fast, common case

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
            close_now = connected and not delivering and not self._processing and not self._closed
        if self._hooks is not None and connected:
            self._hooks.on_disconnect(self._me())
        if close_now:
            self._end_of_stream()

    def _end_of_stream(self) -> None:
        """Everything the peer sent before its end of stream was delivered: close, or hand
        the half-open connection to ``on_eof`` once (see ``set_on_eof``)."""
        with self._lock:
            fn, self._on_eof = self._on_eof, None
            if self._closed:
                return
        if fn is None:
            self._close(CLOSE_PEER)
            return
        try:
            fn(self._me())
        except Exception:
            _log.exception("netpoll: on_eof raised on %r; closing it", self)
            self._close(CLOSE_HANDLER)

    def maybe_shed(self) -> bool:
        """Poller sweep: return the kept receive block if nothing arrived since last look."""
        with self._lock:
            if self._closed:
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
        if not self._paused and self._hup != HUP_DRAIN:
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
            if self._paused and not self._closed and not self._eof_handled:
                self._hup = HUP_SEEN
                self._op.control(PollEvent.DETACH)  # level-triggered: it would repeat
                self._maybe_resume_locked()  # an idle handler cannot free room: drain

    def _maybe_resume_locked(self) -> None:
        """Read again once the handler made room, or for good once the peer hung up while
        the handler, idle, waits for more than fits (what is left is bounded by the
        kernel's buffer, and nobody else can free room)."""
        if not self._paused:
            return
        if self._in._rlen >= max(self._read_limit, self._need):
            if not (self._hup != HUP_NONE and not self._processing and not self._need):
                return
            self._hup = HUP_DRAIN
        self._paused = False
        if not self._closed and not self._eof_handled:
            self._op.control(PollEvent.READABLE)

    def _read_through_locked(self, need: int = 0) -> bool:
        """Receive straight from the socket on the reader's thread; True if bytes came.

        Saves a thread hand-off when the data is already in the kernel (a large frame
        whose first part the poller took). End of stream is left for the poller to see.
        """
        if self._paused or self._eof_handled:
            return False
        inb = self._in
        min_free = min(MIN_RECV_FREE, max(need - inb._rlen, 1))
        target = inb.recv_target(min_free, self._recv_cls)
        try:
            n = sock_recv_into(self._sock, target)
        except (BlockingIOError, InterruptedError):
            inb.drop_empty_tail()
            return False
        except OSError:
            n = 0
        if n:
            inb.commit_recv(n)
            if n == len(target) and self._recv_cls < self._recv_base * RECV_GROWTH:
                self._grow_recv()
            self._bytes_in += n
            return True
        inb.drop_empty_tail()
        self._eof = True  # the poller's next look at the fd does the rest
        return False
