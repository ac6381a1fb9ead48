"""Preemption is not blocking: a server whose threads are merely preempted does not move
its fast connections to the slow pool.

The server runs in a child process pinned to one core, shared with two processes that
spin (other tenants of a busy machine, or a container's CPU quota), while ten clients on
another core do small echo round trips; each handler does half a millisecond of CPU work.
The leader thread is then often preempted in the middle of a batch for longer than the
monitor's interval. To the monitor a leader stuck in one batch looks like a handler that
blocks, and it used to answer that by offloading every connection of the poller to the
slow pool for a second and marking the connection slow, over and over under sustained
load. A preempted leader is runnable, waiting for a core, not blocked: it should get a
follower promoted (so others are served when a core frees up) and nothing more. The
handler answers with the name of the thread it ran on, which is how the test sees where
each request ran.
"""

from __future__ import annotations

import os
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

from ._harness import record

CLIENTS = 10
HOGS = 2  # spinning processes sharing the server's core
LOAD_S = 4.0  # seconds of round trips under contention
OFF_BOUND = 0.05  # at most this share of the requests may run off the poller
STICK_BOUND = 1.5  # seconds a connection may stay off the poller (marks expire after 1 s)
PACE_S = 0.002  # between a client's round trips (keeps the two cores from saturating)
IO_TIMEOUT = 10.0

SERVER = textwrap.dedent(
    """
    import sys, threading, time
    import netpoll

    def handler(ctx, conn):
        data = conn.next(len(conn)).tobytes()
        t = time.perf_counter()
        while time.perf_counter() - t < 0.0005:  # a little CPU work: a freeze lands in runs
            pass
        name = threading.current_thread().name.encode()
        conn.write_binary(data + b" " + name + b"\\n")
        conn.flush()
        conn.release()

    netpoll.configure(poller_num=1)
    loop = netpoll.EventLoop(handler)
    listener = netpoll.create_listener("tcp", "127.0.0.1:0")
    threading.Thread(target=loop.serve, args=(listener,), daemon=True).start()
    loop.wait_serving(10)
    print(listener.addr[1], flush=True)
    sys.stdin.read()
    """
)


class Client(threading.Thread):
    """Round trips until told to stop; records (time, thread name) of every reply."""

    def __init__(self, port: int, i: int, stop: threading.Event) -> None:
        super().__init__(name=f"preempt-client-{i}", daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.i = i
        self.stop = stop
        self.replies: list[tuple[float, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        pace = threading.Event()  # never set: paces the loop
        n = 0
        buf = b""
        try:
            while not self.stop.is_set():
                msg = b"c%d.%d" % (self.i, n)
                self.sock.sendall(msg)
                while b"\n" not in buf:
                    chunk = self.sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("server closed")
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                echoed, _, thread = line.partition(b" ")
                if echoed != msg:
                    raise AssertionError(f"sent {msg!r}, got {line!r}")
                self.replies.append((time.monotonic(), thread.decode()))
                n += 1
                pace.wait(PACE_S)
        except BaseException as exc:
            self.error = exc
        finally:
            self.sock.close()


HOG = "while True: pass\n"


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two usable cores to pin the server and its clients apart",
)
@pytest.mark.timeout(60)
def test_preempted_server_keeps_fast_connections_on_the_poller(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[1]
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    env = dict(os.environ)
    package_root = Path(netpoll.__file__).resolve().parent.parent  # the netpoll under test
    env["PYTHONPATH"] = os.pathsep.join([str(package_root), *filter(None, [env.get("PYTHONPATH")])])
    procs: list[subprocess.Popen[Any]] = []
    stop = threading.Event()
    clients: list[Client] = []
    own = os.sched_getaffinity(0)
    try:
        server = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(server)
        os.sched_setaffinity(server.pid, {server_core})  # its threads start after this
        assert server.stdout is not None
        port = int(server.stdout.readline())
        for _ in range(HOGS):
            hog = subprocess.Popen([sys.executable, "-c", HOG])
            procs.append(hog)
            os.sched_setaffinity(hog.pid, {server_core})
        os.sched_setaffinity(0, {client_core})  # the clients' threads inherit it
        clients = [Client(port, i, stop) for i in range(CLIENTS)]
        for c in clients:
            c.start()
        threading.Event().wait(LOAD_S)  # not synchronisation: the length of the load
        stop.set()
        for c in clients:
            c.join(IO_TIMEOUT)
    finally:
        os.sched_setaffinity(0, own)
        stop.set()
        for proc in procs:
            proc.kill()
            proc.wait(10)

    errors = [f"client {c.i}: {c.error!r}" for c in clients if c.error is not None]
    assert not errors, errors
    replies = sorted(r for c in clients for r in c.replies)
    off = [r for r in replies if not r[1].startswith("netpoll-poller")]
    # The longest a connection stayed off the poller: from the first reply of a streak run
    # elsewhere to the next reply run on the poller.
    longest = 0.0
    for c in clients:
        since: float | None = None
        for t, name in c.replies:
            if not name.startswith("netpoll-poller"):
                if since is None:
                    since = t
            elif since is not None:
                longest = max(longest, t - since)
                since = None
        if since is not None:  # never came back before the end
            longest = max(longest, c.replies[-1][0] - since)
    figures: dict[str, Any] = {
        "clients": CLIENTS,
        "hogs_on_the_server_core": HOGS,
        "replies": len(replies),
        "replies_off_the_poller": len(off),
        "longest_off_the_poller_s": round(longest, 2),
    }
    record("preemption", figures)
    print(figures)
    assert len(replies) >= 10 * CLIENTS, f"the clients made too little progress: {figures}"
    assert len(off) <= OFF_BOUND * len(replies), f"preemption sent requests to the pool: {figures}"
    assert longest <= STICK_BOUND, f"a connection stayed off the poller too long: {figures}"
