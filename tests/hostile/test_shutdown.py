"""Shutdown under load: requests received before it get their replies; then refusal."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

import netpoll

from ._harness import (
    Canaries,
    LiveServer,
    LogCapture,
    connect,
    fd_count,
    frame,
    pattern,
    record,
    recv_exact,
    run_threads,
    settle_fds,
    wait_for,
)

CLIENTS = 30
REQUESTS = 60  # per client, pipelined
SEND_PACE = 0.005  # seconds between two requests of one client
SPLIT_PAUSE = 0.003  # each request goes out in two halves this far apart: handlers wait in
# next(n) for the second half, so at any moment many connections are busy
SHUTDOWN_TIMEOUT = 10.0


class Served:
    """Server side: replies flushed per connection (keyed by the client id in the frame)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.replied: dict[int, int] = {}


def make_handler(served: Served) -> Any:
    def handler(ctx: Any, conn: netpoll.Connection) -> None:
        hdr = conn.next(4)
        body = conn.next(int.from_bytes(hdr, "big"))
        head = bytes(body[:16])  # pattern(): b"<c{cid}.s{seq}>..."; canaries' may be shorter
        cid = int(head[2 : head.index(b".")]) if b"." in head else -1
        conn.write_binary(hdr)
        conn.write_binary(body)
        conn.flush()
        conn.release()
        with served.lock:
            served.replied[cid] = served.replied.get(cid, 0) + 1

    return handler


class Client:
    """Pipelines REQUESTS frames (a sender thread) while reading replies until closed."""

    def __init__(self, cid: int, addr: Any, shutdown_began: threading.Event) -> None:
        self.cid = cid
        self.requests = [frame(pattern(cid, k, 200 + 37 * k)) for k in range(REQUESTS)]
        self.sent_before_shutdown = 0  # requests wholly sent before shutdown() was called
        self.sent = 0
        self.replies = 0
        self.replies_after_shutdown_began = 0
        self.wrong: str | None = None
        self.end = ""
        self.sock = connect(addr, timeout=15)
        self._began = shutdown_began

    def send(self) -> None:
        pace = threading.Event()
        try:
            for req in self.requests:
                half = len(req) // 2
                self.sock.sendall(req[:half])
                pace.wait(SPLIT_PAUSE)
                self.sock.sendall(req[half:])
                self.sent += 1
                if not self._began.is_set():
                    self.sent_before_shutdown = self.sent
                pace.wait(SEND_PACE)
        except OSError:
            pass  # the server closed: the connection is over

    def read(self) -> None:
        for k, req in enumerate(self.requests):
            try:
                got = recv_exact(self.sock, len(req))
            except (EOFError, ConnectionResetError) as exc:
                self.end = type(exc).__name__
                return
            if got != req:
                self.wrong = f"reply {k} differs"
                return
            self.replies += 1
            if self._began.is_set():
                self.replies_after_shutdown_began += 1
        self.end = "all replies"


@pytest.mark.timeout(60)
def test_shutdown_under_load_answers_what_it_received(netpoll_log: LogCapture) -> None:
    t_start = time.monotonic()
    served = Served()
    began = threading.Event()
    srv = LiveServer(make_handler(served)).start()
    addr = srv.addr
    canaries = Canaries(addr).start()
    # once the canaries were served the poller exists; what must go: the listener and both
    # ends of every canary connection
    fds_before = fd_count() - 1 - 2 * canaries.count
    clients = [Client(100 + i, addr, began) for i in range(CLIENTS)]
    senders = [threading.Thread(target=c.send, daemon=True) for c in clients]
    for t in senders:
        t.start()

    def reader(i: int) -> None:
        clients[i].read()

    readers = threading.Thread(
        target=lambda: errors.extend(run_threads(reader, CLIENTS, timeout=40)), daemon=True
    )
    errors: list[BaseException] = []
    readers.start()
    # shut down when about a third of the requests are out
    third = wait_for(lambda: sum(c.sent for c in clients) >= CLIENTS * REQUESTS // 3, 20)
    report = canaries.stop()  # they would be closed by the shutdown like everyone else
    began.set()
    t0 = time.monotonic()
    shutdown_error: BaseException | None = None
    try:
        srv.loop.shutdown(SHUTDOWN_TIMEOUT)
    except BaseException as exc:
        shutdown_error = exc
    shutdown_s = time.monotonic() - t0
    for t in senders:
        t.join(10)
    readers.join(45)
    try:
        late = socket.create_connection(addr, timeout=2)
        late.close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    for c in clients:
        c.sock.close()
    srv.stop()
    fds_after = settle_fds(fds_before)
    stats = srv.stats()
    record(
        "shutdown-under-load",
        {
            "clients": CLIENTS,
            "requests_each": REQUESTS,
            "sent_before_shutdown": sum(c.sent_before_shutdown for c in clients),
            "sent": sum(c.sent for c in clients),
            "replied_by_server": sum(served.replied.values()),
            "replies_received": sum(c.replies for c in clients),
            "replies_after_shutdown_began": sum(c.replies_after_shutdown_began for c in clients),
            "shutdown_s": round(shutdown_s, 2),
            "duration_s": round(time.monotonic() - t_start, 2),
            "new_connection_refused": refused,
            "fds_before": fds_before,
            "fds_after": fds_after,
            "connections_open_after": stats.connections_open,
            **report.figures(),
        },
    )

    assert third, "the clients never got a third of their requests out"
    assert shutdown_error is None, repr(shutdown_error)
    assert not errors, errors[:3]
    assert not readers.is_alive()
    for c in clients:
        assert c.wrong is None, f"client {c.cid}: {c.wrong}"
        assert c.end, f"client {c.cid} never saw its connection end"
        # what the server answered arrived: no reply lost between flush and close
        assert c.replies == served.replied.get(c.cid, 0), (c.cid, c.replies, c.end)
        # every request wholly sent before shutdown() began was answered
        assert c.replies >= c.sent_before_shutdown, (
            f"client {c.cid}: {c.sent_before_shutdown} requests sent before shutdown, "
            f"{c.replies} answered ({c.end})"
        )
    assert refused, "a new connection was accepted after shutdown()"
    assert stats.connections_open == 0
    assert fds_after == fds_before
    report.check()
    assert not netpoll_log.at_least(30), netpoll_log.describe()
