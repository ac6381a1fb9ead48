"""Lifecycles and races: a connection read and written by two threads, shutdown against
busy handlers, close callbacks against a running handler, a hang-up while reading is
paused, handlers that replace themselves, and responses buffered before a peer close."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import netpoll
from conftest import IO_TIMEOUT, ServeFactory, ServerHandle, echo_handler, wait_until

# --------------------------------------------------------------------------- dialed, two threads


@pytest.mark.timeout(15)
def test_dialed_connection_one_thread_reads_one_thread_writes(serve: ServeFactory) -> None:
    """A dialed connection read by one thread (read()) and written by another (write())
    neither loses, duplicates nor reorders bytes, and neither side raises: reading and
    writing are independent halves, as in Netpoll (only concurrent *writers* need a
    lock). A reader must never touch the writer's queue."""
    srv = serve(echo_handler)
    conn = srv.dial()
    chunks = [(b"%06d|" % i) * 8 for i in range(20000)]
    expected = b"".join(chunks)
    errors: list[BaseException] = []
    got = bytearray()
    done = threading.Event()

    def writer() -> None:
        try:
            for ch in chunks:
                conn.write(ch)
        except BaseException as exc:
            errors.append(exc)
            done.set()

    def reader() -> None:
        try:
            while len(got) < len(expected):
                data = conn.read()
                if not data:
                    break
                got.extend(data)
                if got[: len(got)] != expected[: len(got)]:
                    break
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    tw = threading.Thread(target=writer, daemon=True)
    tr = threading.Thread(target=reader, daemon=True)
    tr.start()
    tw.start()
    finished = done.wait(10)
    conn.close()
    tw.join(5)
    tr.join(5)
    if errors:
        import traceback

        tb = traceback.extract_tb(errors[0].__traceback__)[-1]
        pytest.fail(f"a side raised {errors[0]!r} at {tb.filename}:{tb.lineno} ({tb.line})")
    assert finished
    n = len(got)
    if bytes(got) != expected:
        first_bad = next(
            (i for i in range(min(n, len(expected))) if got[i] != expected[i]),
            min(n, len(expected)),
        )
        pytest.fail(
            f"stream corrupted: received {n} of {len(expected)} bytes, first difference at "
            f"{first_bad}: got {bytes(got[first_bad : first_bad + 24])!r} expected "
            f"{expected[first_bad : first_bad + 24]!r}"
        )


# --------------------------------------------------------------------------- shutdown


def _serve_one_request(
    serve: ServeFactory,
    on_request: Callable[[Any, netpoll.Connection], Any],
    ready: threading.Event,
) -> ServerHandle:
    """Serve ``on_request``, send it one request, and wait until its handler sets ``ready``."""
    srv = serve(on_request)
    srv.connect().sendall(b"request")
    assert ready.wait(IO_TIMEOUT)
    return srv


@pytest.mark.timeout(15)
def test_shutdown_timeout_is_honoured_with_unconsumed_input(serve: ServeFactory) -> None:
    """API.md: shutdown(timeout) raises TimeoutError when some connections are still busy
    after ``timeout``. A connection whose handler returned without consuming its input is
    run again by shutdown (it has input to answer), on its poller: if that run blocks,
    shutdown still returns by its timeout, and never runs a handler on its caller's
    thread."""
    calls = 0
    first = threading.Event()
    release = threading.Event()
    threads: list[str] = []

    def on_request(ctx: Any, conn: netpoll.Connection) -> None:
        nonlocal calls
        calls += 1
        threads.append(threading.current_thread().name)
        if calls == 1:
            first.set()
            return  # consumed nothing: waits for more input
        release.wait(10)  # slow answer during shutdown
        conn.skip(len(conn))
        conn.release()

    srv = _serve_one_request(serve, on_request, first)
    outcome: list[Any] = []
    returned = threading.Event()

    def do_shutdown() -> None:
        t0 = time.monotonic()
        try:
            srv.loop.shutdown(0.5)
            outcome.append("returned")
        except TimeoutError:
            outcome.append("TimeoutError")
        outcome.append(time.monotonic() - t0)
        returned.set()

    srv.stopped = True  # teardown: don't call shutdown again
    caller = threading.Thread(target=do_shutdown, name="shutdown-caller", daemon=True)
    caller.start()
    try:
        in_time = returned.wait(3.0)
        ran_on_caller = "shutdown-caller" in threads
    finally:
        release.set()
    assert returned.wait(10)
    assert in_time and outcome[0] == "TimeoutError", (
        f"shutdown(0.5) {outcome[0]} after {outcome[1]:.1f}s"
        f"{' (the handler ran on the thread that called shutdown)' if ran_on_caller else ''}"
    )
    assert not ran_on_caller, "the handler ran on the thread that called shutdown()"


# --------------------------------------------------------------------------- close vs handler


@pytest.mark.timeout(15)
def test_close_callbacks_wait_for_the_running_handler(serve: ServeFactory) -> None:
    """API.md order per connection: on_prepare -> on_connect -> on_request... -> close
    callbacks. close() from another thread while on_request runs closes at once, but the
    callbacks wait for the handler to return (as Netpoll runs them when the task ends)."""
    in_handler = threading.Event()
    release = threading.Event()
    callback_ran = threading.Event()
    handler_done = threading.Event()
    order: list[str] = []
    holder: list[netpoll.Connection] = []

    def on_prepare(conn: netpoll.Connection) -> None:
        holder.append(conn)
        conn.add_close_callback(lambda c: (order.append("close-callback"), callback_ran.set()))

    def on_request(ctx: Any, conn: netpoll.Connection) -> None:
        in_handler.set()
        release.wait(10)
        order.append("handler-end")
        handler_done.set()

    srv = serve(on_request, on_prepare=on_prepare)
    c = srv.connect()
    c.sendall(b"req")
    assert in_handler.wait(IO_TIMEOUT)
    closer = threading.Thread(target=holder[0].close, daemon=True)
    closer.start()
    early = callback_ran.wait(1.0)
    release.set()
    assert handler_done.wait(IO_TIMEOUT)
    assert callback_ran.wait(IO_TIMEOUT)
    assert not early and order == ["handler-end", "close-callback"], (
        f"close callback ran while on_request was still running: {order}"
    )


@pytest.mark.timeout(15)
def test_shutdown_waits_for_a_handler_that_closed_its_connection(serve: ServeFactory) -> None:
    """API.md: shutdown waits for busy connections to finish. A handler that answers,
    closes its connection and goes on working (cleanup) is still busy: shutdown(0.5)
    raises TimeoutError rather than return (and let serve() return) under user code."""
    in_handler = threading.Event()
    release = threading.Event()

    def on_request(ctx: Any, conn: netpoll.Connection) -> None:
        conn.write(bytes(conn.next(len(conn))))
        conn.close()
        in_handler.set()
        release.wait(10)  # e.g. logging, bookkeeping after the answer

    srv = serve(on_request)
    c = srv.connect()
    c.sendall(b"req")
    assert in_handler.wait(IO_TIMEOUT)
    srv.stopped = True
    try:
        t0 = time.monotonic()
        try:
            srv.loop.shutdown(0.5)
            outcome = "returned"
        except TimeoutError:
            outcome = "TimeoutError"
        elapsed = time.monotonic() - t0
        still_running = not release.is_set()
    finally:
        release.set()
    assert outcome == "TimeoutError", (
        f"shutdown(0.5) {outcome} after {elapsed:.2f}s while a handler was still running "
        f"(running={still_running})"
    )


# --------------------------------------------------------------------------- read limit, handlers


@pytest.mark.timeout(15)
def test_paused_connection_whose_peer_hung_up_is_closed(serve: ServeFactory) -> None:
    """API.md: on_disconnect runs when the peer closes; input already received is
    delivered, then the connection closes. Also when the read buffer limit has paused
    reading and the handler, waiting for a whole message larger than the limit, can free
    no room: the rest (bounded by the kernel's buffer, the peer being gone) is read to
    the end of the stream, and the handler sees all of it."""
    closed = threading.Event()
    disconnected = threading.Event()
    calls = 0
    seen = [0]

    def on_prepare(conn: netpoll.Connection) -> None:
        conn.add_close_callback(lambda c: closed.set())

    def on_request(ctx: Any, conn: netpoll.Connection) -> None:
        nonlocal calls
        calls += 1  # waits for a whole message (8 KiB): consumes nothing before
        seen[0] = max(seen[0], len(conn))

    srv = serve(
        on_request,
        on_prepare=on_prepare,
        on_disconnect=lambda ctx, conn: disconnected.set(),
        read_buffer_limit=1024,
    )
    c = srv.connect()
    c.sendall(b"y" * 8192)
    c.close()
    assert closed.wait(3), f"connection never closed (calls={calls}, disc={disconnected.is_set()})"
    assert disconnected.is_set()
    assert seen[0] == 8192


@pytest.mark.timeout(15)
def test_handler_that_reinstalls_itself_and_consumes_nothing_does_not_spin(
    serve: ServeFactory,
) -> None:
    """API.md: if on_request returns having consumed nothing, it waits for more input
    instead of spinning. A state-machine handler that (re)installs its bound method with
    set_on_request on every call (the same handler, equal but a new bound-method object)
    is not called in a busy loop while it waits for the rest of a frame."""
    calls = 0
    first = threading.Event()

    class Proto:
        def on_data(self, ctx: Any, conn: netpoll.Connection) -> None:
            nonlocal calls
            calls += 1
            first.set()
            conn.set_on_request(self.on_data)  # stay in this state
            if len(conn) < 4:
                return
            n = int.from_bytes(conn.peek(4), "big")
            if len(conn) < 4 + n:
                return  # wait for the rest of the frame
            conn.skip(4 + n)
            conn.release()

    proto = Proto()
    srv = serve(proto.on_data)
    c = srv.connect()
    c.sendall((100).to_bytes(4, "big") + b"a" * 10)  # 90 bytes missing
    assert first.wait(IO_TIMEOUT)
    cpu0, calls0 = time.process_time(), calls
    threading.Event().wait(0.5)  # a bounded measuring interval, not synchronisation
    cpu, ncalls = time.process_time() - cpu0, calls - calls0
    c.sendall(b"a" * 90)
    assert ncalls <= 2 and cpu < 0.25, (
        f"handler called {ncalls} times in 0.5s using {cpu:.2f}s of CPU while waiting for input"
    )


@pytest.mark.timeout(15)
def test_set_on_request_after_peer_close_still_delivers_buffered_response() -> None:
    """API.md: set_on_request on a dialed connection delivers responses; when the peer
    closes, input already received is still delivered (Netpoll's SetOnRequest triggers
    the handler when input is buffered, and a poller-side close still processes the
    buffered data). A response that arrived together with the server's close, before
    the client installed its handler, reaches the handler."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    conn = netpoll.dial_connection("tcp", lsock.getsockname())
    peer, _ = lsock.accept()
    lsock.close()
    try:
        peer.sendall(b"response")
        peer.close()
        assert wait_until(lambda: not conn.is_active())
        assert len(conn) == 8  # buffered and readable with no handler installed
        got = bytearray()
        done = threading.Event()

        def handler(ctx: Any, c: netpoll.Connection) -> None:
            got.extend(c.next(len(c)))
            c.release()
            done.set()

        conn.set_on_request(handler)
        delivered = done.wait(3)
        readable_after: str
        try:
            readable_after = repr(conn.read_binary(len(conn)) if len(conn) else b"")
        except netpoll.NetpollError as exc:
            readable_after = type(exc).__name__
        assert delivered and bytes(got) == b"response", (
            f"buffered response lost: handler got {bytes(got)!r}; a read then gives "
            f"{readable_after}"
        )
    finally:
        conn.close()


@pytest.mark.timeout(15)
@pytest.mark.pure_only(
    reason="monkeypatches netpoll._server.manager, which compiled code calls directly"
)
def test_shutdown_racing_the_start_of_serve_leaves_nothing_accepting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shutdown() that lands while serve() is still setting up makes serve() return
    without leaving its listener registered: nothing is accepted afterwards."""
    import netpoll._server as server_module

    loop = netpoll.EventLoop(echo_handler)
    listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    real_manager = server_module.manager
    picking = threading.Event()
    gate = threading.Event()

    class _SlowManager:
        def pick(self, addr: Any) -> Any:
            picking.set()
            gate.wait(IO_TIMEOUT)  # serve() is between marking itself and registering
            return real_manager().pick(addr)

    monkeypatch.setattr(server_module, "manager", lambda: _SlowManager())
    served = threading.Event()

    def run() -> None:
        try:
            loop.serve(listener)
        finally:
            served.set()

    threading.Thread(target=run, daemon=True).start()
    try:
        assert picking.wait(IO_TIMEOUT)
        loop.shutdown(IO_TIMEOUT)  # lands in the window
        gate.set()
        assert served.wait(IO_TIMEOUT), "serve() did not return after shutdown()"
        monkeypatch.undo()
        with socket.create_connection(listener.addr, timeout=0.5) as c:
            c.sendall(b"ping")  # the kernel's backlog takes it; nobody may accept it
            with pytest.raises(TimeoutError):
                c.recv(4)  # a bounded wait: an answer would mean it was accepted
        assert loop.stats().connections_accepted == 0
    finally:
        gate.set()
        listener.close()


@pytest.mark.timeout(15)
def test_shutdown_with_zero_timeout_does_not_wait(serve: ServeFactory) -> None:
    """shutdown(0) does not wait: with a handler still busy it raises TimeoutError at
    once (None or infinity wait as long as it takes)."""
    in_handler = threading.Event()
    release = threading.Event()

    def on_request(ctx: Any, conn: netpoll.Connection) -> None:
        in_handler.set()
        release.wait(10)
        conn.skip(len(conn))
        conn.release()

    srv = _serve_one_request(serve, on_request, in_handler)
    srv.stopped = True  # teardown: this test shuts the loop down itself
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            srv.loop.shutdown(0)
        assert time.monotonic() - t0 < 1.0
    finally:
        release.set()
    srv.loop.shutdown(math.inf)  # the handler returned: drains now
