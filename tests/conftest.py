"""Shared fixtures for the reactor tests: servers in daemon threads, clients, global state.

Every server started through the ``serve`` fixture runs ``loop.serve(listener)`` in a
daemon thread and is stopped with ``loop.shutdown(timeout)`` at teardown; ``serve`` must
then return without an error. The process-wide configuration (pollers, load balance,
runner, logger) is restored after every test.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll

IO_TIMEOUT = 10.0  # the longest any single client socket operation may block
SHUTDOWN_TIMEOUT = 5.0


# --------------------------------------------------------------------------- the build


def _build_name() -> str:
    return "compiled" if netpoll.compiled else "pure"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say which build is under test (even with -q); with NETPOLL_EXPECT_BUILD=compiled|pure
    set, refuse to test the other one."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        where = os.path.dirname(netpoll.__file__ or "?")
        reporter.write_line(f"netpoll {netpoll.__version__}: {_build_name()} build, from {where}")
    expected = os.environ.get("NETPOLL_EXPECT_BUILD", "").strip().lower()
    if expected and expected not in ("compiled", "pure"):
        pytest.exit(f"NETPOLL_EXPECT_BUILD must be compiled or pure, not {expected!r}", 4)
    if expected and expected != _build_name():
        pytest.exit(
            f"NETPOLL_EXPECT_BUILD={expected} but the netpoll imported from "
            f"{netpoll.__file__} is the {_build_name()} build",
            3,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``pure_only`` look at interpreted internals: skipped when compiled."""
    if not netpoll.compiled:
        return
    for item in items:
        marker = item.get_closest_marker("pure_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"pure build only: {reason}"))


# --------------------------------------------------------------------------- helpers


def wait_until(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passes; returns its last truth value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return bool(pred())
        time.sleep(interval)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking socket (with its timeout); fails on EOF."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything until the peer closes (bounded by ``limit`` bytes and the socket timeout)."""
    buf = bytearray()
    while len(buf) <= limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def conn_read_exact(conn: netpoll.Connection, n: int) -> bytes:
    """Exactly ``n`` bytes from a netpoll connection, through ``read``."""
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.read(n - len(buf))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def frame(payload: bytes) -> bytes:
    """A 4-byte big-endian length prefix and the payload."""
    return len(payload).to_bytes(4, "big") + payload


def raise_nofile_limit(need: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit if ``need`` descriptors don't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < need:
        pytest.skip(f"RLIMIT_NOFILE is {soft}, the test needs {need} descriptors")


def dup_socket(conn: netpoll.Connection) -> socket.socket:
    """A socket object over a duplicate of the connection's fd (closing it is harmless)."""
    return socket.socket(fileno=os.dup(conn.fileno()))


def echo_handler(ctx: Any, conn: netpoll.Connection) -> None:
    """Echo whatever is buffered: next(len) + write_binary + flush + release."""
    n = len(conn)
    if n:
        conn.write_binary(conn.next(n))
        conn.flush()
    conn.release()


def frame_echo_handler(ctx: Any, conn: netpoll.Connection) -> None:
    """Echo one length-prefixed frame: next(4) + next(n) + write_binary + flush + release."""
    hdr = conn.next(4)
    body = conn.next(int.from_bytes(hdr, "big"))
    conn.write_binary(hdr)
    conn.write_binary(body)
    conn.flush()
    conn.release()


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- servers


class ServerHandle:
    """One EventLoop serving one listener in a daemon thread, plus the clients of a test."""

    def __init__(self, loop: netpoll.EventLoop, listener: Any, network: str) -> None:
        self.loop = loop
        self.listener = listener
        self.network = network
        self.addr = listener.addr if isinstance(listener, netpoll.Listener) else None
        if self.addr is None:
            self.addr = listener.getsockname()
        self.serve_error: BaseException | None = None
        self.served = threading.Event()  # set when serve() returned
        self.stopped = False
        self._clients: list[Any] = []
        self.thread = threading.Thread(target=self._run, name="test-serve", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.serve(self.listener)
        except BaseException as exc:  # reported at teardown
            self.serve_error = exc
        finally:
            self.served.set()

    def start(self) -> ServerHandle:
        self.thread.start()
        return self

    @property
    def family(self) -> int:
        if self.network == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if len(self.addr) == 4 else socket.AF_INET

    def connect(self, timeout: float = IO_TIMEOUT) -> socket.socket:
        """A plain blocking client socket (closed at teardown)."""
        s = socket.socket(self.family, socket.SOCK_STREAM)
        self._clients.append(s)
        s.settimeout(timeout)
        s.connect(self.addr)
        if self.network != "unix":
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def dial(self, **kwargs: Any) -> netpoll.Connection:
        """A netpoll client connection (closed at teardown)."""
        if self.network == "unix":
            conn = netpoll.dial_connection("unix", self.addr, **kwargs)
        else:
            conn = netpoll.dial_connection(self.network, self.addr[:2], **kwargs)
        self._clients.append(conn)
        return conn

    def close_clients(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Close the clients, shut the loop down and check that ``serve`` returned cleanly."""
        self.close_clients()
        if not self.stopped:
            self.stopped = True
            self.loop.shutdown(timeout)
        assert self.served.wait(timeout), "serve() did not return after shutdown()"
        try:
            self.listener.close()
        except OSError:
            pass
        if self.serve_error is not None:
            raise AssertionError(f"serve() raised {self.serve_error!r}") from self.serve_error


ServeFactory = Callable[..., ServerHandle]


@pytest.fixture(params=["tcp", "unix"])
def network(request: pytest.FixtureRequest) -> str:
    """The transport a parametrised test runs over."""
    return str(request.param)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """``serve(on_request, network="tcp", listener=None, **EventLoop kwargs) -> ServerHandle``."""
    handles: list[ServerHandle] = []

    def start(
        on_request: Callable[[Any, netpoll.Connection], Any],
        *,
        network: str = "tcp",
        listener: Any = None,
        **kwargs: Any,
    ) -> ServerHandle:
        loop = netpoll.EventLoop(on_request, **kwargs)
        if listener is None:
            if network == "unix":
                listener = netpoll.create_listener("unix", str(tmp_path / f"s{len(handles)}.sock"))
            elif network == "tcp6":
                listener = netpoll.create_listener("tcp6", "[::1]:0")
            else:
                listener = netpoll.create_listener(network, "127.0.0.1:0")
        handle = ServerHandle(loop, listener, network)
        handles.append(handle)
        return handle.start()

    yield start
    errors: list[BaseException] = []
    for h in handles:
        try:
            h.stop()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- global state


@pytest.fixture(autouse=True)
def restore_netpoll_config() -> Iterator[None]:
    """Undo configure()/set_*() calls and logger changes made by a test."""
    cfg = netpoll._config.get_config()
    saved = (
        cfg.poller_num,
        cfg.load_balance,
        cfg.runner,
        cfg.logger,
        cfg.buffer_size,
        cfg.always_no_copy_read,
    )
    log = logging.getLogger("netpoll")
    handlers, level = list(log.handlers), log.level
    try:
        yield
    finally:
        poller_num, load_balance, runner, logger, buffer_size, no_copy = saved
        netpoll.set_num_loops(poller_num)
        netpoll.set_load_balance(load_balance)
        netpoll.set_runner(runner)
        netpoll.configure(logger=logger, buffer_size=buffer_size, always_no_copy_read=no_copy)
        for h in list(log.handlers):
            if h not in handlers:
                log.removeHandler(h)
        log.setLevel(level)
