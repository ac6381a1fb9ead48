"""Loopback socket plumbing shared by the benchmark's servers.

``bench.server`` (the contenders) and ``bench.reference.floors`` (the reference floors)
both listen, accept and announce readiness the same way. These pieces live here, below
both, so that neither has to import the other: the server starts the floors, and the
floors need nothing of the server but this.
"""

from __future__ import annotations

import errno
import socket
import ssl
import sys
from collections.abc import Callable

__all__ = [
    "BACKLOG",
    "HOST",
    "accept_ready",
    "announce",
    "listen_nonblocking",
    "server_ssl_context",
]

HOST = "127.0.0.1"  # every benchmark server listens on loopback only
BACKLOG = 4096


def announce(port: int) -> None:
    """Tell the parent process (bench.runner) that the server accepts connections."""
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


def listen_nonblocking(port: int) -> socket.socket:
    """A non-blocking TCP listener on HOST:port (the raw epoll loop's and the floors')."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    return listener


def accept_ready(listener: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
    """Accept every pending connection as a non-blocking TCP_NODELAY socket; at EMFILE or
    ENFILE stop until the next readiness (the rest wait in the backlog)."""
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return
            raise
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        on_accept(conn)


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """The one server context every TLS contender uses: Python's defaults, one certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx
