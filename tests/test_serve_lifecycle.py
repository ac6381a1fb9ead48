"""The serving lifecycle: serve() interrupted, wait_serving(), a forced shutdown, a limit on
open connections, and half-closing a connection with close_write()."""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import (
    IO_TIMEOUT,
    ServeFactory,
    conn_read_exact,
    echo_handler,
    frame,
    frame_echo_handler,
    raise_nofile_limit,
    recv_exact,
    wait_until,
)

# --------------------------------------------------------------------------- helpers


class Script:
    """A Python script in a child process; its output lines arrive on a queue."""

    def __init__(self, path: Path, text: str) -> None:
        path.write_text(text)
        env = dict(os.environ)
        package_root = Path(netpoll.__file__).resolve().parent.parent  # the netpoll under test
        env["PYTHONPATH"] = os.pathsep.join(
            [str(package_root), *filter(None, [env.get("PYTHONPATH")])]
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name="script-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The next output line starting with ``prefix`` (others are kept in ``output``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line {prefix!r} within {timeout}s; output: {self.output}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the script ended before {prefix!r}; output: {self.output}")
            self.output.append(line)
            if line.startswith(prefix):
                return line

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def closed_outcome(sock: socket.socket, timeout: float = 3.0) -> str:
    """How a client socket ends: "eof", "reset", "timeout", or "data:..." if bytes came."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    return "eof" if not data else f"data:{data[:40]!r}"


# --------------------------------------------------------------------------- KeyboardInterrupt

SIGINT_SCRIPT = textwrap.dedent(
    """
    import socket
    import struct
    import sys
    import threading

    import netpoll


    def handler(ctx, conn):
        hdr = conn.next(4)
        body = conn.next(int.from_bytes(hdr, "big"))
        conn.write_binary(hdr)
        conn.write_binary(body)
        conn.flush()
        conn.release()


    loop = netpoll.EventLoop(handler)
    listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    port = listener.addr[1]


    def announce():
        # One round trip proves serve() is accepting before the test is told.
        req = struct.pack(">I", 4) + b"ping"
        got = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(req)
            while len(got) < len(req):
                chunk = s.recv(64)
                if not chunk:
                    break
                got += chunk
        print("serving", port, "ok" if got == req else "bad", flush=True)


    threading.Thread(target=announce, name="announce", daemon=True).start()
    try:
        loop.serve(listener)
        print("serve returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    sys.stdin.readline()  # stays alive until the test closes stdin
    print("bye", flush=True)
    """
)


def probe_after_interrupt(port: int) -> str:
    """Connect and send a request: "refused", "reset", "eof", "unanswered" (nothing within
    2 s) or "answered ..."."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(2.0)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return "refused"
        try:
            s.sendall(frame(b"after"))
            data = s.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "unanswered"
        return "eof" if not data else f"answered {data!r}"
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_keyboard_interrupt_ends_serve_and_stops_accepting(tmp_path: Path) -> None:
    """SIGINT to a process serving on its main thread: the KeyboardInterrupt ends serve()
    (the script catches it and stays alive), and from then on a new connection is refused,
    or at least never answered: nothing may keep accepting behind the script's back."""
    script = Script(tmp_path / "serve_sigint.py", SIGINT_SCRIPT)
    try:
        line = script.expect("serving", 20)
        assert line.endswith(" ok"), line
        port = int(line.split()[1])
        script.proc.send_signal(signal.SIGINT)
        script.expect("interrupted", 10)
        assert script.proc.poll() is None, f"the script died: {script.output}"
        outcome = probe_after_interrupt(port)
        assert script.proc.poll() is None, f"the script died: {script.output}"
        assert outcome in ("refused", "reset", "eof", "unanswered"), (
            f"a connection made after serve() was interrupted was served: {outcome}"
        )
        assert script.proc.stdin is not None
        script.proc.stdin.close()
        script.expect("bye", 10)
        assert script.proc.wait(10) == 0, script.output
    finally:
        script.close()


# --------------------------------------------------------------------------- wait_serving


@pytest.mark.timeout(15)
def test_wait_serving_returns_false_when_serve_was_never_called() -> None:
    """On a fresh EventLoop, ``wait_serving(0.2)`` waits its timeout and returns False."""
    loop = netpoll.EventLoop(echo_handler)
    t0 = time.monotonic()
    result = loop.wait_serving(0.2)
    elapsed = time.monotonic() - t0
    assert result is False
    assert 0.15 <= elapsed <= 1.0, f"wait_serving(0.2) returned after {elapsed:.3f}s"


@pytest.mark.timeout(30)
def test_wait_serving_returns_true_once_accepting() -> None:
    """``wait_serving`` is False before serve() is called and True once the listener is
    registered; a connection made right after it returns True is answered."""
    loop = netpoll.EventLoop(frame_echo_handler)
    listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    go = threading.Event()
    served = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            if go.wait(10):
                loop.serve(listener)
        except BaseException as exc:
            errors.append(exc)
        finally:
            served.set()

    thread = threading.Thread(target=run, name="test-serve", daemon=True)
    thread.start()
    try:
        assert loop.wait_serving(0.2) is False, "wait_serving() said True before serve()"
        go.set()
        t0 = time.monotonic()
        assert loop.wait_serving(5.0) is True
        waited = time.monotonic() - t0
        assert waited < 5.0
        with socket.create_connection(listener.addr, timeout=IO_TIMEOUT) as s:
            req = frame(b"right after wait_serving")
            s.sendall(req)
            assert recv_exact(s, len(req)) == req
    finally:
        go.set()
        # serve() must have begun: a shutdown before it would not stop it
        wait_until(lambda: loop.serving or served.is_set(), 5.0)
        loop.shutdown(5.0)
        served.wait(5.0)
        thread.join(5.0)
        listener.close()
    assert served.is_set(), "serve() did not return after shutdown()"
    assert not errors, errors


# --------------------------------------------------------------------------- forced shutdown

HALF_ANNOUNCED = 100  # a frame header announces this many bytes ...
HALF_SENT = 10  # ... and only this many follow


class ShutdownProbe:
    """Frame echo that reports a handler waiting for the rest of a half-sent frame (and
    what that wait raised), and holds frames starting with b"busy" until released."""

    def __init__(self) -> None:
        self.waiting = threading.Event()  # a handler entered next(HALF_ANNOUNCED)
        self.busy = threading.Event()  # a handler is holding a b"busy" frame
        self.release = threading.Event()
        self.seen: queue.Queue[BaseException | None] = queue.Queue()

    def handler(self, ctx: Any, conn: netpoll.Connection) -> None:
        hdr = conn.next(4)
        n = int.from_bytes(hdr, "big")
        if n == HALF_ANNOUNCED:
            self.waiting.set()
            try:
                conn.next(n)
            except BaseException as exc:
                self.seen.put(exc)
                raise
            self.seen.put(None)
            return
        body = conn.next(n)
        if bytes(body[:4]) == b"busy":
            self.busy.set()
            self.release.wait(20)
        conn.write_binary(hdr)
        conn.write_binary(body)
        conn.flush()
        conn.release()


@pytest.mark.timeout(40)
def test_forced_shutdown_closes_busy_connections(serve: ServeFactory) -> None:
    """``shutdown(0.5, force=True)`` with one handler waiting in ``next(n)`` for the rest
    of a half-sent frame and another busy in a wait the library cannot see: it returns,
    without an exception, within 0.4-3 s (it waits its timeout first, then closes what is
    still busy); the handler in ``next(n)`` gets ConnectionClosedError; both clients see
    the end of the stream (EOF or a reset); serve() returns."""
    probe = ShutdownProbe()
    srv = serve(probe.handler)
    try:
        half = srv.connect()
        half.sendall(frame(b"h" * HALF_ANNOUNCED)[: 4 + HALF_SENT])
        busy = srv.connect()
        busy.sendall(frame(b"busy request"))
        assert probe.waiting.wait(IO_TIMEOUT), "the half frame's handler never ran"
        assert probe.busy.wait(IO_TIMEOUT), "the busy handler never ran"
        t0 = time.monotonic()
        srv.loop.shutdown(0.5, force=True)
        srv.stopped = True  # shut down here, not again by the fixture
        elapsed = time.monotonic() - t0
        assert 0.4 <= elapsed <= 3.0, f"shutdown(0.5, force=True) returned after {elapsed:.2f}s"
        try:
            seen = probe.seen.get(timeout=3.0)
        except queue.Empty:
            seen = None
        assert isinstance(seen, netpoll.ConnectionClosedError), (
            f"the handler waiting in next(n) saw {seen!r}, not ConnectionClosedError"
        )
        assert closed_outcome(half) in ("eof", "reset")
        assert closed_outcome(busy) in ("eof", "reset")
        assert srv.served.wait(3.0), "serve() did not return after the forced shutdown"
    finally:
        probe.release.set()


@pytest.mark.timeout(30)
def test_graceful_shutdown_still_times_out_on_a_half_sent_frame(serve: ServeFactory) -> None:
    """Without ``force``, ``shutdown(0.3)`` keeps Go's meaning: a handler waiting for the
    rest of a half-sent frame is busy, so it raises TimeoutError (serve() returns)."""
    probe = ShutdownProbe()
    srv = serve(probe.handler)
    half = srv.connect()
    half.sendall(frame(b"h" * HALF_ANNOUNCED)[: 4 + HALF_SENT])
    assert probe.waiting.wait(IO_TIMEOUT), "the half frame's handler never ran"
    srv.stopped = True
    with pytest.raises(TimeoutError):
        srv.loop.shutdown(0.3)
    assert srv.served.wait(3.0)
    half.close()  # the handler's wait ends with PeerClosedError; the connection closes
    assert isinstance(probe.seen.get(timeout=5.0), netpoll.ConnectionClosedError)


@pytest.mark.timeout(30)
def test_shutdown_none_waits_for_a_half_sent_frame_then_returns(serve: ServeFactory) -> None:
    """``shutdown(None)`` keeps Go's meaning, a graceful stop without a limit: while a
    handler waits in ``next(n)`` for the rest of a half-sent frame, a ``shutdown(None)``
    on another thread does not return (nor raise) for 0.5 s; once the client sends the
    rest, the handler's reply arrives whole, ``shutdown`` returns within 5 s without an
    exception, the client sees EOF, serve() returns, and a new connection attempt is
    refused (or closed without an answer)."""
    waiting = threading.Event()  # the handler is about to wait for the frame's body

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        hdr = conn.next(4)
        waiting.set()
        body = conn.next(int.from_bytes(hdr, "big"))
        conn.write_binary(hdr)
        conn.write_binary(body)
        conn.flush()
        conn.release()

    srv = serve(handler)
    addr = srv.addr
    request = frame(b"h" * HALF_ANNOUNCED)
    half = srv.connect()
    half.sendall(request[: 4 + HALF_SENT])
    assert waiting.wait(IO_TIMEOUT), "the half frame's handler never ran"

    done = threading.Event()
    outcome: list[BaseException | None] = []

    def stop() -> None:
        try:
            srv.loop.shutdown(None)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)
        finally:
            done.set()

    srv.stopped = True  # shut down here, not again by the fixture
    stopper = threading.Thread(target=stop, name="test-shutdown", daemon=True)
    stopper.start()
    # (On failure the fixture closes the client: the handler's wait ends, shutdown returns.)
    assert not done.wait(0.5), f"shutdown(None) returned with a frame half sent: {outcome}"
    assert stopper.is_alive()

    half.sendall(request[4 + HALF_SENT :])
    assert recv_exact(half, len(request)) == request
    assert done.wait(5.0), "shutdown(None) did not return once the frame was answered"
    assert outcome == [None], f"shutdown(None) raised {outcome[0]!r}"
    stopper.join(5.0)
    assert closed_outcome(half) == "eof", "no end of stream after the graceful shutdown"
    assert srv.served.wait(5.0), "serve() did not return after shutdown(None)"

    late = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        late.settimeout(IO_TIMEOUT)
        try:
            late.connect(addr)
        except ConnectionRefusedError:
            pass  # the listener is closed: what is expected
        else:
            with contextlib.suppress(OSError):
                late.sendall(frame(b"too late"))
            result = closed_outcome(late)
            assert result in ("eof", "reset"), f"a connection after shutdown got {result}"
    finally:
        late.close()


# --------------------------------------------------------------------------- max_connections

LIMIT = 100
CROWD = 300


class Clients:
    """Plain client sockets, each sending one frame and waiting for its echo, driven from
    one thread with a selector."""

    def __init__(self, addr: Any, n: int) -> None:
        self.socks: list[socket.socket | None] = []
        self.want: dict[int, bytes] = {}
        self.got: dict[int, bytearray] = {}
        self.answered: list[int] = []  # in order of arrival
        self.errors: list[str] = []
        self.sel = selectors.DefaultSelector()
        for i in range(n):
            s = socket.create_connection(addr, timeout=IO_TIMEOUT)  # the backlog takes it
            self.socks.append(s)
            self.want[i] = frame(b"client %d" % i)
            self.got[i] = bytearray()
            s.sendall(self.want[i])
            self.sel.register(s, selectors.EVENT_READ, i)

    def poll(self, timeout: float) -> int:
        """Take what arrived within ``timeout``; returns how many answers completed."""
        done = 0
        for key, _ in self.sel.select(timeout):
            i = key.data
            s = self.socks[i]
            assert s is not None
            try:
                chunk = s.recv(4096)
            except OSError as exc:
                self.sel.unregister(s)
                self.errors.append(f"client {i}: {exc!r}")
                continue
            self.got[i] += chunk
            if not chunk or len(self.got[i]) >= len(self.want[i]):
                self.sel.unregister(s)
                if bytes(self.got[i]) == self.want[i]:
                    self.answered.append(i)
                    done += 1
                else:
                    self.errors.append(f"client {i}: got {bytes(self.got[i])!r}")
        return done

    def close(self, i: int) -> None:
        s = self.socks[i]
        if s is not None:
            self.socks[i] = None
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(s)
            s.close()

    def close_all(self) -> None:
        for i in range(len(self.socks)):
            self.close(i)
        self.sel.close()


@pytest.mark.timeout(90)
def test_max_connections_limits_open_connections(serve: ServeFactory) -> None:
    """``EventLoop(max_connections=100)``: 300 clients connect at once and each sends a
    request, keeping its connection open after the answer. ``stats().connections_open``
    (sampled every few ms from a thread) never exceeds 100; exactly 100 are answered while
    all are held open; the process spends under 0.5 s of CPU in a 1 s window while 100
    are open and 200 wait in the backlog (nothing spins while paused). Closing answered
    clients in turn lets the others in: all 300 are answered, and
    ``stats().connection_limit_pauses`` is > 0."""
    raise_nofile_limit(4 * CROWD + 200)
    listener = netpoll.create_listener("tcp", "127.0.0.1:0", backlog=2 * CROWD)
    try:
        srv = serve(frame_echo_handler, listener=listener, max_connections=LIMIT)
    except BaseException:
        listener.close()
        raise
    loop = srv.loop
    peak = [0]
    stop = threading.Event()
    sampler_errors: list[BaseException] = []

    def sample() -> None:
        try:
            for _ in range(200_000):  # bounded: 200,000 samples at 2 ms is far past the test
                if stop.wait(0.002):
                    return
                peak[0] = max(peak[0], loop.stats().connections_open)
        except BaseException as exc:
            sampler_errors.append(exc)

    sampler = threading.Thread(target=sample, name="open-sampler", daemon=True)
    sampler.start()
    clients: Clients | None = None
    try:
        clients = Clients(srv.addr, CROWD)
        deadline = time.monotonic() + 20
        while len(clients.answered) < LIMIT and time.monotonic() < deadline:
            clients.poll(0.5)
        assert len(clients.answered) >= LIMIT, (
            f"only {len(clients.answered)} answered with {LIMIT} allowed open"
        )
        # Everybody idle: 100 connections open and answered, 200 in the backlog.
        idle = threading.Event()  # never set: a bounded wait
        cpu0 = time.process_time()
        idle.wait(1.0)
        cpu = time.process_time() - cpu0
        clients.poll(0.0)
        held = len(clients.answered)
        assert held == LIMIT, f"{held} clients answered while all were held open (limit {LIMIT})"
        assert cpu < 0.5, f"{cpu:.2f}s of CPU in 1 s while paused at the limit"

        # Close answered clients in turn (25 at a time); the waiting ones get in.
        closed = 0
        deadline = time.monotonic() + 40
        for _ in range(1000):
            if len(clients.answered) == CROWD or time.monotonic() > deadline:
                break
            for i in clients.answered[closed : closed + 25]:
                clients.close(i)
            closed = min(closed + 25, len(clients.answered))
            before = len(clients.answered)

            def progressed(c: Clients = clients, before: int = before) -> bool:
                c.poll(0.05)
                return len(c.answered) > before

            wait_until(progressed, 5.0)
        assert not clients.errors, clients.errors[:3]
        assert len(clients.answered) == CROWD, (
            f"only {len(clients.answered)} of {CROWD} clients were ever answered"
        )
        clients.close_all()
        assert wait_until(lambda: loop.stats().connections_open == 0, 10.0)
    finally:
        stop.set()
        sampler.join(5.0)
        if clients is not None:
            clients.close_all()
    assert not sampler_errors, sampler_errors
    assert peak[0] <= LIMIT, f"{peak[0]} connections open at once (limit {LIMIT})"
    pauses = loop.stats().connection_limit_pauses
    assert isinstance(pauses, int) and pauses > 0, f"connection_limit_pauses = {pauses!r}"


# --------------------------------------------------------------------------- close_write


@pytest.mark.timeout(30)
def test_close_write_on_a_dialed_connection_keeps_reading(serve: ServeFactory) -> None:
    """A dialed connection writes 200 KiB and calls ``close_write()`` (which flushes): it
    still reads the whole echo; the server saw the client's end of stream after the data
    (on_disconnect), and closing its side then ends the client's stream."""
    disconnected = threading.Event()

    def on_disconnect(ctx: Any, conn: netpoll.Connection) -> None:
        disconnected.set()

    srv = serve(echo_handler, on_disconnect=on_disconnect)
    conn = srv.dial()
    conn.set_read_timeout(IO_TIMEOUT)
    data = bytes(range(256)) * 800
    conn.write_binary(data)
    conn.close_write()
    assert conn_read_exact(conn, len(data)) == data
    assert disconnected.wait(IO_TIMEOUT), "the server never saw the client's end of stream"
    assert conn.read() == b"", "the server's close did not end the client's stream"
    conn.close()


@pytest.mark.timeout(30)
def test_close_write_in_a_handler_half_closes(serve: ServeFactory) -> None:
    """A handler writes a response and calls ``conn.close_write()``: a plain client reads
    the response and then EOF, and can still send bytes, which the handler receives."""
    received: queue.Queue[bytes] = queue.Queue()
    errors: list[BaseException] = []

    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        data = conn.read_binary(len(conn))
        conn.release()
        try:
            if data == b"hello":
                conn.write_binary(b"response")
                conn.close_write()
            else:
                received.put(data)
        except BaseException as exc:
            errors.append(exc)
            raise

    srv = serve(handler)
    s = srv.connect()
    s.sendall(b"hello")
    try:
        reply: bytes | None = recv_exact(s, len(b"response"))
    except AssertionError:  # an early EOF: the handler failed
        reply = None
    assert not errors, errors
    assert reply == b"response"
    assert closed_outcome(s, IO_TIMEOUT) == "eof", "no EOF after the half-closed response"
    s.sendall(b"more after the server's EOF")
    got = bytearray()
    deadline = time.monotonic() + IO_TIMEOUT
    while len(got) < len(b"more after the server's EOF") and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            got += received.get(timeout=0.2)
    assert bytes(got) == b"more after the server's EOF"
    assert not errors, errors


@pytest.mark.timeout(30)
def test_writes_after_close_write_raise_connection_closed(serve: ServeFactory) -> None:
    """After ``close_write()`` a write raises ConnectionClosedError; ``close()`` still
    works (and is still idempotent)."""
    srv = serve(echo_handler)
    conn = srv.dial()
    conn.write(b"before")
    conn.set_read_timeout(IO_TIMEOUT)
    assert conn_read_exact(conn, len(b"before")) == b"before"
    conn.close_write()
    with pytest.raises(netpoll.ConnectionClosedError):
        conn.write(b"after close_write")
    with pytest.raises(netpoll.ConnectionClosedError):
        conn.write_binary(b"after close_write")
        conn.flush()
    conn.close()
    conn.close()
    assert not conn.is_active()
