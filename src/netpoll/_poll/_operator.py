"""FDOperator: an fd bound to its event handler and its poller, with the seed's transitions."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._backend import EVENT_EXCLUSIVE, EVENT_IN, EVENT_OUT, EVENT_RDHUP, READ_EVENTS

if TYPE_CHECKING:
    from ._poller import Poller, SlowAware

__all__ = ["FDOperator", "PollEvent"]


class PollEvent(enum.Enum):
    """The registration changes of Netpoll's ``Control``."""

    READABLE = "readable"  # register for input
    WRITABLE = "writable"  # register for output only
    DETACH = "detach"  # unregister
    R2RW = "r2rw"  # add output interest to a readable fd
    RW2R = "rw2r"  # drop output interest
    HANGUP = "hangup"  # input paused: watch only for a hang-up (a handler of its own)
    ACCEPT = "accept"  # a listener: input, waking one of the processes sharing it


_MASKS = {
    PollEvent.READABLE: READ_EVENTS,
    PollEvent.WRITABLE: EVENT_OUT,
    PollEvent.R2RW: READ_EVENTS | EVENT_OUT,
    PollEvent.RW2R: READ_EVENTS,
    PollEvent.HANGUP: EVENT_RDHUP,
    PollEvent.ACCEPT: EVENT_IN | EVENT_EXCLUSIVE,
}


class FDOperator:
    """Binds ``fd`` to ``handler(events)``, which the poller calls when the fd is ready."""

    __slots__ = ("_registered", "fd", "handler", "owner", "poller")

    def __init__(
        self,
        fd: int,
        handler: Callable[[int], None],
        poller: Poller,
        owner: SlowAware | None = None,
    ) -> None:
        self.fd = fd
        self.handler = handler
        self.poller = poller
        self.owner = owner  # told by the poller when its handler runs slow
        self._registered = False

    @property
    def registered(self) -> bool:
        """True while the fd is in the poller's interest set."""
        return self._registered

    def control(self, event: PollEvent, handler: Callable[[int], None] | None = None) -> None:
        """Apply one registration change; DETACH of an unregistered fd is a no-op.

        ``handler`` takes the fd's events from now on instead of the bound one (for
        HANGUP: a paused reader's own hang-up handler); any other change restores it.
        """
        poller = self.poller
        if event is PollEvent.DETACH:
            if self._registered:
                self._registered = False
                poller.detach(self.fd)
            return
        mask = _MASKS[event]
        if handler is None:
            handler = self.handler
        if self._registered:
            poller.modify(self.fd, mask)
            poller.set_handler(self.fd, handler)
        else:
            poller.attach(self.fd, mask, handler, self.owner)
            self._registered = True
