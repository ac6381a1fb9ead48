"""Public API that had no behaviour test: keepalive, read-buffer limits (per connection and
per Dialer), SO_REUSEPORT listeners, abstract unix addresses, the poll backend, text
reads and writes with encodings on a live connection, and ``EventLoop.addr``/``serving``."""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import (
    IO_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    ServeFactory,
    dup_socket,
    echo_handler,
    recv_exact,
    wait_until,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture
def tcp_pair() -> Iterator[tuple[netpoll.Connection, socket.socket]]:
    """A dialed netpoll connection and the plain socket accepted for it."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.settimeout(IO_TIMEOUT)
    conn = netpoll.dial_connection("tcp", lsock.getsockname(), timeout=IO_TIMEOUT)
    peer, _ = lsock.accept()
    peer.settimeout(IO_TIMEOUT)
    try:
        yield conn, peer
    finally:
        conn.close()
        peer.close()
        lsock.close()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- keepalive


def _keepalive_options(conn: netpoll.Connection) -> tuple[int, int, int]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL) as the kernel has them for ``conn``."""
    with dup_socket(conn) as s:
        return (
            s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        )


@pytest.mark.timeout(10)
@linux_only
@pytest.mark.parametrize(
    ("args", "idle", "interval"),
    [
        ((5,), 5, 5),  # no interval: probes every ``idle`` seconds, as in Go
        ((30, 7), 30, 7),
        ((2.9, 1.5), 2, 1),  # whole seconds, rounded down
        ((0.2,), 1, 1),  # at least a second: the kernel takes nothing shorter
        ((0,), 1, 1),
        ((5, 0), 5, 5),  # interval 0: the idle value
        ((math.inf,), 32767, 32767),  # the kernel's limit
        ((10**6, 10**6), 32767, 32767),
    ],
)
def test_set_keepalive_sets_the_socket_options(
    tcp_pair: tuple[netpoll.Connection, socket.socket],
    args: tuple[float, ...],
    idle: int,
    interval: int,
) -> None:
    conn, _ = tcp_pair
    assert _keepalive_options(conn)[0] == 0, "keepalive is off until asked for"
    conn.set_keepalive(*args)
    assert _keepalive_options(conn) == (1, idle, interval)
    conn.set_keepalive(None)  # and off again
    assert _keepalive_options(conn)[0] == 0
    conn.write(b"ok")  # the connection is unharmed
    assert recv_exact(tcp_pair[1], 2) == b"ok"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        ((-1,), ValueError, "idle must be >= 0"),
        ((math.nan,), ValueError, "idle must be >= 0"),
        (("5",), TypeError, r"^idle must be (a number of seconds or None|float or None), not str$"),
        ((5, -2), ValueError, "interval must be >= 0"),
        (
            (5, "2"),
            TypeError,
            r"^interval must be (a number of seconds or None|float or None), not str$",
        ),
    ],
)
def test_set_keepalive_rejects_bad_arguments(
    tcp_pair: tuple[netpoll.Connection, socket.socket],
    args: tuple[Any, ...],
    exc: type[Exception],
    words: str,
) -> None:
    conn, _ = tcp_pair
    with pytest.raises(exc, match=words):
        conn.set_keepalive(*args)
    assert _keepalive_options(conn)[0] == 0, "the rejected call turned keepalive on"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("set_keepalive-idle", lambda conn: conn.set_keepalive(True)),
        ("set_keepalive-interval", lambda conn: conn.set_keepalive(5, True)),
        ("ShardQueue.close", lambda conn: netpoll.mux.ShardQueue(1, conn).close(True)),
        ("EventLoop.shutdown", lambda conn: netpoll.EventLoop(echo_handler).shutdown(True)),
        ("EventLoop.wait_serving", lambda conn: netpoll.EventLoop(echo_handler).wait_serving(True)),
    ],
)
def test_a_bool_is_not_a_number_of_seconds(
    tcp_pair: tuple[netpoll.Connection, socket.socket], name: str, call: Callable[[Any], Any]
) -> None:
    """Every duration argument refuses True/False (as set_read_timeout(True) does on both
    builds), whichever build runs."""
    conn, _ = tcp_pair
    with pytest.raises(TypeError, match=r"must be a number of seconds or None, not bool$"):
        call(conn)


@pytest.mark.timeout(20)
@linux_only
def test_set_keepalive_on_a_server_connection(serve: ServeFactory) -> None:
    """A handler can turn keepalive on for the connection it serves."""
    seen: list[tuple[int, int, int]] = []
    done = threading.Event()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
        try:
            conn.set_keepalive(60, 10)
            seen.append(_keepalive_options(conn))
        finally:
            done.set()

    srv = serve(echo_handler, on_connect=on_connect)
    c = srv.connect()
    assert done.wait(IO_TIMEOUT)
    assert seen == [(1, 60, 10)]
    c.sendall(b"still echoes")
    assert recv_exact(c, 12) == b"still echoes"


@pytest.mark.timeout(10)
def test_set_keepalive_after_close_says_the_connection_is_closed(
    tcp_pair: tuple[netpoll.Connection, socket.socket],
) -> None:
    conn, _ = tcp_pair
    conn.close()
    with pytest.raises(netpoll.ConnectionClosedError, match="closed"):
        conn.set_keepalive(5)


@pytest.mark.timeout(10)
def test_set_keepalive_on_a_unix_connection_names_the_problem(tmp_path: Path) -> None:
    path = str(tmp_path / "ka.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lsock:
        lsock.bind(path)
        lsock.listen()
        with (
            netpoll.dial_connection("unix", path, timeout=IO_TIMEOUT) as conn,
            pytest.raises((ValueError, OSError), match=r"(?i)keepalive"),
        ):
            conn.set_keepalive(5)


# --------------------------------------------------------------------------- read limits

LIMIT = 64 << 10
SENT = 4 << 20  # far beyond the limit, a receive block and a unix socket's kernel buffer
# What may sit in the buffer beyond the limit: the receive that crossed it (a block of at
# most four times the default 64 KiB buffer_size).
SLACK = 256 << 10


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "limit.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen()
    lsock.settimeout(IO_TIMEOUT)
    try:
        yield path, lsock
    finally:
        lsock.close()


def _limited(how: str, path: str) -> netpoll.Connection:
    if how == "Dialer":
        return netpoll.Dialer(read_buffer_limit=LIMIT).dial_connection("unix", path)
    if how == "dial-argument-over-Dialer":
        dialer = netpoll.Dialer(read_buffer_limit=64 << 20)
        return dialer.dial_connection("unix", path, read_buffer_limit=LIMIT)
    conn = netpoll.dial_connection("unix", path)  # the default limit, 64 MiB
    conn.set_read_buffer_limit(LIMIT)
    return conn


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["Dialer", "dial-argument-over-Dialer", "set_read_buffer_limit"])
def test_read_buffer_limit_pushes_back_then_resumes(
    unix_listener: tuple[str, socket.socket], how: str
) -> None:
    """With the limit reached, the poller stops reading: the buffer stays near the limit
    and the sender blocks (the kernel pushes back). Raising the limit with
    set_read_buffer_limit resumes reading, and every byte arrives, in order."""
    path, lsock = unix_listener
    conn = _limited(how, path)
    peer, _ = lsock.accept()
    peer.settimeout(IO_TIMEOUT)
    payload = os.urandom(SENT)
    sent = threading.Event()
    send_errors: list[BaseException] = []

    def send() -> None:
        try:
            peer.sendall(payload)
        except BaseException as exc:
            send_errors.append(exc)
        sent.set()

    sender = threading.Thread(target=send, daemon=True)
    try:
        sender.start()
        assert wait_until(lambda: len(conn) >= LIMIT, IO_TIMEOUT), len(conn)
        # Without the limit the poller would take all 4 MiB well within this second.
        assert not wait_until(lambda: len(conn) > LIMIT + SLACK, 1.0), len(conn)
        assert not sent.is_set(), "the sender was never pushed back"
        conn.set_read_buffer_limit(8 << 20)
        assert wait_until(lambda: len(conn) == SENT, IO_TIMEOUT), len(conn)
        assert sent.wait(IO_TIMEOUT) and not send_errors, send_errors
        assert conn.read_binary(SENT) == payload
    finally:
        conn.close()
        peer.close()
        sender.join(IO_TIMEOUT)


@pytest.mark.timeout(30)
def test_next_larger_than_the_read_buffer_limit_waits_for_it(
    unix_listener: tuple[str, socket.socket],
) -> None:
    """A pending next(n) with n beyond the limit raises the limit to n for that wait."""
    path, lsock = unix_listener
    conn = netpoll.Dialer(read_buffer_limit=LIMIT).dial_connection("unix", path)
    conn.set_read_timeout(IO_TIMEOUT)
    peer, _ = lsock.accept()
    peer.settimeout(IO_TIMEOUT)
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=peer.sendall, args=(payload,), daemon=True)
    try:
        sender.start()
        assert conn.next(len(payload)) == payload
        conn.release()
    finally:
        conn.close()
        peer.close()
        sender.join(IO_TIMEOUT)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("n", "exc", "words"),
    [
        (0, ValueError, "n must be > 0"),
        (-1, ValueError, "n must be >= 0"),
        # The compiled build's own argument check says "int" where the pure one says "an int".
        (1.5, TypeError, r"^n must be (an )?int, not float$"),
        (True, TypeError, r"^n must be (an )?int, not bool$"),
        (None, TypeError, r"^n must be (an )?int, not NoneType$"),
    ],
)
def test_set_read_buffer_limit_rejects_bad_arguments(
    tcp_pair: tuple[netpoll.Connection, socket.socket], n: Any, exc: type[Exception], words: str
) -> None:
    conn, peer = tcp_pair
    with pytest.raises(exc, match=words):
        conn.set_read_buffer_limit(n)
    peer.sendall(b"unharmed")  # the connection still reads
    assert conn.read_binary(8) == b"unharmed"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("make", "exc", "words"),
    [
        (lambda addr: netpoll.Dialer(read_buffer_limit=0), ValueError, "read_buffer_limit"),
        (lambda addr: netpoll.Dialer(read_buffer_limit="1"), TypeError, "read_buffer_limit"),
        (lambda addr: netpoll.Dialer(read_buffer_limit=2.0), TypeError, "read_buffer_limit"),
        (
            lambda addr: netpoll.Dialer().dial_connection("tcp", addr, read_buffer_limit=-1),
            ValueError,
            "read_buffer_limit",
        ),
        (
            lambda addr: netpoll.Dialer(read_buffer_limit=1 << 20).dial_connection(
                "tcp", addr, read_buffer_limit=0
            ),
            ValueError,
            "read_buffer_limit",
        ),
    ],
)
def test_dialer_read_buffer_limit_rejects_bad_values(
    make: Callable[[Any], Any], exc: type[Exception], words: str
) -> None:
    """A bad limit raises before any socket is made: nothing connects to the listener."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        before = _fd_count()
        with pytest.raises(exc, match=words):
            make(lsock.getsockname())
        assert _fd_count() == before
        with pytest.raises(BlockingIOError):
            lsock.accept()  # no connection was made


# --------------------------------------------------------------------------- reuse_port


def _tagging_handler(tag: bytes) -> Callable[[Any, netpoll.Connection], None]:
    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        conn.skip(len(conn))
        conn.write_binary(tag)
        conn.flush()
        conn.release()

    return handler


@pytest.mark.timeout(30)
@linux_only
def test_reuse_port_listeners_share_a_port_and_both_accept(serve: ServeFactory) -> None:
    """Two listeners made with reuse_port=True bind one port; the kernel spreads new
    connections over both (64 connections all going to one: odds of 2**-63)."""
    first = netpoll.create_listener("tcp", "127.0.0.1:0", reuse_port=True)
    port = first.addr[1]
    second = netpoll.create_listener("tcp", f"127.0.0.1:{port}", reuse_port=True)
    assert second.addr == first.addr == ("127.0.0.1", port)
    a = serve(_tagging_handler(b"A"), listener=first)
    b = serve(_tagging_handler(b"B"), listener=second)
    assert a.loop.wait_serving(IO_TIMEOUT) and b.loop.wait_serving(IO_TIMEOUT)
    answers: dict[bytes, int] = {b"A": 0, b"B": 0}
    for _ in range(64):
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as c:
            c.sendall(b"?")
            answers[recv_exact(c, 1)] += 1
    assert answers[b"A"] > 0 and answers[b"B"] > 0, answers
    assert a.loop.stats().connections_accepted + b.loop.stats().connections_accepted == 64


@pytest.mark.timeout(10)
@linux_only
@pytest.mark.parametrize(("first_reuse", "second_reuse"), [(False, False), (True, False)])
def test_without_reuse_port_a_second_listener_is_refused(
    first_reuse: bool, second_reuse: bool
) -> None:
    """SO_REUSEPORT is what lets the port be shared: both listeners must ask for it."""
    with netpoll.create_listener("tcp", "127.0.0.1:0", reuse_port=first_reuse) as first:
        port = first.addr[1]
        before = _fd_count()
        with pytest.raises(OSError, match="Address already in use") as ei:
            netpoll.create_listener("tcp", f"127.0.0.1:{port}", reuse_port=second_reuse)
        assert ei.value.errno == errno.EADDRINUSE
        assert _fd_count() == before, "the refused listener's socket leaked"


# --------------------------------------------------------------------------- abstract unix


def _abstract_name() -> str:
    return f"\0netpoll-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@pytest.mark.timeout(20)
@linux_only
@pytest.mark.parametrize("form", ["str", "bytes"])
def test_abstract_unix_address_listen_dial_round_trip(serve: ServeFactory, form: str) -> None:
    """A unix address starting with a NUL byte is a Linux abstract socket: it can be
    listened on and dialed, and carries data both ways; no file appears, and closing
    the listener frees the name."""
    name = _abstract_name()
    address: str | bytes = name if form == "str" else name.encode()
    listener = netpoll.create_listener("unix", address)
    assert listener.addr == name.encode()  # the socket module's form of an abstract name
    srv = serve(echo_handler, network="unix", listener=listener)
    assert srv.loop.wait_serving(IO_TIMEOUT)
    assert srv.loop.addr == name.encode()
    with netpoll.dial_connection("unix", address, timeout=IO_TIMEOUT) as conn:
        conn.set_read_timeout(IO_TIMEOUT)
        conn.write_binary(b"abstract hello")
        conn.flush()
        assert conn.read_binary(14) == b"abstract hello"
    srv.stop()
    assert not os.path.exists(name[1:]), "a file was made for an abstract name"
    with pytest.raises(ConnectionRefusedError):
        netpoll.dial_connection("unix", address, timeout=IO_TIMEOUT)
    with netpoll.create_listener("unix", address) as again:  # the name is free again
        assert again.addr == name.encode()


@pytest.mark.timeout(10)
@linux_only
def test_abstract_unix_name_may_fill_sun_path() -> None:
    name = "\0" + uuid.uuid4().hex * 4  # 1 + 128 bytes: too long; trim to 108
    name = name[:108]
    with netpoll.create_listener("unix", name) as listener:
        assert listener.addr == name.encode()


# --------------------------------------------------------------------------- poll backend

_BACKEND_SCRIPT = textwrap.dedent(
    """
    import json, os, threading
    import netpoll
    from netpoll.__main__ import backend_name

    def on_request(ctx, conn):
        n = len(conn)
        conn.write_binary(conn.next(n))
        conn.flush()
        conn.release()

    loop = netpoll.EventLoop(on_request)
    listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    thread = threading.Thread(target=loop.serve, args=(listener,), daemon=True)
    thread.start()
    assert loop.wait_serving(10)
    with netpoll.dial_connection("tcp", listener.addr, timeout=10) as conn:
        conn.set_read_timeout(10)
        conn.write(b"round trip")
        echo = conn.read_binary(10).decode()
    eventpolls = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            eventpolls += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]"
        except OSError:
            pass
    loop.shutdown(10)
    thread.join(10)
    print(json.dumps({"backend": backend_name(), "echo": echo, "eventpolls": eventpolls}))
    """
)


def _run_script(script: str, backend: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NETPOLL_BACKEND=backend)
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(90)
@linux_only
@pytest.mark.parametrize("backend", ["poll", "epoll"])
def test_netpoll_backend_environment_variable(backend: str) -> None:
    """NETPOLL_BACKEND=poll makes the pollers use select.poll (no epoll descriptor is
    opened at all) and the server still echoes; =epoll is the control."""
    proc = _run_script(_BACKEND_SCRIPT, backend)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert result["echo"] == "round trip"
    if backend == "poll":
        assert result["eventpolls"] == 0, "an epoll instance was opened anyway"
    else:
        assert result["eventpolls"] >= 1


@pytest.mark.timeout(90)
@linux_only
def test_bad_netpoll_backend_names_the_variable() -> None:
    script = textwrap.dedent(
        """
        import socket
        import netpoll
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen()
            try:
                netpoll.dial_connection("tcp", lsock.getsockname(), timeout=10)
            except ValueError as exc:
                print("ValueError:", exc)
            else:
                print("no error")
        """
    )
    proc = _run_script(script, "bogus")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError:"), proc.stdout
    assert "NETPOLL_BACKEND" in proc.stdout and "bogus" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- text


@pytest.mark.timeout(20)
def test_read_string_utf8_split_across_receives(
    tcp_pair: tuple[netpoll.Connection, socket.socket],
) -> None:
    """A UTF-8 text whose multibyte characters arrive split over several receives is
    decoded whole by read_string(n), which waits for all n bytes."""
    conn, peer = tcp_pair
    conn.set_read_timeout(IO_TIMEOUT)
    text = "a\u00e9\U0001f600z \u4e16\u754c"  # 1-, 2-, 4- and 3-byte characters
    data = text.encode()
    result: list[str] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            result.append(conn.read_string(len(data)))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    cuts = [2, 4, 10, len(data)]  # inside the é, the emoji, and a CJK character
    start = 0
    for cut in cuts:
        peer.sendall(data[start:cut])
        if cut < len(data):
            assert wait_until(lambda cut=cut: len(conn) == cut, IO_TIMEOUT), len(conn)
            assert thread.is_alive(), "read_string returned before all its bytes came"
        start = cut
    thread.join(IO_TIMEOUT)
    assert not errors, errors
    assert result == [text]
    assert len(conn) == 0


@pytest.mark.timeout(20)
def test_read_string_that_cuts_a_character_fails_and_consumes_nothing(
    tcp_pair: tuple[netpoll.Connection, socket.socket],
) -> None:
    conn, peer = tcp_pair
    conn.set_read_timeout(IO_TIMEOUT)
    peer.sendall("\u00e9".encode()[:1])
    assert wait_until(lambda: len(conn) == 1, IO_TIMEOUT)
    with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
        conn.read_string(1)
    assert len(conn) == 1, "the failed read consumed its byte"
    peer.sendall("\u00e9".encode()[1:])
    assert conn.read_string(2) == "\u00e9"


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Gr\u00fc\u00dfe, \u4e16\u754c", "utf-16-le"),
        ("na\u00efve caf\u00e9", "latin-1"),
        ("\u20ac 5", "cp1252"),  # b"\x80 5": not valid UTF-8
        ("\u3053\u3093\u306b\u3061\u306f", "shift_jis"),
    ],
)
def test_write_and_read_string_with_an_encoding(
    tcp_pair: tuple[netpoll.Connection, socket.socket], text: str, encoding: str
) -> None:
    """write_string encodes with the given codec and returns the byte count; read_string
    decodes n bytes with it."""
    conn, peer = tcp_pair
    conn.set_read_timeout(IO_TIMEOUT)
    encoded = text.encode(encoding)
    assert encoded != text.encode("utf-8")
    assert conn.write_string(text, encoding=encoding) == len(encoded)
    assert conn.malloc_len() == len(encoded)
    conn.flush()
    assert recv_exact(peer, len(encoded)) == encoded
    peer.sendall(encoded + b"!")
    assert conn.read_string(len(encoded), encoding) == text
    assert conn.read_string(1, encoding="ascii") == "!"


@pytest.mark.timeout(20)
def test_string_errors_change_nothing(tcp_pair: tuple[netpoll.Connection, socket.socket]) -> None:
    """An unknown codec, a character the codec cannot encode, or a non-str raise, and
    neither queue output nor consume input."""
    conn, peer = tcp_pair
    conn.set_read_timeout(IO_TIMEOUT)
    with pytest.raises(LookupError, match="unknown encoding: no-such-codec"):
        conn.write_string("x", encoding="no-such-codec")
    with pytest.raises(UnicodeEncodeError, match="'ascii' codec can't encode"):
        conn.write_string("\u00fc", encoding="ascii")
    with pytest.raises(TypeError, match=r"^s must be (a )?str, not bytes$"):
        conn.write_string(b"x")  # type: ignore[arg-type]
    assert conn.malloc_len() == 0
    peer.sendall(b"kept")
    assert wait_until(lambda: len(conn) == 4, IO_TIMEOUT)
    with pytest.raises(LookupError, match="unknown encoding: no-such-codec"):
        conn.read_string(4, encoding="no-such-codec")
    assert conn.read_string(4) == "kept"
    conn.write_string("end")
    conn.flush()
    assert recv_exact(peer, 3) == b"end"


@pytest.mark.timeout(20)
def test_server_handler_reads_and_writes_text(serve: ServeFactory) -> None:
    """On a server connection: a length-prefixed UTF-8 request, answered in UTF-16."""

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        n = conn.read_byte()
        text = conn.read_string(n)
        reply = text.upper()
        conn.write_byte(len(reply.encode("utf-16-le")))
        conn.write_string(reply, "utf-16-le")
        conn.flush()
        conn.release()

    srv = serve(handler)
    c = srv.connect()
    body = "stra\u00dfe \u00e9t\u00e9".encode()
    c.sendall(bytes([len(body)]) + body[:5])  # the ß split over two sends
    c.sendall(body[5:])
    n = recv_exact(c, 1)[0]
    assert recv_exact(c, n).decode("utf-16-le") == "STRASSE \u00c9T\u00c9"


# --------------------------------------------------------------------------- EventLoop


@pytest.mark.timeout(30)
def test_event_loop_addr_and_serving_follow_serve(tmp_path: Path) -> None:
    """Before serve: addr None, serving False. While serving: the listener's address
    (one a client reaches) and True. After serve returns: None and False again. The
    same loop serves a netpoll listener of each kind, then a plain socket."""
    loop = netpoll.EventLoop(echo_handler)
    assert loop.addr is None
    assert loop.serving is False
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    listeners: list[Any] = [
        netpoll.create_listener("tcp", "127.0.0.1:0"),
        netpoll.create_listener("unix", str(tmp_path / "loop.sock")),
        plain,
    ]
    for listener in listeners:
        expected = listener.getsockname() if listener is plain else listener.addr
        errors: list[BaseException] = []

        def run(lst: Any = listener, errs: list[BaseException] = errors) -> None:
            try:
                loop.serve(lst)
            except BaseException as exc:
                errs.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            assert loop.wait_serving(IO_TIMEOUT)
            assert loop.serving is True
            assert loop.addr == expected
            family = socket.AF_UNIX if isinstance(expected, str) else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as c:
                c.settimeout(IO_TIMEOUT)
                c.connect(loop.addr)
                c.sendall(b"where")
                assert recv_exact(c, 5) == b"where"
            with pytest.raises(RuntimeError, match="already serving"):
                loop.serve(listener)
            assert loop.serving is True, "a refused second serve() ended the first"
        finally:
            loop.shutdown(SHUTDOWN_TIMEOUT)
            thread.join(IO_TIMEOUT)
        assert not thread.is_alive()
        assert not errors, errors
        assert loop.serving is False
        assert loop.addr is None
