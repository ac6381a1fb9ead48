"""Dialing: connect with a timeout and register the connection with a poller."""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl as _ssl
import time
from typing import Any

from ._addr import _split_host_port, resolve_all
from ._conn._state import check_read_limit
from ._conn._tls import TLSConnection
from ._connection import Connection
from ._errors import DialTimeoutError
from ._poll._manager import manager
from ._poll._poller import before_block
from ._timeouts import timeout_value

__all__ = ["Dialer", "dial_connection", "dial_tcp", "dial_unix"]


_POLL_SLICE_MS = 3_600_000


def _connect(family: int, sockaddr: Any, timeout: float | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        # EAGAIN is not "in progress": a unix socket says so when the listener's backlog
        # is full, and the socket stays unconnected (Go reports it as an error too).
        if err in (errno.EINPROGRESS, errno.EALREADY):
            before_block()
            p = select.poll()
            p.register(sock, select.POLLOUT)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DialTimeoutError(f"dial {sockaddr!r} timed out after {timeout}s")
                # In slices: poll() takes at most about 24 days of milliseconds.
                ms = _POLL_SLICE_MS if left is None else min(int(left * 1000) + 1, _POLL_SLICE_MS)
                if p.poll(ms):
                    break
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"{os.strerror(err)}: {sockaddr!r}")
        return sock
    except BaseException:
        sock.close()
        raise


def _connect_any(
    targets: list[tuple[int, Any]], timeout: float | None
) -> tuple[socket.socket, Any]:
    """Connect to the first of ``targets`` that accepts, trying them in order.

    As in Go, each attempt gets an equal share of the time left, so one address that
    never answers cannot use up the whole timeout. With every attempt failed, the last
    error is raised.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last: OSError | None = None
    for i, (family, sockaddr) in enumerate(targets):
        share = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            share = left / (len(targets) - i)
        try:
            return _connect(family, sockaddr, share), sockaddr
        except OSError as exc:  # DialTimeoutError included: it is a TimeoutError
            last = exc
    if last is None:
        raise DialTimeoutError(f"dial {targets[0][1]!r} timed out after {timeout}s")
    raise last


class Dialer:
    """Makes client connections registered with a poller."""

    def __init__(self, *, read_buffer_limit: int | None = None) -> None:
        if read_buffer_limit is not None:
            check_read_limit(read_buffer_limit)
        self._read_buffer_limit = read_buffer_limit

    def dial_connection(
        self,
        network: str,
        address: Any,
        timeout: float | None = None,
        *,
        read_buffer_limit: int | None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Connection:
        """Connect to ``address``; refused raises the OS error, too slow DialTimeoutError.

        With ``ssl`` (an ``ssl.SSLContext``, client side) the connection speaks TLS and
        is returned with its handshake done, within ``timeout`` altogether; a failed
        handshake raises its ``ssl.SSLError``. ``server_hostname`` (for SNI and the
        certificate check) defaults to the host dialed.
        """
        seconds = timeout_value(timeout, "timeout") or None  # 0 and infinity: no limit
        limit = read_buffer_limit if read_buffer_limit is not None else self._read_buffer_limit
        if limit is not None:
            check_read_limit(limit)  # before connecting: a bad argument opens nothing
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(ssl).__name__}")
        if server_hostname is not None:
            if ssl is None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if not isinstance(server_hostname, str):
                raise TypeError(
                    f"server_hostname must be a str or None, not {type(server_hostname).__name__}"
                )
        targets = resolve_all(network, address, passive=False)
        start = time.monotonic()
        sock, sockaddr = _connect_any(targets, seconds)
        if ssl is None:
            try:
                conn = Connection(
                    sock, manager().pick(sockaddr), read_buffer_limit=limit, remote_addr=sockaddr
                )
            except BaseException:
                sock.close()
                raise
            conn.attach()
            return conn
        if server_hostname is None:
            server_hostname = _host_dialed(network, address)
        try:
            tls = TLSConnection(
                sock,
                manager().pick(sockaddr),
                ssl,
                server_side=False,
                server_hostname=server_hostname,
                read_buffer_limit=limit,
                remote_addr=sockaddr,
            )
        except BaseException:
            sock.close()
            raise
        try:
            left = None if seconds is None else max(seconds - (time.monotonic() - start), 0.0)
            tls.handshake_blocking(left, DialTimeoutError)
        except BaseException:
            tls.close()
            raise
        tls.start_after_handshake()
        return tls

    def dial_timeout(self, network: str, address: Any, timeout: float) -> Connection:
        """``dial_connection`` with a required timeout."""
        return self.dial_connection(network, address, timeout)


def _host_dialed(network: str, address: Any) -> str | None:
    """The host part of a dialed address: the default TLS server name."""
    if network == "unix":
        return None
    host = str(address[0]) if isinstance(address, tuple) else _split_host_port(address)[0]
    return host or "localhost"


_default = Dialer()


def dial_connection(
    network: str,
    address: Any,
    timeout: float | None = None,
    *,
    read_buffer_limit: int | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Connection:
    """Connect with the default Dialer."""
    return _default.dial_connection(
        network,
        address,
        timeout,
        read_buffer_limit=read_buffer_limit,
        ssl=ssl,
        server_hostname=server_hostname,
    )


def dial_tcp(network: str, address: Any, timeout: float | None = None) -> Connection:
    """Connect over ``tcp``, ``tcp4`` or ``tcp6``."""
    if network not in ("tcp", "tcp4", "tcp6"):
        raise ValueError(f"network must be tcp, tcp4 or tcp6 for dial_tcp, got {network!r}")
    return _default.dial_connection(network, address, timeout)


def dial_unix(address: str, timeout: float | None = None) -> Connection:
    """Connect to a unix socket path."""
    return _default.dial_connection("unix", address, timeout)
