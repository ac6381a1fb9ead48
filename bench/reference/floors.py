"""Reference floors: netpoll's handler API served with as little as possible around it.

Three contenders answer "how fast could a pure-Python library with this API be?":

- ``floor-api``: the benchmark's own netpoll handlers (``bench.handlers.netpoll_handler``)
  called from a raw single-threaded ``select.epoll`` loop, on a connection object that only
  moves offsets (``next`` slices one receive buffer, ``flush`` is one ``send``/``sendmsg``).
  No locks, no revocation of released views, no timeouts, no states. It is not a usable
  library (a handler that waits stalls every connection), only the cost of the calls the
  API makes a handler do.
- ``floor-api-safe``: the same, plus what the contract and the project's rules make every
  request pay, in netpoll's current design:

  * a lock round in each call that touches state another thread may touch (the receive,
    ``next``, ``flush``, ``release``, and the end of the handler run), so the library stays
    right without the GIL;
  * revocation: ``next`` hands out slices of a per-use view and records them, ``release``
    revokes every one and checks that nothing derived from them still looks at the block
    before reusing it (the contract: after ``release()`` no view shows recycled bytes);
  * one handler run at a time per connection (a flag set by the receive, cleared after).
- ``floor-api-owned``: the same guarantees in a design that pays less for them. The thread
  that marks a connection as processing (under its lock) owns its buffer, views and output
  until it clears the mark (under the lock): two lock rounds per request, none in the
  handler's calls (another thread's ``close`` would only mark the state, and the owner
  would finish it). Views are sliced from one view per buffer window, revoked one by one
  at ``release()`` as before, while the buffer's memory is recycled (after the reference
  check) only when the window wraps: no view is made and dropped per request.

Either serves every request/response workload but ``resp-lines`` (their connections have
no ``read_line``); a frame not fully buffered is read with a blocking receive (fine for a
floor: the load generator waits for each answer anyway).

``bench.server`` starts these servers (``--contender floor-api`` and so on); this module
takes its socket plumbing from ``bench._net`` and its handlers from ``bench.handlers``, and
imports nothing from ``bench.server``.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from bench._net import accept_ready, announce, listen_nonblocking
from bench.handlers import netpoll_handler

__all__ = ["WRAP_AT", "FloorConn", "OwnedFloorConn", "SafeFloorConn", "run_floor"]

BUFFER = 256 * 1024  # per-connection receive buffer: a 64 KiB frame and its header fit
WRAP_AT = BUFFER // 2  # floor-api-owned: a drained window past this point starts over


class FloorClosed(Exception):
    """The peer left while a handler waited for bytes."""


class FloorConn:
    """The handler API over one buffer, with nothing else (the ``floor-api`` contender)."""

    __slots__ = ("buf", "mv", "olen", "out", "r", "sock", "w")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(BUFFER)
        self.mv = memoryview(self.buf)
        self.r = self.w = 0
        self.out: list[Any] = []
        self.olen = 0

    def __len__(self) -> int:
        return self.w - self.r

    def _fill(self, n: int) -> None:
        """Block until ``n`` bytes are buffered, moving the unread bytes to a new buffer
        when they would not fit (views already handed out keep the old one)."""
        if self.r + n > len(self.buf):
            fresh = bytearray(max(BUFFER, n))
            fresh[: self.w - self.r] = self.mv[self.r : self.w]
            self.buf, self.mv = fresh, memoryview(fresh)
            self.w -= self.r
            self.r = 0
        self.sock.setblocking(True)
        try:
            while self.w - self.r < n:
                k = self.sock.recv_into(self.mv[self.w :])
                if not k:
                    raise FloorClosed("peer closed mid-frame")
                self.w += k
        finally:
            self.sock.setblocking(False)

    def next(self, n: int) -> memoryview:
        r = self.r
        if r + n > self.w:
            self._fill(n)
            r = self.r
        self.r = r + n
        return self.mv[r : r + n]

    def peek(self, n: int) -> memoryview:
        if self.r + n > self.w:
            self._fill(n)
        return self.mv[self.r : self.r + n]

    def skip(self, n: int) -> None:
        self.next(n)

    def malloc_len(self) -> int:
        return self.olen

    def write_binary(self, b: Any) -> int:
        self.out.append(b)
        n = len(b)  # the handlers write bytes and byte views
        self.olen += n
        return n

    def flush(self) -> None:
        out = self.out
        if out:
            _send(self.sock, out, self.olen)
            out.clear()
            self.olen = 0

    def release(self) -> None:
        if self.r == self.w:
            self.r = self.w = 0

    def close(self) -> None:
        self.sock.close()

    def on_readable(self, handler: Callable[[Any, Any], None]) -> bool:
        """Receive and run the handler; False when the connection ended."""
        try:
            k = self.sock.recv_into(self.mv[self.w :] if self.w else self.mv)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            k = 0
        if not k:
            return False
        self.w += k
        handler(None, self)
        return True


class SafeFloorConn:
    """``FloorConn`` plus locks, view revocation and one run at a time (``floor-api-safe``)."""

    __slots__ = (
        "buf",
        "bytes_in",
        "ev",
        "lock",
        "mv",
        "olen",
        "out",
        "processing",
        "r",
        "sock",
        "state",
        "views",
        "w",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(BUFFER)
        self.mv = memoryview(self.buf)
        self.ev: memoryview | None = None  # per-use view that reads hand out slices of
        self.views: list[memoryview] | None = None
        self.r = self.w = 0
        self.out: list[Any] | None = None
        self.olen = 0
        # Taken with acquire()/try/finally, not ``with``: on CPython 3.11 that is about 600
        # instructions cheaper per request here (callgrind), and a floor must be cheapest.
        self.lock = threading.Lock()
        self.state = 0
        self.processing = False
        self.bytes_in = 0

    def __len__(self) -> int:
        return self.w - self.r

    def _fill(self, n: int) -> None:
        if self.r + n > len(self.buf):
            fresh = bytearray(max(BUFFER, n))
            fresh[: self.w - self.r] = self.mv[self.r : self.w]
            self._retire_view()
            self.buf, self.mv = fresh, memoryview(fresh)
            self.w -= self.r
            self.r = 0
        self.sock.setblocking(True)
        try:
            while self.w - self.r < n:
                k = self.sock.recv_into(self.mv[self.w :])
                if not k:
                    raise FloorClosed("peer closed mid-frame")
                self.w += k
        finally:
            self.sock.setblocking(False)

    def _retire_view(self) -> bool:
        """Release the per-use view; True if nothing derived from it holds the block."""
        ev = self.ev
        if ev is None:
            return True
        self.ev = None
        ev.release()
        # The buffer's own reference, the receive view's memory manager, getrefcount's.
        return sys.getrefcount(self.buf) <= 3

    def next(self, n: int) -> memoryview:
        lock = self.lock
        lock.acquire()
        try:
            if type(n) is not int or n < 0 or self.state:
                raise ValueError(f"bad n {n!r} or closed")
            r = self.r
            if r + n > self.w:
                self._fill(n)
                r = self.r
            self.r = r + n
            ev = self.ev
            if ev is None:
                ev = self.ev = memoryview(self.buf)
            v = ev[r : r + n]
            views = self.views
            if views is None:
                self.views = [v]
            else:
                views.append(v)
            return v
        finally:
            lock.release()

    def peek(self, n: int) -> memoryview:
        lock = self.lock
        lock.acquire()
        try:
            if self.r + n > self.w:
                self._fill(n)
            ev = self.ev
            if ev is None:
                ev = self.ev = memoryview(self.buf)
            v = ev[self.r : self.r + n]
            views = self.views
            if views is None:
                self.views = [v]
            else:
                views.append(v)
            return v
        finally:
            lock.release()

    def skip(self, n: int) -> None:
        lock = self.lock
        lock.acquire()
        try:
            if self.r + n > self.w:
                self._fill(n)
            self.r += n
        finally:
            lock.release()

    def malloc_len(self) -> int:
        return self.olen

    def write_binary(self, b: Any) -> int:
        if self.state:
            raise ValueError("closed")
        out = self.out
        if out is None:
            self.out = [b]
        else:
            out.append(b)
        n = len(b)
        self.olen += n
        return n

    def flush(self) -> None:
        out = self.out
        if out:
            lock = self.lock
            lock.acquire()
            try:
                if self.state:
                    raise ValueError("closed")
                _send(self.sock, out, self.olen)
                out.clear()
                self.olen = 0
            finally:
                lock.release()

    def release(self) -> None:
        lock = self.lock
        lock.acquire()
        try:
            if self.state:
                raise ValueError("closed")
            views = self.views
            if views:
                for v in views:
                    v.release()
                views.clear()
            if self.r == self.w:
                if self._retire_view():
                    self.r = self.w = 0
                else:  # a derived view still looks at the block: take a fresh one
                    self.buf = bytearray(BUFFER)
                    self.mv = memoryview(self.buf)
                    self.r = self.w = 0
        finally:
            lock.release()

    def close(self) -> None:
        lock = self.lock
        lock.acquire()
        try:
            self.state = 1
        finally:
            lock.release()
        self.sock.close()

    def on_readable(self, handler: Callable[[Any, Any], None]) -> bool:
        start = False
        lock = self.lock
        lock.acquire()
        try:
            if self.state:
                return False
            try:
                k = self.sock.recv_into(self.mv[self.w :] if self.w else self.mv)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                k = 0
            if not k:
                self.state = 1
                return False
            self.w += k
            self.bytes_in += k
            if not self.processing:
                self.processing = start = True
        finally:
            lock.release()
        if start:
            handler(None, self)
            lock.acquire()
            self.processing = False
            lock.release()
        return True


class OwnedFloorConn(SafeFloorConn):
    """``SafeFloorConn``'s guarantees with ownership and window revocation (see above)."""

    __slots__ = ()

    def next(self, n: int) -> memoryview:
        if type(n) is not int or n < 0 or self.state:
            raise ValueError(f"bad n {n!r} or closed")
        r = self.r
        if r + n > self.w:
            self._fill(n)
            r = self.r
        self.r = r + n
        ev = self.ev
        if ev is None:
            ev = self.ev = memoryview(self.buf)
        v = ev[r : r + n]
        views = self.views
        if views is None:
            self.views = [v]
        else:
            views.append(v)
        return v

    def peek(self, n: int) -> memoryview:
        r = self.r
        if r + n > self.w:
            self._fill(n)
            r = self.r
        ev = self.ev
        if ev is None:
            ev = self.ev = memoryview(self.buf)
        v = ev[r : r + n]
        views = self.views
        if views is None:
            self.views = [v]
        else:
            views.append(v)
        return v

    def skip(self, n: int) -> None:
        if self.r + n > self.w:
            self._fill(n)
        self.r += n

    def flush(self) -> None:
        out = self.out
        if out:
            if self.state:
                raise ValueError("closed")
            _send(self.sock, out, self.olen)
            out.clear()
            self.olen = 0

    def release(self) -> None:
        if self.state:
            raise ValueError("closed")
        views = self.views
        if views:
            for v in views:
                v.release()
            views.clear()
        if self.r == self.w and self.w > WRAP_AT:
            # The window wraps: its memory is reused unless a derived view still holds it.
            if not self._retire_view():
                self.buf = bytearray(BUFFER)
                self.mv = memoryview(self.buf)
            self.r = self.w = 0

    def on_readable(self, handler: Callable[[Any, Any], None]) -> bool:
        lock = self.lock
        lock.acquire()  # round 1: take the connection
        try:
            if self.state:
                return False
            if self.processing:  # another thread owns it (not reached in this loop)
                return True
            self.processing = True
        finally:
            lock.release()
        try:
            k = self.sock.recv_into(self.mv[self.w :] if self.w else self.mv)
        except (BlockingIOError, InterruptedError):
            k = -1
        except OSError:
            k = 0
        try:
            if k > 0:
                self.w += k
                self.bytes_in += k
                handler(None, self)
        finally:
            lock.acquire()  # round 2: hand it back, and see a close meanwhile
            self.processing = False
            if not k:
                self.state = 1
            alive = not self.state
            lock.release()
        return alive


def _send(sock: socket.socket, parts: list[Any], total: int) -> None:
    """Send all ``total`` bytes of ``parts``; a short send finishes blocking (rare: replies
    are small, or the load generator is already waiting to read)."""
    try:
        sent = sock.send(parts[0]) if len(parts) == 1 else sock.sendmsg(parts)
    except (BlockingIOError, InterruptedError):
        sent = 0
    if sent < total:
        rest = b"".join(bytes(p) for p in parts)[sent:]
        sock.setblocking(True)
        try:
            sock.sendall(rest)
        finally:
            sock.setblocking(False)


def run_floor(workload: str, port: int, kind: str) -> None:
    """Serve ``workload`` with the netpoll handlers over a raw epoll loop until killed."""
    # Imported here, not at the top: this module is imported by every benchmark server
    # (bench.server starts the floors), and only a floor needs the library's exceptions.
    netpoll = __import__("netpoll")
    handler = netpoll_handler(netpoll, workload)
    classes: dict[str, type[FloorConn] | type[SafeFloorConn]] = {
        "floor-api": FloorConn,
        "floor-api-safe": SafeFloorConn,
    }
    conn_cls = classes.get(kind, OwnedFloorConn)
    listener = listen_nonblocking(port)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns: dict[int, FloorConn | SafeFloorConn] = {}

    def accepted(sock: socket.socket) -> None:
        conns[sock.fileno()] = conn_cls(sock)
        ep.register(sock.fileno(), select.EPOLLIN)

    announce(port)
    while True:
        for fd, _events in ep.poll():
            if fd == lfd:
                accept_ready(listener, accepted)
                continue
            conn = conns.get(fd)
            if conn is None:
                continue
            try:
                alive = conn.on_readable(handler)
            except (OSError, FloorClosed):
                alive = False
            if not alive:
                del conns[fd]
                try:
                    ep.unregister(fd)
                except OSError:
                    pass
                conn.sock.close()
