"""Parsing of network names and addresses in Go's and Python's forms."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["NETWORKS", "family_for", "resolve", "resolve_all"]

NETWORKS = ("tcp", "tcp4", "tcp6", "unix")
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes on Linux, one of them the final NUL
_UNIX_ABSTRACT_MAX = 108  # an abstract name (leading NUL) has no final NUL: all 108


def family_for(network: str) -> int:
    """The address family a network name asks for (AF_UNSPEC for plain ``tcp``)."""
    if not isinstance(network, str):
        raise TypeError(f"network must be a str, not {type(network).__name__}")
    if network == "tcp":
        return socket.AF_UNSPEC
    if network == "tcp4":
        return socket.AF_INET
    if network == "tcp6":
        return socket.AF_INET6
    if network == "unix":
        return socket.AF_UNIX
    raise ValueError(f"network must be one of {', '.join(NETWORKS)}; got {network!r}")


def _split_host_port(address: str) -> tuple[str, int]:
    if address.startswith("["):
        end = address.find("]")
        if end < 0 or address[end + 1 : end + 2] != ":":
            raise ValueError(f"address {address!r} is not of the form '[host]:port'")
        host, port_s = address[1:end], address[end + 2 :]
    else:
        host, sep, port_s = address.rpartition(":")
        if not sep:
            raise ValueError(f"address {address!r} has no port (expected 'host:port')")
        if ":" in host:
            raise ValueError(f"address {address!r}: IPv6 hosts must be written '[host]:port'")
    if not (port_s.isascii() and port_s.isdigit()):
        raise ValueError(f"address {address!r} has a bad port {port_s!r}")
    port = int(port_s)
    if port > 65535:
        raise ValueError(f"address {address!r}: port {port} is out of range 0..65535")
    return host, port


def resolve(network: str, address: Any, *, passive: bool) -> tuple[int, Any]:
    """``(family, sockaddr)`` for ``address`` on ``network``; bad input raises ValueError."""
    return resolve_all(network, address, passive=passive)[0]


def resolve_all(network: str, address: Any, *, passive: bool) -> list[tuple[int, Any]]:
    """Every ``(family, sockaddr)`` ``address`` names on ``network``, in the resolver's
    order (a dialer tries them in turn, as Go's does); bad input raises ValueError."""
    family = family_for(network)
    if family == socket.AF_UNIX:
        if isinstance(address, bytes):
            address = address.decode()
        if not isinstance(address, str) or not address:
            raise ValueError(f"address for unix must be a non-empty path, got {address!r}")
        # A leading NUL names a Linux abstract socket; one anywhere else would silently cut
        # the path short.
        if "\0" in address[1:]:
            raise ValueError(f"address {address!r}: a unix path must not contain NUL bytes")
        abstract = address.startswith("\0")
        limit = _UNIX_ABSTRACT_MAX if abstract else _UNIX_PATH_MAX
        if len(address.encode()) > limit:
            what = "an abstract unix name" if abstract else "a unix path"
            raise ValueError(f"address {address!r}: {what} is at most {limit} bytes")
        return [(socket.AF_UNIX, address)]
    if isinstance(address, tuple):
        if len(address) < 2 or type(address[1]) is not int:
            raise ValueError(f"address {address!r} must be (host, port[, ...])")
        host, port = str(address[0]), address[1]
        if not 0 <= port <= 65535:
            raise ValueError(f"address {address!r}: port out of range 0..65535")
    elif isinstance(address, str):
        host, port = _split_host_port(address)
    else:
        raise TypeError(f"address must be a str or a tuple, not {type(address).__name__}")
    if not host:
        if passive and family == socket.AF_UNSPEC and socket.has_dualstack_ipv6():
            # Go's "tcp" with no host listens on every interface of both families: one
            # IPv6 socket that also takes IPv4 (create_listener clears IPV6_V6ONLY).
            return [(socket.AF_INET6, ("::", port, 0, 0))]
        host = None if passive else "localhost"  # type: ignore[assignment]
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, flags)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve address {address!r} for {network}: {exc}") from exc
    out: list[tuple[int, Any]] = []
    for fam, _, _, _, sockaddr in infos:
        if (fam, sockaddr) not in out:
            out.append((fam, sockaddr))
    return out
