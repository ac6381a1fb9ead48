"""The exception hierarchy of netpoll, and the one place that maps OS errors onto it."""

from __future__ import annotations

import errno

__all__ = [
    "ConnectionClosedError",
    "DialTimeoutError",
    "InsufficientDataError",
    "NetpollError",
    "PeerClosedError",
    "ReadTimeoutError",
    "WriteTimeoutError",
]


class NetpollError(Exception):
    """Base class of every error netpoll raises on its own account."""


class ConnectionClosedError(NetpollError, ConnectionError):
    """The connection is closed (by this side, or it failed); Netpoll's ErrConnClosed."""


class PeerClosedError(ConnectionClosedError, EOFError):
    """The peer closed and fewer bytes remain than were asked for; Netpoll's ErrEOF.

    ``partial`` holds what was buffered when the read gave up (``until`` fills it).
    """

    def __init__(self, message: str = "peer closed the connection", partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


class ReadTimeoutError(NetpollError, TimeoutError):
    """A read waited longer than the connection's read timeout."""


class WriteTimeoutError(NetpollError, TimeoutError):
    """A flush waited longer than the write timeout for the peer to take data."""


class DialTimeoutError(NetpollError, TimeoutError):
    """Dialing did not complete within the timeout."""


class InsufficientDataError(NetpollError, ValueError):
    """A plain LinkBuffer holds fewer readable bytes than a read asked for."""


# errno values that mean "the other side went away" when they come out of send/recv.
PEER_GONE_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN}
)


def closed_error(exc: OSError, what: str = "connection") -> ConnectionClosedError:
    """Translate an OSError from a socket call into the matching netpoll error."""
    if exc.errno in PEER_GONE_ERRNOS:
        err = ConnectionClosedError(f"{what} closed by peer: {exc.strerror or exc}")
    else:
        err = ConnectionClosedError(f"{what} failed: {exc}")
    err.__cause__ = exc
    return err
