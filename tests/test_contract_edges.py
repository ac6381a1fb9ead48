"""Edges of the contract found by review: timeouts at the extremes, use after close,
the read limit and hang-ups, address forms, stats, and views the caller gives back."""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import netpoll
from conftest import (
    IO_TIMEOUT,
    ServeFactory,
    echo_handler,
    ipv6_loopback_available,
    wait_until,
)

# --- helpers


@pytest.fixture
def tcp_pair() -> Iterator[tuple[netpoll.Connection, socket.socket]]:
    """A dialed netpoll connection and the plain socket accepted for it."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    conn = netpoll.dial_connection("tcp", lsock.getsockname())
    peer, _ = lsock.accept()
    peer.settimeout(IO_TIMEOUT)
    lsock.close()
    try:
        yield conn, peer
    finally:
        conn.close()
        peer.close()


# --- long idle timeout


@pytest.mark.timeout(20)
def test_idle_timeout_of_a_year_keeps_the_poller_alive() -> None:
    """A 'practically never' idle timeout schedules a timer months away; the poller waits
    for it in capped slices instead of passing epoll a timeout it rejects, so it keeps
    serving. (In a subprocess: a dying poller must not take other tests with it.)"""
    script = textwrap.dedent(
        """
        import io, socket, threading, netpoll
        log = io.StringIO()
        netpoll.set_logger_output(log)
        def echo(ctx, conn):
            n = len(conn)
            if n:
                conn.write_binary(conn.next(n)); conn.flush()
            conn.release()
        lst = netpoll.create_listener("tcp", "127.0.0.1:0")
        loop = netpoll.EventLoop(echo, idle_timeout=365 * 86400.0)
        threading.Thread(target=loop.serve, args=(lst,), daemon=True).start()
        s = socket.create_connection(lst.addr); s.settimeout(3)
        s.sendall(b"ping")
        try:
            got = s.recv(10)
        except OSError as exc:
            got = repr(exc).encode()
        print("ECHO", got)
        print("DIED", log.getvalue().count("thread died"))
        s.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=15
    ).stdout
    assert "ECHO b'ping'" in out and "DIED 0" in out, out


# --- reads after close()


@pytest.mark.timeout(10)
def test_every_read_raises_after_close_inside_a_handler(serve: ServeFactory) -> None:
    """API.md: 'After close(), every read and write method raises ConnectionClosedError',
    also inside a handler, where the input buffer is still kept for the running task."""
    results: dict[str, Any] = {}
    done = threading.Event()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        if len(conn) < 12:
            return  # wait for the whole input
        conn.close()
        ops = {
            "read": lambda: conn.read(3),
            "readinto": lambda: conn.readinto(bytearray(3)),
            "until": lambda: bytes(conn.until(b"\n")),
        }
        for name, op in ops.items():
            try:
                results[name] = op()
            except netpoll.ConnectionClosedError:
                results[name] = "raised"
            except Exception as exc:  # pragma: no cover - report anything else
                results[name] = repr(exc)
        done.set()

    srv = serve(handler)
    with socket.create_connection(srv.addr, timeout=IO_TIMEOUT) as c:
        c.sendall(b"line1\nline2\n")
        assert done.wait(IO_TIMEOUT)
    assert results == {"read": "raised", "readinto": "raised", "until": "raised"}


# --- idle timeout while waiting


@pytest.mark.timeout(10)
def test_idle_timeout_closes_a_connection_whose_handler_waits_for_input(
    serve: ServeFactory,
) -> None:
    """API.md: 'Idle timeout closes a connection that sent and received nothing for t
    seconds'. A handler waiting in next(4) for the rest of a header is not activity."""

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        conn.next(4)
        conn.release()

    srv = serve(handler, idle_timeout=0.3)
    with socket.create_connection(srv.addr, timeout=3.0) as c:
        c.sendall(b"ab")
        try:
            got = c.recv(10)
        except TimeoutError:
            got = None
    assert got == b"", "the idle connection was not closed within 3 s (idle_timeout=0.3)"
    assert wait_until(lambda: srv.loop.stats().closed_by_idle_timeout == 1)


# --- peer close + read limit


@pytest.mark.timeout(10)
def test_peer_close_is_noticed_while_reading_is_paused() -> None:
    """API.md: is_active() is false once the peer closed, noticed without the caller
    reading, also while the read buffer limit pauses reading. Nothing the peer sent is
    lost: reading resumes as the caller consumes, and the close callback runs when the
    end of the stream is reached."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    conn = netpoll.dial_connection("tcp", lsock.getsockname(), read_buffer_limit=1024)
    peer, _ = lsock.accept()
    lsock.close()
    closed = threading.Event()
    conn.add_close_callback(lambda c: closed.set())
    try:
        peer.sendall(b"x" * 4096)
        peer.close()
        assert wait_until(lambda: not conn.is_active()), "the hang-up went unnoticed"
        assert conn.read_binary(4096) == b"x" * 4096
        conn.release()  # room again: reading resumes and meets the end of the stream
        assert closed.wait(3.0), "close callback did not run after the end of the stream"
    finally:
        conn.close()


# --- released memoryview


@pytest.mark.timeout(10)
def test_linkbuffer_keeps_data_when_the_caller_releases_its_view() -> None:
    """A payload large enough to be referenced, not copied, survives the caller releasing
    its own view after flush (`with memoryview(data) as m:`): the contract only asks the
    caller not to mutate b until flush."""
    data = bytes(range(256)) * 20  # 5120 bytes: above the no-copy threshold
    lb = netpoll.LinkBuffer()
    with memoryview(data) as m:
        lb.write_binary(m)
        lb.flush()
    assert lb.read_binary(len(data)) == data


# --- configure atomicity


@pytest.mark.timeout(10)
def test_rejected_configure_changes_nothing() -> None:
    """configure() checks every argument before applying any: a call rejected for one
    bad argument changes nothing."""
    cfg = netpoll._config.get_config()
    before = cfg.buffer_size
    new = 2048 if before != 2048 else 4096
    try:
        with pytest.raises(TypeError, match="logger"):
            netpoll.configure(buffer_size=new, logger="not a logger")  # type: ignore[arg-type]
        assert cfg.buffer_size == before
    finally:
        cfg.buffer_size = before


# --- io adapters after close


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["reader", "writer"])
def test_io_adapters_refuse_use_after_close(kind: str) -> None:
    """new_io_reader/new_io_writer give io.RawIOBase-compatible objects: once closed,
    read and write raise ValueError as io's own objects do."""
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"abc")
    lb.flush()
    if kind == "writer":
        f = netpoll.new_io_writer(lb)
        f.close()
        with pytest.raises(ValueError):
            f.write(b"x")
    else:
        f = netpoll.new_io_reader(lb)
        f.close()
        with pytest.raises(ValueError):
            f.read(2)


# --- ":port" all interfaces


@pytest.mark.timeout(10)
@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_tcp_listener_on_all_interfaces_takes_ipv6_clients(serve: ServeFactory) -> None:
    """API.md: '":8080" means all interfaces': for "tcp" that is both families, as in Go
    (one dual-stack socket), so clients on ::1 and 127.0.0.1 both get in."""
    srv = serve(echo_handler, listener=netpoll.create_listener("tcp", ":0"))
    port = srv.addr[1]
    for host in ("::1", "127.0.0.1"):
        with socket.create_connection((host, port), timeout=IO_TIMEOUT) as c:
            c.sendall(b"six")
            assert c.recv(3) == b"six"


# --- NUL in unix path


@pytest.mark.timeout(10)
def test_unix_path_with_nul_byte_is_rejected(tmp_path: Any) -> None:
    """A unix address with an embedded NUL is malformed: ValueError naming the address,
    not a listener bound to the path cut short at the NUL."""
    good = str(tmp_path / "a")
    try:
        with pytest.raises(ValueError, match="address"):
            lst = netpoll.create_listener("unix", good + "\0suffix")
            lst.close()
    finally:
        if os.path.exists(good):
            os.unlink(good)


# --- on_prepare stats


@pytest.mark.timeout(10)
def test_on_prepare_exception_shows_in_stats(serve: ServeFactory) -> None:
    """API.md: stats() counts connections accepted and closed and handler exceptions; a
    connection whose on_prepare raised is all three."""
    log = io.StringIO()
    logging.getLogger("netpoll").addHandler(handler := logging.StreamHandler(log))
    raised = threading.Event()

    def prepare(conn: netpoll.Connection) -> Any:
        raised.set()
        raise RuntimeError("on_prepare fails")

    try:
        srv = serve(lambda ctx, conn: None, on_prepare=prepare)
        with socket.create_connection(srv.addr, timeout=IO_TIMEOUT) as c:
            assert c.recv(1) == b""  # the server closed it
        assert raised.is_set()

        def counts() -> tuple[int, int, int]:
            st = srv.loop.stats()
            return st.connections_accepted, st.connections_closed, st.handler_exceptions

        assert wait_until(lambda: counts() == (1, 1, 1)), counts()
    finally:
        logging.getLogger("netpoll").removeHandler(handler)


# --- infinite timeouts


@pytest.mark.timeout(10)
def test_infinite_read_timeout_means_none(
    tcp_pair: tuple[netpoll.Connection, socket.socket],
) -> None:
    """set_read_timeout(math.inf) means no timeout: a read waits until the data comes
    (not OverflowError from a deadline out of range). NaN is rejected, naming t."""
    conn, peer = tcp_pair
    with pytest.raises(ValueError, match="t must be >= 0"):
        conn.set_read_timeout(math.nan)
    conn.set_read_timeout(math.inf)
    result: list[Any] = []
    finished = threading.Event()

    def reader() -> None:
        try:
            result.append(bytes(conn.next(4)))
        except BaseException as exc:
            result.append(exc)
        finished.set()

    threading.Thread(target=reader, daemon=True).start()
    early = finished.wait(0.5)  # a correct next() is still waiting for the data here
    peer.sendall(b"abcd")
    assert finished.wait(IO_TIMEOUT)
    assert not early and result == [b"abcd"], result


@pytest.mark.timeout(10)
def test_infinite_dial_timeout_means_none() -> None:
    """dial_connection(..., timeout=math.inf) dials with no time limit, as None does."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    try:
        conn = netpoll.dial_connection("tcp", lsock.getsockname(), timeout=math.inf)
        assert conn.is_active()
        conn.close()
    finally:
        lsock.close()


# --- unix dial, full backlog


@pytest.mark.timeout(10)
def test_unix_dial_with_full_backlog_raises(tmp_path: Any) -> None:
    """Dialing a unix listener whose backlog is full gives the OSError the OS gave
    (EAGAIN), as in Go, never a Connection that was not connected.

    Linux queues one more connection than a unix listener's backlog: with ``listen(0)``
    the first dial connects (and carries data), every later one is refused with EAGAIN
    until the listener accepts, after which a dial connects again."""
    path = str(tmp_path / "full.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(0)
    lsock.settimeout(IO_TIMEOUT)
    opened: list[netpoll.Connection] = []
    accepted: list[socket.socket] = []
    try:
        first = netpoll.dial_connection("unix", path, timeout=0.3)
        opened.append(first)
        assert first.is_active()
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(BlockingIOError, match="Resource temporarily unavailable") as ei:
                opened.append(netpoll.dial_connection("unix", path, timeout=0.3))
            assert ei.value.errno == errno.EAGAIN
            assert path in str(ei.value), "the error names the address dialed"
        assert len(os.listdir("/proc/self/fd")) == fds, "a refused dial leaked its socket"
        first.write(b"x")
        peer, _ = lsock.accept()  # the queued connection is the first dial's, and real
        accepted.append(peer)
        peer.settimeout(IO_TIMEOUT)
        assert peer.recv(1) == b"x"
        again = netpoll.dial_connection("unix", path, timeout=0.3)  # room in the queue again
        opened.append(again)
        assert again.is_active()
    finally:
        for c in opened:
            c.close()
        for p in accepted:
            p.close()
        lsock.close()


# --- non-contiguous views


@pytest.mark.timeout(10)
def test_connection_sends_a_strided_view(
    tcp_pair: tuple[netpoll.Connection, socket.socket],
) -> None:
    """write_binary accepts any bytes-like object: a strided view large enough to be
    referenced is copied, since sendmsg needs contiguous memory."""
    conn, peer = tcp_pair
    src = bytes(range(256)) * 64  # 16 KiB
    view = memoryview(src)[::2]  # 8 KiB, strided
    conn.write_binary(view)
    conn.flush()
    got = b""
    while len(got) < len(view):
        chunk = peer.recv(len(view) - len(got))
        assert chunk
        got += chunk
    assert got == view.tobytes()


# --- argument checks


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: netpoll.create_listener("tcp", "127.0.0.1:\u0661"), ValueError, "bad port"),
        (lambda: netpoll.create_listener("tcp", ("127.0.0.1", True)), ValueError, "port"),
        (lambda: netpoll.create_listener("tcp", "127.0.0.1:0", backlog=-1), ValueError, "backlog"),
        (lambda: netpoll.create_listener("unix", "/tmp/" + "x" * 200), ValueError, "at most"),
        (lambda: netpoll.Dialer(read_buffer_limit=-1), ValueError, "read_buffer_limit"),
        (
            lambda: netpoll.dial_connection("tcp", "127.0.0.1:1", read_buffer_limit=0),
            ValueError,
            "read_buffer_limit",
        ),
        (
            lambda: netpoll.create_listener("tcp", "127.0.0.1:0", backlog="5"),
            TypeError,
            r"^backlog must be (an int|int or None), not str$",  # pure | compiled wording
        ),
        (
            lambda: netpoll.create_listener(4, "127.0.0.1:0"),
            TypeError,
            r"^network must be (a )?str, not int$",
        ),
        (lambda: netpoll.dial_connection(b"tcp", "127.0.0.1:1"), TypeError, "network must be"),
        (
            lambda: netpoll.create_listener("tcp", 8080),
            TypeError,
            "address must be a str or a tuple, not int",
        ),
        (lambda: netpoll.create_listener("tcp", "[::1:80"), ValueError, r"'\[host\]:port'"),
        (lambda: netpoll.create_listener("tcp", "[::1]80"), ValueError, r"'\[host\]:port'"),
        (
            lambda: netpoll.create_listener("tcp", "::1:80"),
            ValueError,
            r"IPv6 hosts must be written '\[host\]:port'",
        ),
        (lambda: netpoll.create_listener("tcp", ("::1",)), ValueError, r"\(host, port"),
        (lambda: netpoll.create_listener("tcp6", "127.0.0.1:0"), ValueError, "cannot resolve"),
        (lambda: netpoll.dial_connection("tcp4", "[::1]:1"), ValueError, "cannot resolve"),
        (lambda: netpoll.create_listener("unix", b""), ValueError, "non-empty path"),
        (lambda: netpoll.dial_connection("unix", None), ValueError, "non-empty path"),
    ],
)
def test_bad_arguments_name_the_problem(call: Any, exc: type[Exception], words: str) -> None:
    """Malformed ports, backlogs, unix paths and limits raise before any socket is made,
    with a message that names the argument."""
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(exc, match=words):
        call()
    assert len(os.listdir("/proc/self/fd")) == before
