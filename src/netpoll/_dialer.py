"""Dialing: connect with a timeout and register the connection with a poller."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Any

from ._addr import resolve
from ._connection import Connection
from ._errors import DialTimeoutError
from ._poll._manager import manager
from ._poll._poller import before_block

__all__ = ["Dialer", "dial_connection", "dial_tcp", "dial_unix"]


def _connect(family: int, sockaddr: Any, timeout: float | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            before_block()
            p = select.poll()
            p.register(sock, select.POLLOUT)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DialTimeoutError(f"dial {sockaddr!r} timed out after {timeout}s")
                if p.poll(None if left is None else int(left * 1000) + 1):
                    break
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"{os.strerror(err)}: {sockaddr!r}")
        return sock
    except BaseException:
        sock.close()
        raise


class Dialer:
    """Makes client connections registered with a poller."""

    def __init__(self, *, read_buffer_limit: int | None = None) -> None:
        self._read_buffer_limit = read_buffer_limit

    def dial_connection(
        self,
        network: str,
        address: Any,
        timeout: float | None = None,
        *,
        read_buffer_limit: int | None = None,
    ) -> Connection:
        """Connect to ``address``; refused raises the OS error, too slow DialTimeoutError."""
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(
                    f"timeout must be a number of seconds, not {type(timeout).__name__}"
                )
            if timeout < 0:
                raise ValueError(f"timeout must be >= 0, got {timeout}")
            if timeout == 0:
                timeout = None
        family, sockaddr = resolve(network, address, passive=False)
        sock = _connect(family, sockaddr, timeout)
        limit = read_buffer_limit if read_buffer_limit is not None else self._read_buffer_limit
        try:
            conn = Connection(
                sock, manager().pick(sockaddr), read_buffer_limit=limit, remote_addr=sockaddr
            )
        except BaseException:
            sock.close()
            raise
        conn._register()
        return conn

    def dial_timeout(self, network: str, address: Any, timeout: float) -> Connection:
        """``dial_connection`` with a required timeout."""
        return self.dial_connection(network, address, timeout)


_default = Dialer()


def dial_connection(
    network: str,
    address: Any,
    timeout: float | None = None,
    *,
    read_buffer_limit: int | None = None,
) -> Connection:
    """Connect with the default Dialer."""
    return _default.dial_connection(network, address, timeout, read_buffer_limit=read_buffer_limit)


def dial_tcp(network: str, address: Any, timeout: float | None = None) -> Connection:
    """Connect over ``tcp``, ``tcp4`` or ``tcp6``."""
    if network not in ("tcp", "tcp4", "tcp6"):
        raise ValueError(f"network must be tcp, tcp4 or tcp6 for dial_tcp, got {network!r}")
    return _default.dial_connection(network, address, timeout)


def dial_unix(address: str, timeout: float | None = None) -> Connection:
    """Connect to a unix socket path."""
    return _default.dial_connection("unix", address, timeout)
