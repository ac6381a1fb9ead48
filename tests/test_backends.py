"""The system layer: both readiness backends, and a connection served by a poll() poller."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from netpoll import Connection
from netpoll._poll._backend import EVENT_IN, EpollBackend, PollBackend, new_backend
from netpoll._poll._operator import FDOperator, PollEvent
from netpoll._poll._poller import Poller

pytestmark = pytest.mark.timeout(20)

BACKENDS = [PollBackend] + ([EpollBackend] if hasattr(__import__("select"), "epoll") else [])


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    b = request.param()
    yield b
    b.close()


def test_wait_reports_readable_and_times_out(backend: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        backend.register(a.fileno(), EVENT_IN)
        backend.waker.drain()
        assert [fd for fd, _ in backend.wait(0.01) if fd != backend.waker.rfd] == []
        b.send(b"x")
        events = backend.wait(5)
        assert (a.fileno(), EVENT_IN) in [(fd, ev & EVENT_IN) for fd, ev in events]
        backend.unregister(a.fileno())


def test_trigger_wakes_a_wait_in_another_thread(backend: Any) -> None:
    woke = threading.Event()

    def waiter() -> None:
        backend.wait(10)
        woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    backend.trigger()
    assert woke.wait(5)
    t.join(5)


def test_new_backend_by_name_and_bad_name() -> None:
    b = new_backend("poll")
    assert isinstance(b, PollBackend)
    b.close()
    with pytest.raises(ValueError, match="kind"):
        new_backend("kqueue-on-linux")


def test_operator_transitions(backend: Any) -> None:
    poller = Poller(900, backend)
    a, b = socket.socketpair()
    seen: list[int] = []
    got = threading.Event()

    def handler(ev: int) -> None:
        seen.append(ev)
        a.recv(100)
        got.set()

    op = FDOperator(a.fileno(), handler, poller)
    try:
        op.control(PollEvent.READABLE)
        assert op.registered
        b.send(b"ping")
        assert got.wait(5)
        op.control(PollEvent.R2RW)
        op.control(PollEvent.RW2R)
        op.control(PollEvent.DETACH)
        assert not op.registered
        op.control(PollEvent.DETACH)  # idempotent
    finally:
        poller.close()
        a.close()
        b.close()


def test_echo_through_a_poll_backend_poller() -> None:
    """A connection on a poll()-based poller receives, runs its handler and replies."""
    poller = Poller(901, PollBackend())
    a, b = socket.socketpair()

    def on_request(ctx: Any, conn: Connection) -> None:
        data = conn.next(len(conn))
        conn.write_binary(data)
        conn.flush()
        conn.release()

    conn = Connection(b, poller, on_request=on_request)
    conn.attach()
    try:
        a.settimeout(5)
        for i in range(50):
            msg = os.urandom(1 + i * 37)
            a.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += a.recv(65536)
            assert got == msg
    finally:
        conn.close()
        a.close()
        poller.close()
