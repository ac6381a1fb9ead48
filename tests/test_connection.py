"""Connection over real sockets: liveness, close callbacks, closed-state errors, addresses,
timeouts, copying I/O and client-side request handlers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import (
    IO_TIMEOUT,
    ServeFactory,
    conn_read_exact,
    dup_socket,
    echo_handler,
    frame,
    frame_echo_handler,
    recv_exact,
    wait_until,
)


class PlainServer:
    """A plain listening socket whose accepted peers the test drives by hand."""

    def __init__(self, network: str, tmp_path: Path, rcvbuf: int | None = None) -> None:
        self.network = network
        if network == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.addr: Any = str(tmp_path / "plain.sock")
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addr = ("127.0.0.1", 0)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(self.addr)
        self.sock.listen(16)
        self.sock.settimeout(IO_TIMEOUT)
        self.addr = self.sock.getsockname()
        self.peers: list[socket.socket] = []

    def dial(self, **kwargs: Any) -> tuple[netpoll.Connection, socket.socket]:
        """A dialed netpoll connection and the accepted server-side socket."""
        conn = netpoll.dial_connection(self.network, self.addr, **kwargs)
        peer, _ = self.sock.accept()
        peer.settimeout(IO_TIMEOUT)
        self.peers.append(peer)
        return conn, peer

    def close(self) -> None:
        for p in self.peers:
            p.close()
        self.sock.close()


@pytest.fixture
def plain(network: str, tmp_path: Path) -> Iterator[PlainServer]:
    srv = PlainServer(network, tmp_path)
    conns: list[netpoll.Connection] = []
    orig = srv.dial

    def dial(**kwargs: Any) -> tuple[netpoll.Connection, socket.socket]:
        conn, peer = orig(**kwargs)
        conns.append(conn)
        return conn, peer

    srv.dial = dial  # type: ignore[method-assign]
    try:
        yield srv
    finally:
        for c in conns:
            c.close()
        srv.close()


def closed_event(conn: netpoll.Connection) -> threading.Event:
    ev = threading.Event()
    conn.add_close_callback(lambda c: ev.set())
    return ev


# --------------------------------------------------------------------------- liveness


@pytest.mark.timeout(20)
def test_is_active_turns_false_on_peer_close_without_reading(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    closed = closed_event(conn)
    assert conn.is_active()
    peer.close()
    assert closed.wait(IO_TIMEOUT), "close callback not run after a peer close"
    assert not conn.is_active()


@pytest.mark.timeout(20)
def test_is_active_false_on_peer_close_with_unread_data(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    peer.sendall(b"unread")
    peer.close()
    assert wait_until(lambda: not conn.is_active(), IO_TIMEOUT)


@pytest.mark.timeout(20)
def test_is_active_false_after_local_close(plain: PlainServer) -> None:
    conn, _peer = plain.dial()
    conn.close()
    assert not conn.is_active()


# --------------------------------------------------------------------------- close callbacks


def _callbacks(conn: netpoll.Connection) -> tuple[list[tuple[str, Any]], threading.Event]:
    lock = threading.Lock()
    calls: list[tuple[str, Any]] = []
    done = threading.Event()

    def make(name: str) -> Callable[[netpoll.Connection], None]:
        def cb(c: netpoll.Connection) -> None:
            with lock:
                calls.append((name, c))
            if name == "first":
                done.set()

        return cb

    for name in ("first", "second", "third"):
        conn.add_close_callback(make(name))
    return calls, done


@pytest.mark.timeout(20)
@pytest.mark.parametrize("closer", ["peer", "local"])
@pytest.mark.parametrize("with_handler", [False, True])
def test_close_callbacks_on_dialed_connection(
    plain: PlainServer, closer: str, with_handler: bool
) -> None:
    conn, peer = plain.dial()
    if with_handler:
        conn.set_on_request(lambda ctx, c: c.release())
    calls, done = _callbacks(conn)
    if closer == "peer":
        peer.close()
    else:
        conn.close()
    assert done.wait(IO_TIMEOUT)
    conn.close()  # idempotent, and no second round of callbacks
    assert [name for name, _ in calls] == ["third", "second", "first"]
    assert all(c is conn for _, c in calls)
    assert not wait_until(lambda: len(calls) > 3, 0.1)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("closer", ["peer", "local"])
def test_close_callbacks_on_server_connection(
    serve: ServeFactory, network: str, closer: str
) -> None:
    got: dict[str, Any] = {}
    ready = threading.Event()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
        got["conn"] = conn
        got["calls"], got["done"] = _callbacks(conn)
        ready.set()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = bytes(conn.next(len(conn)))
        conn.release()
        if data == b"close":
            conn.close()

    srv = serve(handler, network=network, on_connect=on_connect)
    c = srv.connect()
    assert ready.wait(IO_TIMEOUT)
    if closer == "peer":
        c.close()
    else:
        c.sendall(b"close")
    assert got["done"].wait(IO_TIMEOUT)
    assert [name for name, _ in got["calls"]] == ["third", "second", "first"]
    assert all(x is got["conn"] for _, x in got["calls"])


@pytest.mark.timeout(20)
def test_close_is_idempotent_and_context_manager(plain: PlainServer) -> None:
    conn, _peer = plain.dial()
    count = 0

    def cb(c: netpoll.Connection) -> None:
        nonlocal count
        count += 1

    conn.add_close_callback(cb)
    with conn as entered:
        assert entered is conn
        assert conn.is_active()
    assert not conn.is_active()
    assert count == 1
    conn.close()
    conn.close()
    assert count == 1
    with pytest.raises(netpoll.ConnectionClosedError):
        conn.write(b"x")


def test_peek_and_skip(plain: PlainServer) -> None:
    """peek waits and does not advance; skip advances; both are zero-copy within a block,
    assemble across blocks, and their views die at release()."""
    conn, peer = plain.dial()
    conn.set_read_timeout(IO_TIMEOUT)
    peer.sendall(b"hello world")
    first = conn.peek(5)  # waits for the bytes
    assert bytes(first) == b"hello"
    assert bytes(conn.peek(11)) == b"hello world"
    assert len(conn) == 11
    assert len(conn.peek(0)) == 0
    conn.skip(6)
    assert bytes(conn.peek(5)) == b"world"
    assert bytes(conn.next(5)) == b"world"
    conn.release()
    with pytest.raises(ValueError):
        bytes(first)
    for bad in (-1, True, 1.0, "1"):
        with pytest.raises((ValueError, TypeError)):
            conn.peek(bad)  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError)):
            conn.skip(bad)  # type: ignore[arg-type]
    # More than one receive block holds: peek assembles, skip crosses blocks.
    big = bytes(range(256)) * 1200  # 300 KiB
    peer.sendall(big)
    assert bytes(conn.peek(len(big))) == big
    conn.skip(len(big) - 3)
    assert bytes(conn.next(3)) == big[-3:]
    conn.release()
    # skip waits for bytes still on the way.
    done = threading.Event()

    def skip_ahead() -> None:
        conn.skip(4)
        done.set()

    t = threading.Thread(target=skip_ahead)
    t.start()
    peer.sendall(b"abcdef")
    t.join(IO_TIMEOUT)
    assert done.is_set()
    assert bytes(conn.next(2)) == b"ef"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [5, 9000])
@pytest.mark.parametrize("revoke", ["release", "read"])
@pytest.mark.parametrize("then", ["flush", "write_string"])
def test_view_released_before_flush_raises_a_clear_error(
    plain: PlainServer, size: int, revoke: str, then: str
) -> None:
    """write_binary may keep a reference to a view until flush(); releasing the view
    first (release(), or a read that releases) makes the queued write unsendable. The next
    call that needs it raises ValueError saying so, drops the queue, and the connection
    stays usable."""
    conn, peer = plain.dial()
    conn.set_read_timeout(IO_TIMEOUT)
    peer.sendall(b"v" * size + b"!")
    conn.write_binary(conn.next(size))
    if revoke == "release":
        conn.release()
    else:
        assert conn.read(1) == b"!"
    with pytest.raises(ValueError, match="released before flush"):
        if then == "flush":
            conn.flush()
        else:
            conn.write_string("x")  # moves the queue into the buffer first
    assert conn.malloc_len() == 0
    conn.write(b"ok")
    assert recv_exact(peer, 2) == b"ok"


# --------------------------------------------------------------------------- closed state


def _read_ops(conn: netpoll.Connection) -> dict[str, Callable[[], Any]]:
    return {
        "next": lambda: conn.next(1),
        "peek": lambda: conn.peek(1),
        "skip": lambda: conn.skip(1),
        "until": lambda: conn.until(b"\n"),
        "read_line": lambda: conn.read_line(),
        "read_binary": lambda: conn.read_binary(1),
        "read_string": lambda: conn.read_string(1),
        "read_byte": lambda: conn.read_byte(),
        "slice": lambda: conn.slice(1),
        "release": lambda: conn.release(),
        "read": lambda: conn.read(1),
        "read_zero": lambda: conn.read(0),
        "read_all": lambda: conn.read(),
        "readinto": lambda: conn.readinto(bytearray(4)),
        "readinto_empty": lambda: conn.readinto(bytearray(0)),
        "reader.next": lambda: conn.reader.next(1),
    }


def _write_ops(conn: netpoll.Connection) -> dict[str, Callable[[], Any]]:
    def append() -> None:
        lb = netpoll.LinkBuffer()
        lb.write_binary(b"abc")
        conn.append(lb)

    return {
        "malloc": lambda: conn.malloc(4),
        "malloc_ack": lambda: conn.malloc_ack(0),
        "write_binary": lambda: conn.write_binary(b"x"),
        "write_string": lambda: conn.write_string("x"),
        "write_byte": lambda: conn.write_byte(1),
        "write_direct": lambda: conn.write_direct(b"x", 0),
        "append": append,
        "flush": lambda: conn.flush(),
        "write": lambda: conn.write(b"x"),
        "writer.write_binary": lambda: conn.writer.write_binary(b"x"),
    }


@pytest.mark.timeout(20)
@pytest.mark.parametrize("buffered", [False, True])
def test_every_read_and_write_raises_after_close(plain: PlainServer, buffered: bool) -> None:
    conn, peer = plain.dial()
    if buffered:  # unread input and unflushed output must not leak through either
        peer.sendall(b"line\nmore data")
        assert wait_until(lambda: len(conn) == 14)
        conn.write_binary(b"pending")
    conn.close()
    failures = []
    for name, op in {**_read_ops(conn), **_write_ops(conn)}.items():
        try:
            result = op()
        except netpoll.ConnectionClosedError:
            continue
        except Exception as exc:
            failures.append(f"{name} raised {exc!r}")
        else:
            failures.append(f"{name} returned {result!r}")
    assert failures == []


@pytest.mark.timeout(20)
def test_last_bytes_of_a_peer_close_stay_readable_until_close(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    closed = closed_event(conn)
    peer.sendall(b"last words")
    peer.close()
    assert closed.wait(IO_TIMEOUT)
    assert not conn.is_active()
    assert bytes(conn.next(4)) == b"last"
    with pytest.raises(netpoll.PeerClosedError):
        conn.next(100)  # a read past the end
    assert conn.read_binary(6) == b" words"
    conn.close()
    for name, op in _read_ops(conn).items():
        with pytest.raises(netpoll.ConnectionClosedError):
            op()
            pytest.fail(f"{name} did not raise after close()")


@pytest.mark.timeout(20)
def test_blocked_read_raises_when_closed_locally(plain: PlainServer) -> None:
    conn, _peer = plain.dial()
    errors: list[BaseException] = []
    started = threading.Event()

    def reader() -> None:
        started.set()
        try:
            conn.next(10)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert started.wait(IO_TIMEOUT)
    assert wait_until(lambda: conn._need == 10)  # the reader is waiting
    conn.close()
    t.join(IO_TIMEOUT)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], netpoll.ConnectionClosedError)
    # close() left the input buffer to the waiting reader; it handed the blocks back.
    assert conn._in.closed


# --------------------------------------------------------------------------- addresses


@pytest.mark.timeout(20)
def test_fileno_and_addresses(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    fd = conn.fileno()
    assert isinstance(fd, int) and fd >= 0
    with dup_socket(conn) as s:
        assert s.getsockname() == conn.local_addr
        assert s.getpeername() == peer.getsockname()
    assert conn.remote_addr == plain.addr
    if plain.network == "tcp":
        assert conn.local_addr == peer.getpeername()
        assert conn.remote_addr[0] == "127.0.0.1"
    peer.sendall(b"alive")  # the dup's close left the connection alone
    assert conn_read_exact(conn, 5) == b"alive"


@pytest.mark.timeout(20)
def test_server_connection_addresses(serve: ServeFactory, network: str) -> None:
    got: dict[str, Any] = {}
    ready = threading.Event()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
        got["local"], got["remote"] = conn.local_addr, conn.remote_addr
        ready.set()

    srv = serve(echo_handler, network=network, on_connect=on_connect)
    c = srv.connect()
    assert ready.wait(IO_TIMEOUT)
    assert got["local"] == c.getpeername()
    if network == "tcp":
        assert got["remote"] == c.getsockname()


@pytest.mark.timeout(20)
def test_tcp_nodelay_on_dialed_connection(serve: ServeFactory) -> None:
    srv = serve(echo_handler)
    conn = srv.dial()
    with dup_socket(conn) as s:
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    conn.write(b"ok")
    assert conn_read_exact(conn, 2) == b"ok"


# --------------------------------------------------------------------------- timeouts


@pytest.mark.timeout(20)
def test_read_timeout_neither_closes_nor_consumes(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    conn.set_read_timeout(0.2)
    start = time.monotonic()
    with pytest.raises(netpoll.ReadTimeoutError) as ei:
        conn.next(5)
    assert 0.15 <= time.monotonic() - start < 3.0
    assert isinstance(ei.value, TimeoutError)
    assert conn.is_active()
    peer.sendall(b"hel")
    assert wait_until(lambda: len(conn) == 3)
    with pytest.raises(netpoll.ReadTimeoutError):
        conn.next(5)
    assert len(conn) == 3  # nothing consumed
    with pytest.raises(netpoll.ReadTimeoutError):
        conn.read_binary(4)
    assert conn.is_active()
    peer.sendall(b"lo")
    assert bytes(conn.next(5)) == b"hello"
    conn.release()
    with pytest.raises(netpoll.ReadTimeoutError):
        conn.read(1)  # read waits for one byte, bounded by the read timeout too
    conn.set_read_timeout(None)
    peer.sendall(b"!")
    assert conn.read(10) == b"!"


@pytest.mark.timeout(30)
def test_write_timeout_when_peer_never_reads(network: str, tmp_path: Path) -> None:
    srv = PlainServer(network, tmp_path, rcvbuf=4096)
    try:
        conn, _peer = srv.dial()
        with conn:
            conn.set_write_timeout(0.2)
            payload = b"\0" * (1 << 20)
            start = time.monotonic()
            with pytest.raises(netpoll.WriteTimeoutError) as ei:
                for _ in range(64):  # 64 MiB: far beyond every kernel buffer
                    conn.write(payload)
            assert isinstance(ei.value, TimeoutError)
            assert time.monotonic() - start < 5.0
    finally:
        srv.close()


@pytest.mark.timeout(20)
def test_idle_timeout_on_dialed_connection(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    closed = closed_event(conn)
    start = time.monotonic()
    conn.set_idle_timeout(0.3)
    assert closed.wait(IO_TIMEOUT)
    assert 0.2 <= time.monotonic() - start < 3.0
    assert not conn.is_active()
    assert peer.recv(10) == b""  # the peer sees the close


# --------------------------------------------------------------------------- copying I/O


@pytest.mark.timeout(20)
def test_read_readinto_write(serve: ServeFactory, network: str) -> None:
    srv = serve(echo_handler, network=network)
    conn = srv.dial()
    assert conn.write(b"hello world") == 11
    got = bytearray()
    while len(got) < 11:
        chunk = conn.read(3)
        assert 1 <= len(chunk) <= 3
        got += chunk
    assert got == b"hello world"
    assert conn.write(bytearray(b"into")) == 4
    buf = bytearray(10)
    n = 0
    while n < 4:
        k = conn.readinto(memoryview(buf)[n:])
        assert k > 0
        n += k
    assert buf[:4] == b"into"
    conn.write(memoryview(b"xyz"))
    assert wait_until(lambda: len(conn) == 3)
    assert conn.read() == b"xyz"  # read() with no size: what is buffered


@pytest.mark.timeout(20)
def test_pipelined_rpc_with_client_on_request(serve: ServeFactory, network: str) -> None:
    srv = serve(frame_echo_handler, network=network)
    conn = srv.dial()
    cond = threading.Condition()
    responses: list[bytes] = []

    def on_response(ctx: Any, c: netpoll.Connection) -> None:
        hdr = c.next(4)
        body = bytes(c.next(int.from_bytes(hdr, "big")))
        c.release()
        with cond:
            responses.append(body)
            cond.notify_all()

    conn.set_on_request(on_response)
    requests = [b"request-%03d-" % i + b"p" * (i * 37 % 500) for i in range(100)]
    for i, r in enumerate(requests):
        conn.write_binary(frame(r))
        if i % 7 == 0:
            conn.flush()
    conn.flush()
    with cond:
        assert cond.wait_for(lambda: len(responses) == 100, IO_TIMEOUT), len(responses)
    assert responses == requests


@pytest.mark.timeout(20)
def test_set_on_request_after_data_already_buffered(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    peer.sendall(b"early")
    assert wait_until(lambda: len(conn) == 5)
    got: list[bytes] = []
    done = threading.Event()

    def handler(ctx: Any, c: netpoll.Connection) -> None:
        got.append(bytes(c.next(len(c))))
        c.release()
        done.set()

    conn.set_on_request(handler)
    assert done.wait(IO_TIMEOUT)
    assert got == [b"early"]


@pytest.mark.timeout(20)
def test_client_on_request_receives_data_before_peer_close(plain: PlainServer) -> None:
    conn, peer = plain.dial()
    got = bytearray()
    conn.set_on_request(lambda ctx, c: got.extend(c.read()))
    closed = closed_event(conn)
    peer.sendall(b"last words")
    peer.close()
    assert closed.wait(IO_TIMEOUT)
    assert bytes(got) == b"last words"
