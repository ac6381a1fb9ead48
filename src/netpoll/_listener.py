"""Listener: a listening socket in Go's form, with ``create_listener``."""

from __future__ import annotations

import os
import socket
import ssl as _ssl
import stat
from typing import Any

from ._addr import resolve
from ._conn._tls import DEFAULT_HANDSHAKE_TIMEOUT, TLSConnection
from ._poll._manager import manager
from ._poll._poller import before_block
from ._timeouts import timeout_value

__all__ = ["Listener", "create_listener"]


class Listener:
    """A listening socket; ``EventLoop.serve`` takes it, ``accept()`` gives Connections.

    Made with an ``ssl.SSLContext`` (``create_listener(..., ssl=ctx)``), the connections
    it yields speak TLS.
    """

    __slots__ = ("_network", "_sock", "_ssl", "_ssl_timeout")

    def __init__(
        self,
        sock: socket.socket,
        network: str = "tcp",
        *,
        ssl: _ssl.SSLContext | None = None,
        ssl_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._sock = sock
        self._network = network
        self._ssl = ssl
        self._ssl_timeout = ssl_handshake_timeout

    @property
    def ssl_context(self) -> _ssl.SSLContext | None:
        """The TLS context of the connections it yields (None: plain ones)."""
        return self._ssl

    @property
    def ssl_handshake_timeout(self) -> float:
        """Seconds a TLS handshake may take before the connection is closed."""
        return self._ssl_timeout

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
        if self._ssl is None:
            conn = Connection(sock, manager().pick(addr), remote_addr=addr)
            conn.attach()
            return conn
        try:
            tls = TLSConnection(
                sock, manager().pick(addr), self._ssl, server_side=True, remote_addr=addr
            )
        except BaseException:
            sock.close()
            raise
        try:
            tls.handshake_blocking(self._ssl_timeout or None)
        except BaseException:
            tls.close()
            raise
        tls.start_after_handshake()
        return tls

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
    network: str,
    address: Any,
    *,
    backlog: int | None = None,
    reuse_port: bool = False,
    ssl: _ssl.SSLContext | None = None,
    ssl_handshake_timeout: float | None = None,
) -> Listener:
    """Listen on ``address`` (``"host:port"``, ``":port"``, a tuple, or a unix path).

    ``reuse_port=True`` sets ``SO_REUSEPORT`` so several processes can share the port.
    ``ssl``: an ``ssl.SSLContext`` (server side); the connections are then TLS, their
    handshake done by the library before ``on_connect``, within ``ssl_handshake_timeout``
    seconds (default 60).
    """
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(ssl).__name__}")
    if ssl_handshake_timeout is not None:
        if ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        handshake_timeout = timeout_value(ssl_handshake_timeout, "ssl_handshake_timeout")
        if not handshake_timeout and ssl_handshake_timeout == 0:
            raise ValueError("ssl_handshake_timeout must be > 0 (None: the default, 60 s)")
    else:
        handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT
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
    return Listener(sock, network, ssl=ssl, ssl_handshake_timeout=handshake_timeout)
