"""Listener: a listening socket in Go's form, with ``create_listener``."""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

from ._addr import resolve
from ._poll._manager import manager
from ._poll._poller import before_block

__all__ = ["Listener", "create_listener"]


class Listener:
    """A listening socket; ``EventLoop.serve`` takes it, ``accept()`` gives Connections."""

    __slots__ = ("_network", "_sock")

    def __init__(self, sock: socket.socket, network: str = "tcp") -> None:
        self._sock = sock
        self._network = network

    @property
    def addr(self) -> Any:
        """The bound address in the ``socket`` module's form."""
        return self._sock.getsockname()

    @property
    def network(self) -> str:
        return self._network

    @property
    def socket(self) -> socket.socket:
        """The underlying listening socket."""
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self) -> Any:
        """Wait for one connection and return it as a ``netpoll.Connection``."""
        from ._connection import Connection

        before_block()
        self._sock.setblocking(True)
        try:
            sock, addr = self._sock.accept()
        finally:
            self._sock.setblocking(False)
        conn = Connection(sock, manager().pick(addr), remote_addr=addr)
        conn.attach()
        return conn

    def close(self) -> None:
        """Stop listening (idempotent); a unix socket's file is removed."""
        path = None
        if self._network == "unix":
            try:
                path = self._sock.getsockname()
            except OSError:
                path = None
        self._sock.close()
        if isinstance(path, str) and path and not path.startswith("\0"):
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
            except OSError:
                pass

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_listener(
    network: str, address: Any, *, backlog: int | None = None, reuse_port: bool = False
) -> Listener:
    """Listen on ``address`` (``"host:port"``, ``":port"``, a tuple, or a unix path).

    ``reuse_port=True`` sets ``SO_REUSEPORT`` so several processes can share the port.
    """
    if backlog is not None:
        if type(backlog) is not int:
            raise TypeError(f"backlog must be an int, not {type(backlog).__name__}")
        if backlog < 0:
            raise ValueError(f"backlog must be >= 0, got {backlog}")
    family, sockaddr = resolve(network, address, passive=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "tcp" on an IPv6 address takes IPv4 clients too, as in Go; "tcp6" does not.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(network == "tcp6"))
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN if backlog is None else backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return Listener(sock, network)
