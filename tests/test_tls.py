"""TLS: netpoll servers and clients against real TLS clients and servers, over loopback.

Certificates come from ``trustme`` (a test dependency). ``openssl s_client`` and ``curl``
are run when installed (Debian packages ``openssl`` and ``curl``); those tests are
skipped, with the reason, where they are missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import (
    IO_TIMEOUT,
    ServeFactory,
    echo_handler,
    raise_nofile_limit,
    recv_exact,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import http_hello
import tls_echo

trustme = pytest.importorskip("trustme")

HOST = "localhost"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: Any) -> Any:
    return ca.issue_cert(HOST, "127.0.0.1")


@pytest.fixture
def server_ctx(server_cert: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def ca_file(ca: Any, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def tls_listener(ctx: ssl.SSLContext, **kwargs: Any) -> netpoll.Listener:
    return netpoll.create_listener("tcp", "127.0.0.1:0", ssl=ctx, **kwargs)


def ssl_client(
    ctx: ssl.SSLContext, addr: Any, hostname: str = HOST, **kwargs: Any
) -> ssl.SSLSocket:
    """A blocking Python ssl client, handshake done."""
    raw = socket.create_connection(addr[:2], timeout=IO_TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname=hostname, **kwargs)
    except BaseException:
        raw.close()
        raise


def client_hello() -> bytes:
    """The bytes of a TLS ClientHello, as a client would send them first."""
    ctx = ssl.create_default_context()
    inbio, outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inbio, outbio, server_hostname=HOST)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outbio.read()


def eof_within(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes ``sock`` within ``timeout`` (whatever it sends first)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


@pytest.fixture
def netpoll_records() -> Iterator[list[logging.LogRecord]]:
    """Every record logged on the netpoll logger, at any level, during the test."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("netpoll")
    handler = Keep(logging.DEBUG)
    level = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# --------------------------------------------------------------------------- servers


@pytest.mark.timeout(30)
def test_python_ssl_client_against_tls_echo_server(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    seen: list[Any] = []

    def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
        tls = conn.ssl_object
        seen.append(None if tls is None else tls.version())
        return ctx

    srv = serve(echo_handler, listener=tls_listener(server_ctx), on_connect=on_connect)
    with ssl_client(client_ctx, srv.addr) as s:
        for i in range(20):
            msg = b"message %d " % i * (i + 1)
            s.sendall(msg)
            assert recv_exact(s, len(msg)) == msg
    assert seen and seen[0] in ("TLSv1.2", "TLSv1.3")
    st = srv.loop.stats()
    assert st.tls_handshake_failures == 0 and st.tls_handshake_timeouts == 0


@pytest.mark.timeout(30)
def test_netpoll_dialer_against_netpoll_tls_server(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    srv = serve(echo_handler, listener=tls_listener(server_ctx))
    port = srv.addr[1]
    # server_hostname defaults to the host dialed.
    with netpoll.dial_connection("tcp", f"localhost:{port}", timeout=5, ssl=client_ctx) as conn:
        assert conn.ssl_object is not None
        assert conn.ssl_object.server_hostname == "localhost"
        for size in (1, 100, 5000, 70_000):
            data = os.urandom(size)
            conn.write_binary(data)
            conn.flush()
            assert conn.next(size).tobytes() == data
            conn.release()
        # The copying API too.
        conn.write(b"line\n")
        assert conn.read_line().tobytes() == b"line"
    dialer = netpoll.Dialer()
    with dialer.dial_connection(
        "tcp", ("127.0.0.1", port), timeout=5, ssl=client_ctx, server_hostname=HOST
    ) as conn:
        conn.write(b"x")
        assert conn.read(1) == b"x"


@pytest.mark.timeout(30)
def test_responses_pushed_to_a_dialed_tls_connection(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    srv = serve(echo_handler, listener=tls_listener(server_ctx))
    got = bytearray()
    done = threading.Event()

    def on_response(ctx: Any, conn: netpoll.Connection) -> None:
        got.extend(conn.next(len(conn)).tobytes())
        conn.release()
        if len(got) >= 10:
            done.set()

    conn = netpoll.dial_connection("tcp", srv.addr, timeout=5, ssl=client_ctx, server_hostname=HOST)
    try:
        conn.set_on_request(on_response)
        conn.write(b"0123456789")
        assert done.wait(IO_TIMEOUT)
        assert bytes(got) == b"0123456789"
    finally:
        conn.close()


def _pump_both_ways(conn: netpoll.Connection, total: int, chunk: int) -> None:
    """Send ``total`` random bytes through ``conn`` from a thread while reading the echo
    here; compare digests."""
    sent = hashlib.sha256()
    error: list[BaseException] = []

    def writer() -> None:
        try:
            left = total
            while left:
                n = min(chunk, left)
                data = os.urandom(n)
                sent.update(data)
                conn.write_binary(data)
                conn.flush()
                left -= n
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = hashlib.sha256()
    received = 0
    while received < total:
        data = conn.read(1 << 20)
        assert data, f"EOF after {received} of {total} bytes"
        got.update(data)
        received += len(data)
    t.join(IO_TIMEOUT)
    assert not error, error
    assert got.hexdigest() == sent.hexdigest()


@pytest.mark.timeout(120)
def test_32_mib_through_tls_both_ways(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    # A small read limit on the server: reading pauses and resumes many times.
    srv = serve(echo_handler, listener=tls_listener(server_ctx), read_buffer_limit=256 << 10)
    with netpoll.dial_connection(
        "tcp", srv.addr, timeout=5, ssl=client_ctx, server_hostname=HOST
    ) as conn:
        _pump_both_ways(conn, 32 << 20, 1 << 20)


@pytest.mark.timeout(120)
def test_32_mib_python_ssl_client(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    srv = serve(echo_handler, listener=tls_listener(server_ctx))
    total = 32 << 20
    data = memoryview(os.urandom(total))
    got = hashlib.sha256()
    # One thread, non-blocking: an SSLSocket must not be read and written at once from
    # two threads (OpenSSL's state is not shared safely).
    with ssl_client(client_ctx, srv.addr) as s:
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        sent = received = 0
        deadline = time.monotonic() + 90
        try:
            while received < total:
                assert time.monotonic() < deadline, f"stalled at {sent} sent, {received} back"
                if sent < total:
                    try:
                        sent += s.send(data[sent : sent + (64 << 10)])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                    if sent == total:
                        sel.modify(s, selectors.EVENT_READ)
                while True:
                    try:
                        chunk = s.recv(1 << 20)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        break
                    assert chunk, f"EOF after {received} of {total} bytes"
                    got.update(chunk)
                    received += len(chunk)
                if received < total and not s.pending():
                    sel.select(1.0)
        finally:
            sel.close()
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(60)
def test_the_read_limit_bounds_what_a_tls_connection_holds(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    limit = 64 << 10
    conns: list[netpoll.Connection] = []

    def hoard(ctx: Any, conn: netpoll.Connection) -> None:
        if not conns:
            conns.append(conn)  # consumes nothing: the input piles up to the limit

    srv = serve(hoard, listener=tls_listener(server_ctx), read_buffer_limit=limit)
    s = ssl_client(client_ctx, srv.addr)
    sent = threading.Event()

    def writer() -> None:
        try:
            s.sendall(os.urandom(32 << 20))  # far more than the kernel's buffers hold
            sent.set()
        except OSError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: bool(conns) and len(conns[0]) >= limit, IO_TIMEOUT)
        # Paused at the limit: plaintext plus ciphertext stay within it and one record.
        held = len(conns[0])
        assert held <= limit + (18 << 10), held
        assert srv.loop.stats().bytes_received < 16 << 20
        assert not sent.is_set()  # TCP pushes back on the sender
        assert len(conns[0]) == held
    finally:
        try:
            s.shutdown(socket.SHUT_RDWR)  # wakes the writer blocked in sendall
        except OSError:
            pass
        t.join(IO_TIMEOUT)
        s.close()


@pytest.mark.timeout(60)
def test_many_readers_waiting_mid_frame_share_a_few_receive_buffers(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Handlers waiting in ``next(n)`` receive and decrypt on their own threads; the
    256 KiB ciphertext buffers they use are lent per receive, so many waiting threads do
    not keep one each (the pool keeps a few), and every frame still arrives whole."""
    from netpoll._conn import _tls

    clients = 40
    waiting = threading.Semaphore(0)

    def frames(ctx: Any, conn: netpoll.Connection) -> None:
        try:
            n = int.from_bytes(conn.next(4), "big")
            waiting.release()
            body = bytes(conn.next(n))  # the rest comes only after every handler waits
            conn.write_binary(hashlib.sha256(body).digest())
            conn.flush()
            conn.release()
        except netpoll.ConnectionClosedError:
            pass

    srv = serve(frames, listener=tls_listener(server_ctx))
    socks = [ssl_client(client_ctx, srv.addr) for _ in range(clients)]
    bodies = [os.urandom(100_000 + i) for i in range(clients)]
    try:
        for s, body in zip(socks, bodies, strict=True):
            s.sendall(len(body).to_bytes(4, "big") + body[:1000])
        for _ in range(clients):
            assert waiting.acquire(timeout=IO_TIMEOUT), "a handler never started waiting"
        for s, body in zip(socks, bodies, strict=True):
            s.sendall(body[1000:])
        for s, body in zip(socks, bodies, strict=True):
            assert recv_exact(s, 32) == hashlib.sha256(body).digest()
    finally:
        for s in socks:
            s.close()
    assert len(_tls._spare) <= _tls.SPARE_SCRATCH


def test_receive_buffers_are_lent_and_kept_within_a_bound() -> None:
    from netpoll._conn import _tls

    lent = [_tls._take_scratch() for _ in range(_tls.SPARE_SCRATCH + 3)]
    assert all(len(b) == _tls.CT_RECV for b in lent)
    assert len({id(b) for b in lent}) == len(lent)  # never one buffer lent twice
    for b in lent:
        _tls._give_scratch(b)
    assert len(_tls._spare) == _tls.SPARE_SCRATCH
    again = _tls._take_scratch()
    assert any(again is b for b in lent)  # a kept one is reused
    _tls._give_scratch(again)


def test_application_data_goes_through_the_record_layer_or_the_public_object(
    client_ctx: ssl.SSLContext,
) -> None:
    """The C object behind ``SSLObject`` is used only when it is CPython's own."""
    from netpoll._conn import _tls

    obj = client_ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=HOST)
    inner = _tls._record_layer(obj)
    assert type(inner).__module__ == "_ssl" and inner is not obj

    class Elsewhere:  # an SSLObject whose insides are not CPython's
        _sslobj = object()

    other: Any = Elsewhere()
    assert _tls._record_layer(other) is other


@pytest.mark.timeout(30)
def test_empty_writes_between_real_ones_over_tls(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = bytes(conn.next(len(conn)))
        assert conn.write_binary(b"") == 0
        assert conn.write_binary(memoryview(b"")) == 0
        conn.write_binary(data)
        conn.write_binary(b"")
        conn.flush()
        conn.write_binary(b"")
        conn.flush()  # nothing queued: sends nothing, raises nothing
        conn.release()

    srv = serve(handler, listener=tls_listener(server_ctx))
    with ssl_client(client_ctx, srv.addr) as s:
        for i in range(5):
            msg = b"%d" % i * 100
            s.sendall(msg)
            assert recv_exact(s, len(msg)) == msg
    assert srv.loop.stats().handler_exceptions == 0


# --------------------------------------------------------------------------- hostile peers


@pytest.mark.timeout(30)
def test_half_a_handshake_is_closed_at_the_timeout(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    connected = threading.Event()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
        connected.set()
        return ctx

    srv = serve(
        echo_handler,
        listener=tls_listener(server_ctx, ssl_handshake_timeout=0.5),
        on_connect=on_connect,
    )
    hello = client_hello()
    with socket.create_connection(srv.addr, timeout=IO_TIMEOUT) as s:
        s.sendall(hello[: len(hello) // 2])
        t0 = time.monotonic()
        # Meanwhile, a real client is served: the stalled handshake holds no poller.
        with ssl_client(client_ctx, srv.addr) as ok:
            ok.sendall(b"served")
            assert recv_exact(ok, 6) == b"served"
        assert connected.wait(IO_TIMEOUT)
        connected.clear()
        assert eof_within(s, IO_TIMEOUT), "the stalled handshake was not closed"
        assert time.monotonic() - t0 >= 0.3
    assert wait_until(lambda: srv.loop.stats().tls_handshake_timeouts == 1)
    assert wait_until(lambda: srv.loop.stats().connections_open == 0)
    st = srv.loop.stats()
    assert st.tls_handshake_failures == 0 and st.connections_closed == 2
    assert not connected.is_set()  # the stalled one never reached on_connect


@pytest.mark.timeout(30)
def test_plaintext_and_garbage_on_a_tls_port(
    serve: ServeFactory,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    netpoll_records: list[logging.LogRecord],
) -> None:
    connected = threading.Event()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
        connected.set()
        return ctx

    srv = serve(echo_handler, listener=tls_listener(server_ctx), on_connect=on_connect)
    for junk in (
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x00" * 64 + b"garbage\r\n",
        b"\x16\x03\x01\x00\x05hello",  # a handshake record holding nonsense
    ):
        with socket.create_connection(srv.addr, timeout=IO_TIMEOUT) as s:
            s.sendall(junk)
            assert eof_within(s, IO_TIMEOUT), f"not closed after {junk!r}"
    # And a client that connects and leaves at once.
    socket.create_connection(srv.addr, timeout=IO_TIMEOUT).close()
    assert wait_until(lambda: srv.loop.stats().tls_handshake_failures == 4)
    assert wait_until(lambda: srv.loop.stats().connections_open == 0)
    # The server still serves real clients.
    with ssl_client(client_ctx, srv.addr) as s:
        s.sendall(b"still here")
        assert recv_exact(s, 10) == b"still here"
    assert srv.loop.stats().tls_handshake_timeouts == 0
    mine = [r for r in netpoll_records if "TLS handshake" in r.getMessage()]
    assert len(mine) >= 4
    for r in netpoll_records:
        assert r.exc_info is None, f"a traceback was logged: {r.getMessage()}"
        assert r.levelno < logging.WARNING, r.getMessage()
    assert all(r.levelno == logging.DEBUG for r in mine)


@pytest.mark.timeout(30)
def test_a_wrong_server_name_is_refused(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    srv = serve(echo_handler, listener=tls_listener(server_ctx))
    with pytest.raises(ssl.SSLCertVerificationError):
        netpoll.dial_connection(
            "tcp", srv.addr, timeout=5, ssl=client_ctx, server_hostname="wrong.example"
        )
    with pytest.raises(ssl.SSLCertVerificationError):
        ssl_client(client_ctx, srv.addr, hostname="wrong.example")
    # Neither counts as a connection that reached on_connect; both failed there too.
    assert wait_until(lambda: srv.loop.stats().tls_handshake_failures == 2)
    assert wait_until(lambda: srv.loop.stats().connections_open == 0)


@pytest.mark.timeout(30)
def test_an_untrusted_server_is_refused(serve: ServeFactory, server_ctx: ssl.SSLContext) -> None:
    srv = serve(echo_handler, listener=tls_listener(server_ctx))
    strict = ssl.create_default_context()  # the system's CAs: not trustme's
    with pytest.raises(ssl.SSLCertVerificationError):
        netpoll.dial_connection("tcp", srv.addr, timeout=5, ssl=strict, server_hostname=HOST)


@pytest.mark.timeout(30)
def test_a_required_client_certificate_missing(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, ca: Any
) -> None:
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    connected = threading.Event()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
        connected.set()
        return ctx

    peer: list[Any] = []

    def echo_and_look(ctx: Any, conn: netpoll.Connection) -> None:
        tls = conn.ssl_object
        assert tls is not None
        peer.append(tls.getpeercert())
        echo_handler(ctx, conn)

    srv = serve(echo_and_look, listener=tls_listener(server_ctx), on_connect=on_connect)
    # TLS 1.3 finishes the client's side of the handshake before the server checks the
    # client's certificate: the refusal (an alert) then comes on the first read.
    with pytest.raises((ssl.SSLError, ConnectionResetError)), ssl_client(client_ctx, srv.addr) as s:
        s.recv(1)
    assert wait_until(lambda: srv.loop.stats().tls_handshake_failures == 1)
    assert wait_until(lambda: srv.loop.stats().connections_open == 0)
    assert not connected.is_set()
    # With a certificate it works, and the server sees it.
    ca.issue_cert("client@example.test").configure_cert(client_ctx)
    with ssl_client(client_ctx, srv.addr) as s:
        s.sendall(b"hello")
        assert recv_exact(s, 5) == b"hello"
    assert peer and peer[0]["subjectAltName"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("close_notify", [False, True])
def test_a_peer_close_still_delivers_buffered_plaintext(
    serve: ServeFactory,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    close_notify: bool,
) -> None:
    gone = threading.Event()
    first = threading.Event()
    got: list[bytes] = []
    after: list[BaseException] = []
    disconnected = threading.Event()
    size = 200_000

    def on_request(ctx: Any, conn: netpoll.Connection) -> None:
        first.set()
        assert gone.wait(IO_TIMEOUT)  # the peer closed while the handler was busy
        got.append(conn.next(size).tobytes())
        try:
            conn.next(1)
        except netpoll.PeerClosedError as exc:
            after.append(exc)

    # No TLS 1.3 session tickets: sent after the handshake, they could still be unread
    # by the client when it closes (its poller is the blocked handler's, in this
    # process), and a close with unread input is a reset, which drops data in flight.
    server_ctx.num_tickets = 0
    srv = serve(
        on_request,
        listener=tls_listener(server_ctx),
        on_disconnect=lambda ctx, conn: disconnected.set(),
    )
    data = os.urandom(size)
    if close_notify:
        conn = netpoll.dial_connection(
            "tcp", srv.addr, timeout=5, ssl=client_ctx, server_hostname=HOST
        )
        conn.write(data)
        assert first.wait(IO_TIMEOUT)
        conn.close()  # close_notify, then the TCP close
    else:
        s = ssl_client(client_ctx, srv.addr)
        s.sendall(data)
        assert first.wait(IO_TIMEOUT)
        s.close()  # a TCP close without close_notify
    gone.set()
    assert wait_until(lambda: bool(got) and bool(after), IO_TIMEOUT)
    assert got[0] == data
    assert isinstance(after[0], netpoll.PeerClosedError)
    assert disconnected.wait(IO_TIMEOUT)
    assert wait_until(lambda: srv.loop.stats().connections_open == 0)


@pytest.mark.timeout(30)
def test_close_sends_close_notify(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    def answer_and_close(ctx: Any, conn: netpoll.Connection) -> None:
        line = conn.read_line().tobytes()
        conn.write_binary(b"bye " + line + b"\n")
        conn.flush()
        conn.close()

    srv = serve(answer_and_close, listener=tls_listener(server_ctx))
    # suppress_ragged_eofs=False: a TCP close without close_notify would raise SSLEOFError.
    with ssl_client(client_ctx, srv.addr, suppress_ragged_eofs=False) as s:
        s.sendall(b"alice\n")
        assert recv_exact(s, 10) == b"bye alice\n"
        assert s.recv(100) == b""  # a clean TLS end: the server's close_notify


@pytest.mark.timeout(30)
def test_a_dialed_connection_close_sends_close_notify(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        result: list[bytes] = []

        def server() -> None:
            raw, _ = lsock.accept()
            raw.settimeout(IO_TIMEOUT)
            with server_ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False) as s:
                result.append(recv_exact(s, 4))
                result.append(s.recv(10))  # b"" only on close_notify

        t = threading.Thread(target=server, daemon=True)
        t.start()
        tls = netpoll.dial_connection(
            "tcp", lsock.getsockname(), timeout=5, ssl=client_ctx, server_hostname=HOST
        )
        tls.write(b"ping")
        tls.close()
        t.join(IO_TIMEOUT)
        assert result == [b"ping", b""]


@pytest.mark.timeout(30)
def test_close_write_sends_close_notify_and_still_reads(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    srv = serve(echo_handler, listener=tls_listener(server_ctx))
    with netpoll.dial_connection(
        "tcp", srv.addr, timeout=5, ssl=client_ctx, server_hostname=HOST
    ) as conn:
        conn.set_read_timeout(IO_TIMEOUT)
        conn.write_binary(b"half")
        conn.close_write()  # flush, close_notify, then the TCP half-close
        with pytest.raises(netpoll.ConnectionClosedError):
            conn.write(b"more")
        assert conn.next(4).tobytes() == b"half"  # the echo still comes
        assert conn.read() == b""  # then the server's end


@pytest.mark.timeout(30)
def test_ssl_object_gives_peer_certificate_cipher_and_alpn(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, ca: Any
) -> None:
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    ca.configure_trust(server_ctx)
    client_ctx.set_alpn_protocols(["http/1.1"])
    ca.issue_cert("client.example").configure_cert(client_ctx)
    seen: dict[str, Any] = {}

    def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
        tls = conn.ssl_object
        assert tls is not None
        seen["alpn"] = tls.selected_alpn_protocol()
        seen["cipher"] = tls.cipher()
        seen["peer"] = tls.getpeercert()
        return ctx

    srv = serve(echo_handler, listener=tls_listener(server_ctx), on_connect=on_connect)
    with netpoll.dial_connection(
        "tcp", srv.addr, timeout=5, ssl=client_ctx, server_hostname=HOST
    ) as conn:
        tls = conn.ssl_object
        assert tls is not None
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.cipher() is not None
        cert = tls.getpeercert()
        assert ("DNS", HOST) in cert["subjectAltName"]
        conn.write(b"x")
        assert conn.read(1) == b"x"
    assert seen["alpn"] == "http/1.1"
    assert seen["cipher"] is not None
    assert ("DNS", "client.example") in seen["peer"]["subjectAltName"]


@pytest.mark.timeout(30)
def test_a_plain_connection_has_no_ssl_object(serve: ServeFactory) -> None:
    seen: list[Any] = []

    def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
        seen.append(conn.ssl_object)
        return ctx

    srv = serve(echo_handler, on_connect=on_connect)
    with netpoll.dial_connection("tcp", srv.addr, timeout=5) as conn:
        assert conn.ssl_object is None
        conn.write(b"p")
        assert conn.read(1) == b"p"
    assert seen == [None]


@pytest.mark.timeout(30)
def test_sni_callback_runs(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    names: list[str | None] = []

    def sni(obj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_ctx.sni_callback = sni
    srv = serve(echo_handler, listener=tls_listener(server_ctx))
    with ssl_client(client_ctx, srv.addr) as s:
        s.sendall(b"sni")
        assert recv_exact(s, 3) == b"sni"
    assert names == [HOST]


@pytest.mark.timeout(30)
def test_listener_accept_returns_a_tls_connection(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with tls_listener(server_ctx, ssl_handshake_timeout=5) as listener:
        out: list[Any] = []

        def client() -> None:
            with ssl_client(client_ctx, listener.addr) as s:
                s.sendall(b"accepted")
                out.append(recv_exact(s, 8))

        t = threading.Thread(target=client, daemon=True)
        t.start()
        with listener.accept() as conn:
            assert conn.ssl_object is not None
            data = conn.next(8).tobytes()
            conn.write(data)
            t.join(IO_TIMEOUT)
        assert out == [b"accepted"]


@pytest.mark.timeout(30)
def test_a_dial_whose_handshake_stalls_times_out(client_ctx: ssl.SSLContext) -> None:
    with socket.create_server(("127.0.0.1", 0)) as lsock:  # accepts in the kernel, never answers
        t0 = time.monotonic()
        with pytest.raises(netpoll.DialTimeoutError):
            netpoll.dial_connection(
                "tcp", lsock.getsockname(), timeout=0.5, ssl=client_ctx, server_hostname=HOST
            )
        assert time.monotonic() - t0 < IO_TIMEOUT


@pytest.mark.timeout(30)
def test_tls_arguments_are_checked(server_ctx: ssl.SSLContext) -> None:
    with pytest.raises(TypeError, match="ssl must be an ssl"):
        netpoll.create_listener("tcp", "127.0.0.1:0", ssl=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ssl_handshake_timeout"):
        netpoll.create_listener("tcp", "127.0.0.1:0", ssl_handshake_timeout=5)
    with pytest.raises(ValueError, match="ssl_handshake_timeout"):
        netpoll.create_listener("tcp", "127.0.0.1:0", ssl=server_ctx, ssl_handshake_timeout=0)
    with pytest.raises(TypeError, match="ssl must be an ssl"):
        netpoll.dial_connection("tcp", "127.0.0.1:1", ssl="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server_hostname"):
        netpoll.dial_connection("tcp", "127.0.0.1:1", server_hostname="x")
    with netpoll.create_listener("tcp", "127.0.0.1:0", ssl=server_ctx) as listener:
        assert listener.ssl_context is server_ctx
        assert listener.ssl_handshake_timeout == 60.0
    with netpoll.create_listener("tcp", "127.0.0.1:0") as listener:
        assert listener.ssl_context is None


# --------------------------------------------------------------------------- real tools


def _https_server(serve: ServeFactory, server_ctx: ssl.SSLContext) -> Any:
    return serve(http_hello.on_request, listener=tls_listener(server_ctx))


@pytest.mark.timeout(60)
def test_curl_against_the_tls_http_example(
    serve: ServeFactory, server_ctx: ssl.SSLContext, ca_file: str
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        print("curl is not installed (Debian: apt-get install curl)")
        pytest.skip("curl is not installed (Debian: apt-get install curl)")
    srv = _https_server(serve, server_ctx)
    url = f"https://{HOST}:{srv.addr[1]}/"
    out = subprocess.run(
        [curl, "--silent", "--show-error", "--cacert", ca_file, "--max-time", "10", url, url],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == http_hello.BODY * 2


@pytest.mark.timeout(60)
def test_openssl_s_client_against_the_tls_http_example(
    serve: ServeFactory, server_ctx: ssl.SSLContext, ca_file: str
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        print("openssl is not installed (Debian: apt-get install openssl)")
        pytest.skip("openssl is not installed (Debian: apt-get install openssl)")
    srv = _https_server(serve, server_ctx)
    proc = subprocess.Popen(
        [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{srv.addr[1]}",
            "-servername",
            HOST,
            "-verify_hostname",
            HOST,
            "-CAfile",
            ca_file,
            "-verify_return_error",
            "-ign_eof",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        proc.stdin.flush()
        out = b""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        while http_hello.BODY not in out and time.monotonic() < deadline:
            if sel.select(0.5):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        sel.close()
        text = out.decode(errors="replace")
        assert http_hello.BODY in out, text
        assert "Verify return code: 0 (ok)" in text or "Verification: OK" in text, text
    finally:
        proc.kill()
        proc.wait(10)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


@pytest.mark.timeout(30)
def test_tls_echo_example(tmp_path: Path) -> None:
    cert, key, ca = tls_echo.throwaway_certificate(tmp_path)
    loop = tls_echo.make_loop()
    listener = netpoll.create_listener("tcp", "127.0.0.1:0", ssl=tls_echo.server_context(cert, key))
    t = threading.Thread(target=loop.serve, args=(listener,), daemon=True)
    t.start()
    try:
        assert loop.wait_serving(IO_TIMEOUT)
        assert tls_echo.client(listener.addr[1], ca, "over TLS") == "over TLS"
    finally:
        loop.shutdown(5)
        t.join(5)


# --------------------------------------------------------------------------- scale


@pytest.mark.timeout(180)
def test_a_thousand_concurrent_tls_connections(
    serve: ServeFactory, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    n = 1000
    raise_nofile_limit(2 * n + 200)
    srv = serve(echo_handler, listener=tls_listener(server_ctx, ssl_handshake_timeout=60))
    socks: list[ssl.SSLSocket] = []
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + 120
    try:
        for _ in range(n):
            raw = socket.create_connection(srv.addr, timeout=IO_TIMEOUT)
            raw.setblocking(False)
            socks.append(
                client_ctx.wrap_socket(raw, server_hostname=HOST, do_handshake_on_connect=False)
            )
        # Every handshake at once, driven by readiness.
        shaking = set(range(n))
        for i in range(n):
            sel.register(socks[i], selectors.EVENT_READ, i)

        def step(i: int) -> None:
            try:
                socks[i].do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            shaking.discard(i)
            sel.unregister(socks[i])

        for i in range(n):
            step(i)
        while shaking and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                step(key.data)
        assert not shaking, f"{len(shaking)} handshakes unfinished"
        assert wait_until(lambda: srv.loop.stats().connections_open == n, 30)
        # All open at once: each does an echo round trip.
        want = {i: b"conn %d\n" % i for i in range(n)}
        got = {i: b"" for i in range(n)}
        for i in range(n):
            socks[i].send(want[i])  # a few bytes: always fits
            sel.register(socks[i], selectors.EVENT_READ, i)
        left = n
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                i = key.data
                try:
                    got[i] += socks[i].recv(4096)
                except ssl.SSLWantReadError:
                    continue
                if len(got[i]) >= len(want[i]):
                    sel.unregister(socks[i])
                    left -= 1
        assert got == want
        st = srv.loop.stats()
        assert st.connections_open == n
        assert st.tls_handshake_failures == 0 and st.tls_handshake_timeouts == 0
    finally:
        sel.close()
        for s in socks:
            s.close()
    assert wait_until(lambda: srv.loop.stats().connections_open == 0, 30)


# --------------------------------------------------------------------------- netpoll.run

_RUN_SCRIPT = """
import ssl, sys
import netpoll

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])

def on_request(ctx, conn):
    n = len(conn)
    conn.write_binary(conn.next(n))
    conn.flush()
    conn.release()

netpoll.run(lambda: netpoll.EventLoop(on_request), "tcp", sys.argv[3],
            workers=int(sys.argv[4]), ssl=ctx, shutdown_timeout=5)
print("RUN RETURNED", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_netpoll_run_serves_tls(
    tmp_path: Path, server_cert: Any, client_ctx: ssl.SSLContext, workers: int
) -> None:
    cert = key = tmp_path / "server.pem"  # the key and the chain in one file
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_SCRIPT, str(cert), str(key), f"127.0.0.1:{port}", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        s: ssl.SSLSocket | None = None
        while s is None:
            try:
                s = ssl_client(client_ctx, ("127.0.0.1", port))
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "netpoll.run did not start serving"
                assert proc.poll() is None, proc.communicate()[1].decode()
                time.sleep(0.05)  # polling for the port to open, not synchronisation
        with s:
            s.sendall(b"run over TLS")
            assert recv_exact(s, 12) == b"run over TLS"
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert b"RUN RETURNED" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
