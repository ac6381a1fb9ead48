"""EventLoop over real sockets: echo round trips, framing, large payloads, many connections,
callback order, handler semantics, shutdown, listeners and statistics."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import threading
import time
from typing import Any

import pytest

import netpoll
from conftest import (
    IO_TIMEOUT,
    ServeFactory,
    dup_socket,
    echo_handler,
    frame,
    frame_echo_handler,
    ipv6_loopback_available,
    raise_nofile_limit,
    recv_exact,
    recv_until_eof,
    wait_until,
)

# --------------------------------------------------------------------------- echo


@pytest.mark.timeout(20)
def test_echo_plain_socket_clients(serve: ServeFactory, network: str) -> None:
    srv = serve(echo_handler, network=network)
    clients = [srv.connect() for _ in range(3)]
    for round_ in range(20):
        for i, c in enumerate(clients):
            msg = f"hello {i} round {round_}".encode()
            c.sendall(msg)
            assert recv_exact(c, len(msg)) == msg


@pytest.mark.timeout(20)
def test_echo_dialed_clients(serve: ServeFactory, network: str) -> None:
    srv = serve(echo_handler, network=network)
    conns = [srv.dial() for _ in range(3)]
    for round_ in range(20):
        for i, c in enumerate(conns):
            msg = f"dialed {i} round {round_}".encode()
            c.write_binary(msg)
            c.flush()
            assert bytes(c.next(len(msg))) == msg
            c.release()


@pytest.mark.timeout(20)
def test_frame_written_in_pieces(serve: ServeFactory, network: str) -> None:
    """A frame arrives in pieces; the handler blocks in next() between them."""
    calls = 0
    entered = threading.Event()
    got_header = threading.Event()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        nonlocal calls
        calls += 1
        entered.set()
        hdr = conn.next(4)
        got_header.set()
        body = conn.next(int.from_bytes(hdr, "big"))
        conn.write_binary(hdr)
        conn.write_binary(body)
        conn.flush()
        conn.release()

    srv = serve(handler, network=network)
    c = srv.connect()
    payload = bytes(range(256)) * 4
    data = frame(payload)
    c.sendall(data[:2])  # half a header
    assert entered.wait(IO_TIMEOUT)
    assert not got_header.is_set()
    c.sendall(data[2:7])  # the rest of the header and 3 bytes of body
    assert got_header.wait(IO_TIMEOUT)
    c.sendall(data[7:500])
    c.sendall(data[500:])
    assert recv_exact(c, len(data)) == data
    assert calls == 1
    # A second frame, together with the first byte of a third.
    data2 = frame(b"second")
    data3 = frame(b"third!")
    c.sendall(data2 + data3[:1])
    assert recv_exact(c, len(data2)) == data2
    c.sendall(data3[1:])
    assert recv_exact(c, len(data3)) == data3


@pytest.mark.timeout(30)
def test_frames_split_across_reads_and_buffer_nodes(serve: ServeFactory) -> None:
    """Small receive nodes: frames straddle node boundaries and separate reads."""
    netpoll.configure(buffer_size=1024)
    srv = serve(frame_echo_handler)
    c = srv.connect()
    rng = random.Random(7)
    frames = [
        frame(rng.randbytes(rng.choice([1, 3, 1000, 1023, 1024, 1025, 5000, 70_000])))
        for _ in range(30)
    ]
    stream = b"".join(frames)
    # Send in irregular chunks, each waiting until the server has received it.
    pos = 0
    while pos < len(stream):
        size = rng.choice([1, 2, 5, 700, 3000, 40_000])
        chunk = stream[pos : pos + size]
        c.sendall(chunk)
        pos += len(chunk)
        received = wait_until(lambda p=pos: srv.loop.stats().bytes_received >= p)
        assert received, f"sent {pos}, server state {srv.loop.stats()}"
    assert recv_exact(c, len(stream)) == stream


@pytest.mark.timeout(20)
def test_receive_blocks_grow_until_a_frame_lands_in_one(serve: ServeFactory) -> None:
    """Frames larger than buffer_size: receive blocks double while receives fill them, so
    later frames arrive in one block and next(n) returns views of it, not a copy. Once the
    connection is quiet, its next block is buffer_size again."""
    netpoll.configure(buffer_size=4096)
    seen: list[tuple[bool, int]] = []  # (header and payload share a block, its size)
    conns: list[netpoll.Connection] = []

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        hdr = conn.next(4)
        body = conn.next(int.from_bytes(hdr, "big"))
        seen.append((hdr.obj is body.obj, len(body.obj)))
        conns.append(conn)
        conn.write_binary(hdr)
        conn.write_binary(body)
        conn.flush()
        conn.release()

    srv = serve(handler)
    c = srv.connect()
    payload = random.Random(3).randbytes(12_000)  # 4 + 12,000 bytes: three 4 KiB blocks
    for _ in range(10):
        c.sendall(frame(payload))
        assert recv_exact(c, 4 + len(payload)) == frame(payload)
    assert seen[-5:] == [(True, 16384)] * 5, seen  # grown to 4x buffer_size, no further
    server_conn = conns[-1]
    # The poller's once-a-second sweep takes the block back from the quiet connection.
    assert wait_until(lambda: server_conn._recv_cls == 4096, timeout=5), server_conn._recv_cls
    c.sendall(frame(b"small"))
    assert recv_exact(c, 9) == frame(b"small")
    assert seen[-1] == (True, 4096)


@pytest.mark.timeout(20)
def test_views_derived_in_a_handler_survive_release_and_later_traffic(
    serve: ServeFactory,
) -> None:
    """A handler keeps slices of the views it read past release(): the receive block they
    point into must not be reset and refilled by the next requests."""
    kept: list[tuple[memoryview, bytes]] = []

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        body = conn.next(len(conn))
        part = body[: min(len(body), 16)]  # derived from the handed-out view
        kept.append((part, bytes(part)))
        conn.write_binary(body)
        conn.flush()
        conn.release()

    srv = serve(handler)
    c = srv.connect()
    for i in range(200):
        msg = b"%04d" % i * 8
        c.sendall(msg)
        assert recv_exact(c, len(msg)) == msg
    assert len(kept) >= 200 // 2
    changed = [(bytes(v), want) for v, want in kept if bytes(v) != want]
    assert not changed, changed[:3]


@pytest.mark.timeout(40)
def test_32mib_frame_echoed_intact(serve: ServeFactory) -> None:
    srv = serve(frame_echo_handler)
    c = srv.connect(timeout=30)
    payload = os.urandom(32 << 20)
    data = frame(payload)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            c.sendall(data)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = recv_exact(c, len(data))
    t.join(30)
    assert not errors
    assert len(got) == len(data)
    assert got == data


@pytest.mark.timeout(40)
def test_32mib_stream_echoed_to_dialed_client(serve: ServeFactory) -> None:
    srv = serve(echo_handler)
    conn = srv.dial()
    conn.set_write_timeout(30)
    payload = os.urandom(32 << 20)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            view = memoryview(payload)
            for i in range(0, len(payload), 1 << 20):
                conn.write(view[i : i + (1 << 20)])
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = bytearray()
    conn.set_read_timeout(30)
    while len(got) < len(payload):
        chunk = conn.read(len(payload) - len(got))
        assert chunk
        got += chunk
    t.join(30)
    assert not errors
    assert got == payload


@pytest.mark.timeout(60)
def test_1000_concurrent_connections(serve: ServeFactory) -> None:
    n = 1000
    raise_nofile_limit(2 * n + 200)
    srv = serve(echo_handler)
    clients = [srv.connect() for _ in range(n)]
    for i, c in enumerate(clients):
        c.sendall(b"%06d" % i)
    for i, c in enumerate(clients):
        assert recv_exact(c, 6) == b"%06d" % i
    assert wait_until(lambda: srv.loop.stats().connections_open == n)
    assert srv.loop.stats().connections_accepted == n


@pytest.mark.timeout(30)
def test_100_clients_write_and_close_at_once(serve: ServeFactory) -> None:
    """Every byte sent before a close reaches on_request."""
    n = 100
    cond = threading.Condition()
    finished: list[bytes] = []

    def on_prepare(conn: netpoll.Connection) -> bytearray:
        buf = bytearray()

        def closed(c: netpoll.Connection) -> None:
            with cond:
                finished.append(bytes(buf))
                cond.notify_all()

        conn.add_close_callback(closed)
        return buf

    def handler(buf: bytearray, conn: netpoll.Connection) -> None:
        buf += conn.read()

    srv = serve(handler, on_prepare=on_prepare)
    rng = random.Random(3)
    payloads = [i.to_bytes(4, "big") + rng.randbytes(rng.randrange(1, 100_000)) for i in range(n)]
    clients = [srv.connect() for _ in range(n)]
    for c, p in zip(clients, payloads, strict=True):
        c.sendall(p)
        c.close()
    with cond:
        assert cond.wait_for(lambda: len(finished) == n, 20), f"{len(finished)} of {n} closed"
    assert sorted(finished) == sorted(payloads)
    st = srv.loop.stats()
    assert st.bytes_received == sum(map(len, payloads))
    assert st.connections_closed == n


# --------------------------------------------------------------------------- callbacks


@pytest.mark.timeout(20)
def test_callback_order_and_ctx(serve: ServeFactory, network: str) -> None:
    lock = threading.Lock()
    events: list[tuple[str, Any]] = []
    closed = threading.Event()

    def record(what: str, value: Any = None) -> None:
        with lock:
            events.append((what, value))

    def on_prepare(conn: netpoll.Connection) -> str:
        record("prepare")
        conn.add_close_callback(lambda c: (record("close"), closed.set()))
        return "from-prepare"

    def on_connect(ctx: Any, conn: netpoll.Connection) -> str:
        record("connect", ctx)
        return "from-connect"

    def on_request(ctx: Any, conn: netpoll.Connection) -> None:
        record("request", ctx)
        echo_handler(ctx, conn)

    def on_disconnect(ctx: Any, conn: netpoll.Connection) -> None:
        record("disconnect", ctx)

    srv = serve(
        on_request,
        network=network,
        on_prepare=on_prepare,
        on_connect=on_connect,
        on_disconnect=on_disconnect,
    )
    c = srv.connect()
    for i in range(3):
        c.sendall(b"ping%d" % i)
        assert recv_exact(c, 5) == b"ping%d" % i
    c.close()
    assert closed.wait(IO_TIMEOUT)
    assert wait_until(lambda: any(e[0] == "disconnect" for e in events))
    with lock:
        names = [e[0] for e in events]
        snapshot = list(events)
    assert names[:2] == ["prepare", "connect"]
    assert snapshot[1] == ("connect", "from-prepare")
    requests = [e for e in snapshot if e[0] == "request"]
    assert requests and all(v == "from-connect" for _, v in requests)
    assert names.count("disconnect") == 1
    assert ("disconnect", "from-connect") in snapshot
    assert names.count("close") == 1
    last_request = max(i for i, n in enumerate(names) if n == "request")
    assert names.index("close") > last_request


@pytest.mark.timeout(20)
def test_on_disconnect_not_before_on_connect_finished(serve: ServeFactory) -> None:
    in_connect = threading.Event()
    release_connect = threading.Event()
    disconnected = threading.Event()
    lock = threading.Lock()
    order: list[str] = []
    noticed: list[bool] = []

    def on_connect(ctx: Any, conn: netpoll.Connection) -> str:
        in_connect.set()
        release_connect.wait(IO_TIMEOUT)
        # The poller notices the peer close while on_connect still runs (so on_disconnect
        # is due now, and must wait until on_connect has returned).
        noticed.append(wait_until(lambda: not conn.is_active(), IO_TIMEOUT))
        with lock:
            order.append("connect-end")
        return "ctx"

    def on_disconnect(ctx: Any, conn: netpoll.Connection) -> None:
        with lock:
            order.append(f"disconnect:{ctx}")
        disconnected.set()

    srv = serve(echo_handler, on_connect=on_connect, on_disconnect=on_disconnect)
    c = srv.connect()
    assert in_connect.wait(IO_TIMEOUT)
    c.close()
    release_connect.set()
    assert disconnected.wait(IO_TIMEOUT)
    assert noticed == [True], "the peer close was not noticed while on_connect ran"
    with lock:
        assert order == ["connect-end", "disconnect:ctx"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("runner", ["default", "thread_per_task"])
def test_on_request_never_runs_twice_at_once(serve: ServeFactory, runner: str) -> None:
    if runner == "thread_per_task":
        netpoll.disable_runner_pool()
    lock = threading.Lock()
    active: dict[int, int] = {}
    overlaps: list[int] = []

    def on_prepare(conn: netpoll.Connection) -> int:
        return id(conn)

    def handler(key: int, conn: netpoll.Connection) -> None:
        with lock:
            active[key] = active.get(key, 0) + 1
            if active[key] > 1:
                overlaps.append(key)
        try:
            b = conn.next(1)  # one byte per call: the rest makes it run again
            time.sleep(0.0005)  # a little work, so more input arrives meanwhile
            conn.write_binary(bytes(b))
            conn.flush()
            conn.release()
        finally:
            with lock:
                active[key] -= 1

    srv = serve(handler, on_prepare=on_prepare)
    clients = [srv.connect() for _ in range(4)]
    msgs = [bytes(random.Random(i).randbytes(150)) for i in range(len(clients))]
    for k in range(0, 150, 10):
        for c, m in zip(clients, msgs, strict=True):
            c.sendall(m[k : k + 10])
    for c, m in zip(clients, msgs, strict=True):
        assert recv_exact(c, len(m)) == m
    assert overlaps == []


@pytest.mark.timeout(20)
def test_handler_consuming_nothing_is_not_called_in_a_busy_loop(serve: ServeFactory) -> None:
    cond = threading.Condition()
    calls = 0

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        nonlocal calls
        with cond:
            calls += 1
            cond.notify_all()
        if len(conn) >= 3:  # only a complete 3-byte message is consumed
            conn.write_binary(conn.next(3))
            conn.flush()
            conn.release()

    srv = serve(handler)
    c = srv.connect()
    c.sendall(b"a")
    with cond:
        assert cond.wait_for(lambda: calls >= 1, IO_TIMEOUT)
        assert not cond.wait_for(lambda: calls > 1, 0.3), f"called {calls} times for one byte"
    c.sendall(b"b")
    with cond:
        assert cond.wait_for(lambda: calls >= 2, IO_TIMEOUT)
        assert not cond.wait_for(lambda: calls > 2, 0.2), f"called {calls} times for two bytes"
    c.sendall(b"c")
    assert recv_exact(c, 3) == b"abc"
    with cond:
        assert calls == 3


@pytest.mark.timeout(20)
def test_input_before_peer_close_is_delivered_then_peer_closed_error(
    serve: ServeFactory, network: str
) -> None:
    lock = threading.Lock()
    bodies: list[bytes] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        try:
            hdr = conn.next(4)
            body = conn.next(int.from_bytes(hdr, "big"))
        except netpoll.ConnectionClosedError as exc:
            with lock:
                errors.append(exc)
            done.set()
            raise  # ends the connection, as a Go handler returning the error would
        with lock:
            bodies.append(bytes(body))
        conn.write_binary(hdr)
        conn.write_binary(body)
        conn.flush()
        conn.release()

    srv = serve(handler, network=network)
    c = srv.connect()
    whole = frame(b"complete frame")
    c.sendall(whole + frame(b"x" * 100)[:54])  # the second frame is cut after 50 bytes
    c.shutdown(socket.SHUT_WR)
    assert recv_exact(c, len(whole)) == whole
    assert done.wait(IO_TIMEOUT)
    assert bodies == [b"complete frame"]
    assert len(errors) == 1
    assert isinstance(errors[0], netpoll.PeerClosedError)
    assert isinstance(errors[0], EOFError)
    assert recv_until_eof(c) == b""  # the server closes afterwards


@pytest.mark.timeout(20)
def test_until_past_peer_close_has_partial(serve: ServeFactory) -> None:
    lock = threading.Lock()
    lines: list[bytes] = []
    partials: list[bytes] = []
    done = threading.Event()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        try:
            line = conn.until(b"\n")
        except netpoll.PeerClosedError as exc:
            with lock:
                partials.append(bytes(exc.partial))
            done.set()
            raise
        with lock:
            lines.append(bytes(line))
        conn.release()

    srv = serve(handler)
    c = srv.connect()
    c.sendall(b"one\ntwo\npart")
    c.close()
    assert done.wait(IO_TIMEOUT)
    assert lines == [b"one\n", b"two\n"]
    assert partials == [b"part"]
    assert wait_until(lambda: srv.loop.stats().connections_closed == 1)
    assert srv.loop.stats().handler_exceptions == 0  # a peer close is not a handler failure


@pytest.mark.timeout(20)
def test_handler_exception_logged_connection_closed_server_keeps_serving(
    serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="netpoll")

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = bytes(conn.next(len(conn)))
        conn.release()
        if data == b"boom":
            raise RuntimeError("handler exploded xyzzy")
        conn.write(data)

    srv = serve(handler)
    other = srv.connect()
    other.sendall(b"before")
    assert recv_exact(other, 6) == b"before"
    bad = srv.connect()
    bad.sendall(b"boom")
    assert recv_until_eof(bad) == b""
    assert wait_until(lambda: srv.loop.stats().handler_exceptions == 1)
    records = [r for r in caplog.records if r.name == "netpoll" and r.exc_info]
    assert records, "no log record with a traceback"
    exc = records[0].exc_info[1]
    assert isinstance(exc, RuntimeError) and "xyzzy" in str(exc)
    assert "Traceback" in caplog.text and "xyzzy" in caplog.text
    other.sendall(b"after")
    assert recv_exact(other, 5) == b"after"
    new = srv.connect()
    new.sendall(b"new")
    assert recv_exact(new, 3) == b"new"


@pytest.mark.timeout(20)
def test_read_timeout_on_server_connection_keeps_data(serve: ServeFactory) -> None:
    lock = threading.Lock()
    timeouts: list[int] = []

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        try:
            data = conn.next(10)
        except netpoll.ReadTimeoutError:
            with lock:
                timeouts.append(len(conn))
            return
        conn.write(bytes(data))
        conn.release()

    srv = serve(handler, read_timeout=0.2)
    c = srv.connect()
    c.sendall(b"12345")
    assert wait_until(lambda: len(timeouts) >= 1)
    assert timeouts[0] == 5  # nothing consumed
    c.sendall(b"67890")
    assert recv_exact(c, 10) == b"1234567890"
    assert srv.loop.stats().connections_open == 1


@pytest.mark.timeout(20)
def test_tcp_nodelay_on_accepted_connections(serve: ServeFactory) -> None:
    seen: list[int] = []
    ready = threading.Event()

    def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
        with dup_socket(conn) as s:
            seen.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        ready.set()

    srv = serve(echo_handler, on_connect=on_connect)
    c = srv.connect()
    assert ready.wait(IO_TIMEOUT)
    assert seen and seen[0] != 0
    c.sendall(b"still works")  # the dup did not close the connection
    assert recv_exact(c, 11) == b"still works"


@pytest.mark.timeout(20)
def test_idle_timeout_closes_silent_connection(serve: ServeFactory) -> None:
    srv = serve(echo_handler, idle_timeout=0.3)
    c = srv.connect()
    start = time.monotonic()
    assert recv_until_eof(c) == b""
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 3.0
    assert wait_until(lambda: srv.loop.stats().closed_by_idle_timeout == 1)


@pytest.mark.timeout(30)
def test_idle_timeout_spares_an_active_connection(serve: ServeFactory) -> None:
    """A request every 0.1 s keeps a connection with a 1.5 s idle timeout open for two
    and a half idle periods (a wide margin: a loaded machine may delay a round trip by
    a good fraction of a second without the test failing); once it goes silent, it is
    closed, and not before an idle period has passed."""
    srv = serve(echo_handler, idle_timeout=1.5)
    c = srv.connect()
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 3.75:  # 2.5 idle periods, never idle for one
        c.sendall(b"%03d" % i)
        assert recv_exact(c, 3) == b"%03d" % i, f"closed while active, after {i} requests"
        i += 1
        time.sleep(0.1)  # the client's pace (behaviour under test), not synchronisation
    last = time.monotonic()
    assert srv.loop.stats().closed_by_idle_timeout == 0
    assert recv_until_eof(c) == b""  # and once silent, it is closed
    assert time.monotonic() - last >= 1.2, "closed before an idle period of silence"
    assert wait_until(lambda: srv.loop.stats().closed_by_idle_timeout == 1)


# --------------------------------------------------------------------------- shutdown


@pytest.mark.timeout(30)
def test_shutdown_closes_idle_at_once_and_lets_busy_finish(
    serve: ServeFactory, network: str
) -> None:
    busy_started = threading.Event()
    proceed = threading.Event()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = bytes(conn.next(len(conn)))
        conn.release()
        if data == b"slow":
            busy_started.set()
            proceed.wait(IO_TIMEOUT)
        conn.write(data)

    srv = serve(handler, network=network)
    idle = srv.connect()
    idle.sendall(b"hi")
    assert recv_exact(idle, 2) == b"hi"
    busy = srv.connect()
    busy.sendall(b"slow")
    assert busy_started.wait(IO_TIMEOUT)

    result: list[BaseException | None] = []
    returned = threading.Event()

    def do_shutdown() -> None:
        try:
            srv.loop.shutdown(10)
            result.append(None)
        except BaseException as exc:
            result.append(exc)
        returned.set()

    srv.stopped = True
    t = threading.Thread(target=do_shutdown, daemon=True)
    t.start()
    assert recv_until_eof(idle) == b""  # closed at once
    assert not returned.is_set()  # still waiting for the busy one
    assert not srv.served.is_set()
    proceed.set()
    assert recv_exact(busy, 4) == b"slow"
    assert recv_until_eof(busy) == b""
    assert returned.wait(IO_TIMEOUT)
    assert result == [None]
    assert srv.served.wait(IO_TIMEOUT)
    with pytest.raises(OSError):
        srv.connect(timeout=2)  # no longer accepting


@pytest.mark.timeout(30)
def test_shutdown_timeout_raises_and_does_not_force_close(serve: ServeFactory) -> None:
    busy_started = threading.Event()
    proceed = threading.Event()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = bytes(conn.next(len(conn)))
        conn.release()
        busy_started.set()
        proceed.wait(IO_TIMEOUT)
        conn.write(data)

    srv = serve(handler)
    c = srv.connect()
    c.sendall(b"work")
    assert busy_started.wait(IO_TIMEOUT)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        srv.loop.shutdown(0.3)
    assert 0.25 <= time.monotonic() - start < 3.0
    assert srv.served.wait(IO_TIMEOUT)  # serve returns either way
    proceed.set()
    assert recv_exact(c, 4) == b"work"  # the busy connection was left running
    assert recv_until_eof(c) == b""  # ...and closed once idle
    assert wait_until(lambda: srv.loop.stats().connections_open == 0)


@pytest.mark.timeout(20)
def test_second_concurrent_serve_raises(serve: ServeFactory) -> None:
    srv = serve(echo_handler)
    c = srv.connect()
    c.sendall(b"x")
    assert recv_exact(c, 1) == b"x"  # serving for sure
    other = netpoll.create_listener("tcp", "127.0.0.1:0")
    try:
        with pytest.raises(RuntimeError):
            srv.loop.serve(other)
    finally:
        other.close()
    c.sendall(b"y")
    assert recv_exact(c, 1) == b"y"


@pytest.mark.timeout(20)
def test_serve_accepts_plain_socket(serve: ServeFactory) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    srv = serve(echo_handler, listener=lsock)
    c = srv.connect()
    c.sendall(b"plain listener")
    assert recv_exact(c, 14) == b"plain listener"


@pytest.mark.timeout(20)
def test_serve_again_after_shutdown(serve: ServeFactory) -> None:
    srv = serve(echo_handler)
    c = srv.connect()
    c.sendall(b"1")
    assert recv_exact(c, 1) == b"1"
    srv.stop()
    srv2 = serve(echo_handler)  # a fresh loop on a fresh listener still works
    c2 = srv2.connect()
    c2.sendall(b"2")
    assert recv_exact(c2, 1) == b"2"


# --------------------------------------------------------------------------- listeners


def _listener_forms(tmp_path: Any) -> list[tuple[str, Any]]:
    forms: list[tuple[str, Any]] = [
        ("tcp", "127.0.0.1:0"),
        ("tcp", ("127.0.0.1", 0)),
        ("tcp4", "127.0.0.1:0"),
        ("unix", str(tmp_path / "form.sock")),
    ]
    return forms


@pytest.mark.timeout(20)
@pytest.mark.parametrize("index", range(4))
def test_create_listener_forms(serve: ServeFactory, tmp_path: Any, index: int) -> None:
    net, address = _listener_forms(tmp_path)[index]
    listener = netpoll.create_listener(net, address)
    assert listener.fileno() >= 0
    if net == "unix":
        assert listener.addr == address
    else:
        host, port = listener.addr[:2]
        assert host == "127.0.0.1" and 0 < port < 65536
    srv = serve(echo_handler, network=net, listener=listener)
    c = srv.connect()
    c.sendall(b"form")
    assert recv_exact(c, 4) == b"form"


@pytest.mark.timeout(20)
@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
def test_create_listener_tcp6(serve: ServeFactory) -> None:
    listener = netpoll.create_listener("tcp6", "[::1]:0")
    assert listener.addr[0] == "::1"
    srv = serve(echo_handler, network="tcp6", listener=listener)
    c = srv.connect()
    c.sendall(b"six")
    assert recv_exact(c, 3) == b"six"
    conn = srv.dial()
    conn.write(b"dial6")
    assert bytes(conn.next(5)) == b"dial6"


@pytest.mark.timeout(20)
def test_listener_accept_gives_connection(network: str, tmp_path: Any) -> None:
    address = str(tmp_path / "acc.sock") if network == "unix" else "127.0.0.1:0"
    with netpoll.create_listener(network, address) as listener:
        assert listener.network == network
        family = socket.AF_UNIX if network == "unix" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as c:
            c.settimeout(IO_TIMEOUT)
            c.connect(listener.addr)
            conn = listener.accept()
            with conn:
                assert isinstance(conn, netpoll.Connection)
                c.sendall(b"accepted")
                assert bytes(conn.next(8)) == b"accepted"
                conn.write(b"back")
                assert recv_exact(c, 4) == b"back"
    if network == "unix":
        assert not os.path.exists(address)
    listener.close()  # again: a no-op
    with pytest.raises(OSError, match="Bad file descriptor"):
        listener.accept()


def test_unix_listener_close_removes_only_its_own_socket_file(tmp_path: Any) -> None:
    """close() removes the socket file it listened on, but not a file that has since
    taken that path (another program's), and closes quietly when the file is gone."""
    path = tmp_path / "own.sock"
    listener = netpoll.create_listener("unix", str(path))
    assert path.is_socket()
    listener.close()
    assert not path.exists()
    listener.close()  # no socket to ask for its path any more: a no-op
    other = netpoll.create_listener("unix", str(path))
    path.unlink()
    path.write_bytes(b"someone else's file")
    other.close()
    assert path.read_bytes() == b"someone else's file"
    path.unlink()
    gone = netpoll.create_listener("unix", str(path))
    path.unlink()  # removed behind the listener's back: close() has nothing to remove
    gone.close()
    assert not path.exists()
    with pytest.raises(OSError, match="Bad file descriptor"):
        gone.accept()


@pytest.mark.parametrize(
    ("net", "address", "word"),
    [
        ("tcp", "127.0.0.1", "port"),
        ("tcp", "host:notaport", "port"),
        ("tcp", ":99999", "port"),
        ("tcp", "127.0.0.1:-1", "port"),
        ("tcp", ("127.0.0.1", 70000), "port"),
        ("udp", "127.0.0.1:0", "network"),
        ("unix", "", "address"),
    ],
)
def test_create_listener_bad_addresses(net: str, address: Any, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        netpoll.create_listener(net, address)


# --------------------------------------------------------------------------- stats


@pytest.mark.timeout(20)
def test_stats_counts(serve: ServeFactory) -> None:
    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = bytes(conn.next(len(conn)))
        conn.release()
        if data == b"raise":
            raise ValueError("deliberate")
        conn.write(data + data)  # twice what came in

    srv = serve(handler)
    st = srv.loop.stats()
    assert dataclasses.is_dataclass(st)
    assert (st.connections_open, st.connections_accepted, st.connections_closed) == (0, 0, 0)
    a, b = srv.connect(), srv.connect()
    a.sendall(b"12345")
    assert recv_exact(a, 10) == b"1234512345"
    b.sendall(b"abc")
    assert recv_exact(b, 6) == b"abcabc"
    st = srv.loop.stats()
    assert (st.connections_open, st.connections_accepted, st.connections_closed) == (2, 2, 0)
    assert st.bytes_received == 8
    # the counter may trail the reply the client already holds by a moment
    assert wait_until(lambda: srv.loop.stats().bytes_sent == 16)
    assert st.handler_exceptions == 0
    a.close()
    assert wait_until(lambda: srv.loop.stats().connections_closed == 1)
    b.sendall(b"raise")
    assert recv_until_eof(b) == b""
    assert wait_until(lambda: srv.loop.stats().connections_closed == 2)
    st = srv.loop.stats()
    assert (st.connections_open, st.connections_accepted, st.connections_closed) == (0, 2, 2)
    assert st.bytes_received == 13
    assert st.bytes_sent == 16
    assert st.handler_exceptions == 1
    assert st.closed_by_idle_timeout == 0
    assert st.closed_by_read_timeout == 0
    assert st.closed_by_write_timeout == 0


# --------------------------------------------------------------------------- limits, timeouts


@pytest.mark.timeout(30)
def test_read_buffer_limit_pushes_back_on_the_peer(serve: ServeFactory) -> None:
    limit = 256 << 10
    total = 16 << 20
    gate = threading.Event()
    lock = threading.Lock()
    consumed = 0
    big_frame_ok = threading.Event()

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        nonlocal consumed
        gate.wait(IO_TIMEOUT)
        if not big_frame_ok.is_set():
            conn.next(4 * limit)  # a pending next(n) beyond the limit still completes
            conn.release()
            with lock:
                consumed += 4 * limit
            big_frame_ok.set()
        n = len(conn)
        conn.skip(n)
        conn.release()
        with lock:
            consumed += n

    srv = serve(handler, read_buffer_limit=limit)
    c = srv.connect(timeout=20)
    sent = threading.Event()
    t = threading.Thread(target=lambda: (c.sendall(b"\x01" * total), sent.set()), daemon=True)
    t.start()
    assert wait_until(lambda: srv.loop.stats().bytes_received >= limit)
    # The handler is blocked; the server must stop reading near the limit.
    assert not wait_until(lambda: srv.loop.stats().bytes_received > 2 * limit, 0.3), (
        f"read {srv.loop.stats().bytes_received} bytes with a limit of {limit}"
    )
    assert not sent.is_set()  # TCP pushed back on the sender
    gate.set()
    assert sent.wait(20)
    assert big_frame_ok.is_set()
    assert wait_until(lambda: consumed == total, 20), f"consumed {consumed} of {total}"


@pytest.mark.timeout(20)
def test_server_write_timeout_closes_and_counts(serve: ServeFactory) -> None:
    errors: list[BaseException] = []

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        conn.skip(len(conn))
        conn.release()
        try:
            conn.write(b"\0" * (32 << 20))  # the client never reads
        except BaseException as exc:
            errors.append(exc)
            raise

    srv = serve(handler, write_timeout=0.2)
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(IO_TIMEOUT)
    try:
        c.connect(srv.addr)
        c.sendall(b"go")
        assert wait_until(lambda: srv.loop.stats().closed_by_write_timeout == 1, IO_TIMEOUT)
        assert len(errors) == 1 and isinstance(errors[0], netpoll.WriteTimeoutError)
        assert srv.loop.stats().connections_open == 0
    finally:
        c.close()


@pytest.mark.timeout(20)
def test_server_read_timeout_propagating_closes_and_counts(serve: ServeFactory) -> None:
    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        conn.next(100)  # only 3 bytes come: ReadTimeoutError escapes the handler

    srv = serve(handler, read_timeout=0.2)
    c = srv.connect()
    c.sendall(b"abc")
    assert recv_until_eof(c) == b""
    assert wait_until(lambda: srv.loop.stats().closed_by_read_timeout == 1)


@pytest.mark.timeout(20)
def test_listener_on_all_interfaces(serve: ServeFactory) -> None:
    listener = netpoll.create_listener("tcp", ":0")
    host, port = listener.addr[:2]
    assert host in ("0.0.0.0", "::")
    serve(echo_handler, listener=listener)
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as c:
        c.sendall(b"any")
        assert recv_exact(c, 3) == b"any"
