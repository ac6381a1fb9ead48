"""Dialing over loopback and unix sockets: networks, address forms, refusals, timeouts."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import ServeFactory, conn_read_exact, echo_handler, ipv6_loopback_available


def _round_trip(conn: netpoll.Connection, msg: bytes = b"dial round trip") -> None:
    try:
        assert conn.is_active()
        conn.write(msg)
        assert conn_read_exact(conn, len(msg)) == msg
    finally:
        conn.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("net", "form"),
    [
        ("tcp", "host:port"),
        ("tcp", "tuple"),
        ("tcp4", "host:port"),
        ("tcp4", "tuple"),
        ("tcp4", "localhost:port"),  # tcp4: "localhost" can only mean 127.0.0.1
        ("tcp4", ":port"),  # no host: the local system, as in Go
        ("tcp", ":port"),  # "localhost" of either family: the IPv4 one answers
    ],
)
def test_dial_tcp_address_forms(serve: ServeFactory, net: str, form: str) -> None:
    srv = serve(echo_handler, network="tcp4")
    port = srv.addr[1]
    address: Any = {
        "host:port": f"127.0.0.1:{port}",
        "tuple": ("127.0.0.1", port),
        "localhost:port": f"localhost:{port}",
        ":port": f":{port}",
    }[form]
    conn = netpoll.dial_connection(net, address)
    assert conn.remote_addr[:2] == ("127.0.0.1", port)
    assert conn.poller is not None  # registered with a poller
    _round_trip(conn)


@pytest.mark.timeout(20)
@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
def test_dial_tcp6(serve: ServeFactory) -> None:
    srv = serve(echo_handler, network="tcp6")
    port = srv.addr[1]
    conn = netpoll.dial_connection("tcp6", f"[::1]:{port}")
    assert conn.remote_addr[0] == "::1"
    _round_trip(conn)
    _round_trip(netpoll.dial_connection("tcp6", ("::1", port)))
    _round_trip(netpoll.dial_tcp("tcp6", f"[::1]:{port}"))


@pytest.mark.timeout(20)
def test_dial_unix(serve: ServeFactory) -> None:
    srv = serve(echo_handler, network="unix")
    conn = netpoll.dial_connection("unix", srv.addr)
    assert conn.remote_addr == srv.addr
    _round_trip(conn)
    _round_trip(netpoll.dial_unix(srv.addr))
    _round_trip(netpoll.dial_unix(srv.addr, timeout=5))


@pytest.mark.timeout(20)
def test_dialer_object_and_helpers(serve: ServeFactory) -> None:
    srv = serve(echo_handler)
    address = f"127.0.0.1:{srv.addr[1]}"
    dialer = netpoll.Dialer()
    _round_trip(dialer.dial_connection("tcp", address))
    _round_trip(dialer.dial_connection("tcp", address, timeout=5))
    _round_trip(dialer.dial_timeout("tcp", address, 5))
    _round_trip(netpoll.dial_tcp("tcp", address))
    _round_trip(netpoll.dial_tcp("tcp4", address, timeout=5))
    _round_trip(netpoll.dial_connection("tcp", address, timeout=5))


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening, so connecting is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.mark.timeout(20)
def test_refused_tcp_raises_connection_refused(refusing_port: int) -> None:
    for dial in (
        lambda: netpoll.dial_connection("tcp", f"127.0.0.1:{refusing_port}"),
        lambda: netpoll.dial_connection("tcp", ("127.0.0.1", refusing_port), timeout=5),
        lambda: netpoll.Dialer().dial_timeout("tcp4", f"127.0.0.1:{refusing_port}", 5),
        lambda: netpoll.dial_tcp("tcp", f"127.0.0.1:{refusing_port}"),
    ):
        with pytest.raises(ConnectionRefusedError) as ei:
            dial()
        assert isinstance(ei.value, OSError)


@pytest.mark.timeout(20)
def test_refused_unix(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.sock")
    with pytest.raises(FileNotFoundError):
        netpoll.dial_unix(missing)
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)  # a socket file nobody listens on
    try:
        with pytest.raises(ConnectionRefusedError):
            netpoll.dial_connection("unix", stale)
    finally:
        s.close()


@pytest.fixture
def full_backlog() -> Iterator[tuple[str, int]]:
    """A loopback listener whose accept queue is full, so a further connect hangs.

    Skips the test when this kernel keeps completing handshakes anyway.
    """
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    addr = lsock.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(s)
            s.setblocking(False)
            s.connect_ex(addr)
            p = select.poll()
            p.register(s, select.POLLOUT)
            if not p.poll(300):  # this one hangs: the queue is full
                break
        else:
            pytest.skip("the kernel kept accepting handshakes; cannot make a dial hang")
        yield addr
    finally:
        for s in fillers:
            s.close()
        lsock.close()


@pytest.mark.timeout(20)
def test_dial_timeout_raises_dial_timeout_error(full_backlog: tuple[str, int]) -> None:
    host, port = full_backlog
    start = time.monotonic()
    with pytest.raises(netpoll.DialTimeoutError) as ei:
        netpoll.dial_connection("tcp", f"{host}:{port}", timeout=0.3)
    elapsed = time.monotonic() - start
    assert isinstance(ei.value, TimeoutError)
    assert 0.25 <= elapsed < 3.0
    start = time.monotonic()
    with pytest.raises(netpoll.DialTimeoutError):
        netpoll.Dialer().dial_timeout("tcp", (host, port), 0.2)
    assert 0.15 <= time.monotonic() - start < 3.0


@pytest.mark.parametrize(
    ("net", "address", "word"),
    [
        ("udp", "127.0.0.1:80", "network"),
        ("tcp", "127.0.0.1", "port"),
        ("tcp", "127.0.0.1:notaport", "port"),
        ("tcp", "127.0.0.1:99999", "port"),
        ("unix", "", "address"),
    ],
)
def test_dial_bad_arguments_raise_value_error(net: str, address: Any, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        netpoll.dial_connection(net, address)


def test_dial_bad_timeout_and_helper_network(refusing_port: int) -> None:
    with pytest.raises(ValueError, match="timeout"):
        netpoll.dial_connection("tcp", f"127.0.0.1:{refusing_port}", timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        netpoll.dial_connection("tcp", f"127.0.0.1:{refusing_port}", timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="network"):
        netpoll.dial_tcp("unix", "/tmp/x.sock")


def _resolving_to(monkeypatch: pytest.MonkeyPatch, hosts: list[str]) -> None:
    """Make every name resolve to ``hosts``, in that order (IPv4 loopback addresses)."""

    def fake(host: Any, port: Any, family: int = 0, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (h, int(port))) for h in hosts]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.timeout(20)
def test_dial_tries_every_address_in_turn(
    serve: ServeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with several addresses is dialed address by address, as Go does: the
    first refuses (nothing listens on 127.0.0.2 at that port), the second answers."""
    srv = serve(echo_handler)
    port = srv.addr[1]
    _resolving_to(monkeypatch, ["127.0.0.2", srv.addr[0]])
    conn = netpoll.dial_connection("tcp", f"service.test:{port}", timeout=5)
    try:
        assert conn.remote_addr == (srv.addr[0], port)
        conn.write(b"ping")
        assert conn_read_exact(conn, 4) == b"ping"
    finally:
        conn.close()


@pytest.mark.timeout(20)
def test_dial_raises_the_last_error_when_every_address_fails(
    refusing_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _resolving_to(monkeypatch, ["127.0.0.2", "127.0.0.3"])
    with pytest.raises(ConnectionRefusedError, match=r"127\.0\.0\.3"):
        netpoll.dial_connection("tcp", f"service.test:{refusing_port}")
