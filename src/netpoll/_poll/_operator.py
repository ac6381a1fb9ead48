"""FDOperator: an fd bound to its event handler and its poller, with the seed's transitions."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._backend import EVENT_OUT, EVENT_RDHUP, READ_EVENTS

if TYPE_CHECKING:
    from ._poller import Poller

__all__ = ["FDOperator", "PollEvent"]


class PollEvent(enum.Enum):
    """The registration changes of Netpoll's ``Control``."""

    READABLE = "readable"  # register for input
    WRITABLE = "writable"  # register for output only
    DETACH = "detach"  # unregister
    R2RW = "r2rw"  # add output interest to a readable fd
    RW2R = "rw2r"  # drop output interest
    HANGUP = "hangup"  # input paused: watch only for a hang-up, reported to ``on_hangup``


_MASKS = {
    PollEvent.READABLE: READ_EVENTS,
    PollEvent.WRITABLE: EVENT_OUT,
    PollEvent.R2RW: READ_EVENTS | EVENT_OUT,
    PollEvent.RW2R: READ_EVENTS,
    PollEvent.HANGUP: EVENT_RDHUP,
}


class FDOperator:
    """Binds ``fd`` to ``handler(events)``, which the poller calls when the fd is ready.

    While in the ``HANGUP`` state, events go to ``on_hangup`` instead (if given).
    """

    __slots__ = ("_registered", "fd", "handler", "on_hangup", "poller")

    def __init__(
        self,
        fd: int,
        handler: Callable[[int], None],
        poller: Poller,
        on_hangup: Callable[[int], None] | None = None,
    ) -> None:
        self.fd = fd
        self.handler = handler
        self.on_hangup = on_hangup
        self.poller = poller
        self._registered = False

    @property
    def registered(self) -> bool:
        """True while the fd is in the poller's interest set."""
        return self._registered

    def control(self, event: PollEvent) -> None:
        """Apply one registration change; DETACH of an unregistered fd is a no-op."""
        poller = self.poller
        if event is PollEvent.DETACH:
            if self._registered:
                self._registered = False
                poller.detach(self.fd)
            return
        mask = _MASKS[event]
        handler = self.handler
        if event is PollEvent.HANGUP and self.on_hangup is not None:
            handler = self.on_hangup
        if self._registered:
            poller.modify(self.fd, mask)
            poller.set_handler(self.fd, handler)
        else:
            poller.attach(self.fd, mask, handler)
            self._registered = True
