"""System layer: readiness backends over ``select.epoll`` and ``select.poll``.

Facts relied on:
- Both are used level-triggered: an fd that is still readable is reported again on the
  next wait, so a poller may drop the rest of a batch at any time without losing events.
- epoll and poll share the event bit values on Linux (IN=1, OUT=4, ERR=8, HUP=16,
  RDHUP=0x2000), so callers use one set of constants for both.
- ERR and HUP are reported even when not asked for; the only way to silence an fd is to
  unregister it.
- Each backend owns a wake-up fd (an eventfd, or a pipe where there is none) so another
  thread can interrupt a wait with ``trigger()``.
"""

from __future__ import annotations

import errno
import os
import select
from typing import Final

__all__ = [
    "EVENT_EXCLUSIVE",
    "EVENT_IN",
    "EVENT_OUT",
    "Backend",
    "EpollBackend",
    "PollBackend",
    "new_backend",
]

EVENT_IN: Final = 0x001
EVENT_OUT: Final = 0x004
EVENT_ERR: Final = 0x008
EVENT_HUP: Final = 0x010
EVENT_RDHUP: Final = 0x2000
READ_EVENTS: Final = EVENT_IN | EVENT_RDHUP
# Wake one waiter, not every epoll instance watching the fd: for a listening socket shared
# by several processes (no thundering herd). Only at registration (epoll rejects it in a
# modify, and with any flag but IN, OUT, ET); backends without it ignore it.
EVENT_EXCLUSIVE: Final = int(getattr(select, "EPOLLEXCLUSIVE", 0))


class _Waker:
    """The wake-up fd: an eventfd, or the read end of a pipe."""

    __slots__ = ("rfd", "wfd")

    def __init__(self) -> None:
        eventfd = getattr(os, "eventfd", None)
        if eventfd is not None:
            fd = eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.rfd = self.wfd = fd
        else:  # pragma: no cover - non-Linux
            self.rfd, self.wfd = os.pipe()
            os.set_blocking(self.rfd, False)
            os.set_blocking(self.wfd, False)

    def trigger(self) -> None:
        try:
            os.write(self.wfd, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except BlockingIOError:
            pass  # already pending: one wake-up is as good as many
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise

    def drain(self) -> None:
        try:
            os.read(self.rfd, 4096)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        os.close(self.rfd)
        if self.wfd != self.rfd:
            os.close(self.wfd)


class Backend:
    """The seed's Poll interface: wait, trigger, control, close."""

    name = "abstract"

    def __init__(self) -> None:
        self.waker = _Waker()

    def register(self, fd: int, events: int) -> None:
        raise NotImplementedError

    def modify(self, fd: int, events: int) -> None:
        raise NotImplementedError

    def unregister(self, fd: int) -> None:
        raise NotImplementedError

    def wait(self, timeout: float) -> list[tuple[int, int]]:
        """Ready ``(fd, events)`` pairs; ``timeout`` in seconds, negative for none."""
        raise NotImplementedError

    def trigger(self) -> None:
        """Interrupt a ``wait`` in progress on another thread."""
        self.waker.trigger()

    def close(self) -> None:
        self.waker.close()


class EpollBackend(Backend):
    """Linux epoll, level-triggered."""

    name = "epoll"

    def __init__(self, max_events: int = 1024) -> None:
        super().__init__()
        self._ep = select.epoll()
        self._max_events = max_events
        self._ep.register(self.waker.rfd, EVENT_IN)

    def register(self, fd: int, events: int) -> None:
        try:
            self._ep.register(fd, events)
        except OSError as exc:
            if not events & EVENT_EXCLUSIVE or exc.errno != errno.EINVAL:
                raise
            self._ep.register(fd, events & ~EVENT_EXCLUSIVE)  # a kernel before 4.5

    def modify(self, fd: int, events: int) -> None:
        if events & EVENT_EXCLUSIVE:  # only registration takes it
            self._ep.unregister(fd)
            self.register(fd, events)
        else:
            self._ep.modify(fd, events)

    def unregister(self, fd: int) -> None:
        self._ep.unregister(fd)

    def wait(self, timeout: float) -> list[tuple[int, int]]:
        return self._ep.poll(timeout, self._max_events)

    def close(self) -> None:
        self._ep.close()
        super().close()


class PollBackend(Backend):
    """``select.poll``: the fallback where epoll is missing."""

    name = "poll"

    def __init__(self) -> None:
        super().__init__()
        self._p = select.poll()
        self._p.register(self.waker.rfd, EVENT_IN)

    # poll() takes its fd list when a wait starts, so a change made from another thread
    # is seen only by the next wait: wake the current one.

    def register(self, fd: int, events: int) -> None:
        self._p.register(fd, events & ~EVENT_EXCLUSIVE)
        self.trigger()

    def modify(self, fd: int, events: int) -> None:
        self._p.modify(fd, events & ~EVENT_EXCLUSIVE)
        self.trigger()

    def unregister(self, fd: int) -> None:
        self._p.unregister(fd)
        self.trigger()

    def wait(self, timeout: float) -> list[tuple[int, int]]:
        ms = None if timeout < 0 else max(int(timeout * 1000 + 0.999), 0)
        return self._p.poll(ms)


def new_backend(kind: str | None = None) -> Backend:
    """The best backend here, or the one named by ``kind`` (``"epoll"`` or ``"poll"``)."""
    source = "kind"
    if not kind:
        kind = os.environ.get("NETPOLL_BACKEND") or None
        source = "the environment variable NETPOLL_BACKEND"
    if kind is None:
        kind = "epoll" if hasattr(select, "epoll") else "poll"
    if kind == "epoll":
        return EpollBackend()
    if kind == "poll":
        return PollBackend()
    raise ValueError(f"{source} must be 'epoll' or 'poll', got {kind!r}")
