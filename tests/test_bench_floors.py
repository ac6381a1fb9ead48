"""The reference floors (bench/reference/floors.py) answer correctly, so their figures count.

Each floor connection is driven over a real socketpair the way its epoll loop drives it;
one test runs the whole floor server on loopback.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.handlers import netpoll_handler  # noqa: E402
from bench.reference.floors import WRAP_AT, FloorConn, OwnedFloorConn, SafeFloorConn  # noqa: E402

import netpoll  # noqa: E402

FLOORS = [FloorConn, SafeFloorConn, OwnedFloorConn]


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"peer closed after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    server.setblocking(False)
    client.settimeout(5.0)
    yield client, server
    client.close()
    server.close()


@pytest.mark.parametrize("cls", FLOORS)
def test_floor_echo(cls: type, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    conn = cls(server)
    handler = netpoll_handler(netpoll, "echo")
    for i in range(50):
        msg = bytes([i]) * (1 + i * 37)
        client.sendall(msg)
        assert conn.on_readable(handler)
        assert recv_exactly(client, len(msg)) == msg


@pytest.mark.parametrize("cls", FLOORS)
def test_floor_frames_split_pipelined_and_large(
    cls: type, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A frame split across arrivals, two frames in one, and a 64 KiB frame that does not
    fit behind what is buffered (the floor waits for its rest with a blocking receive)."""
    client, server = pair
    conn = cls(server)
    handler = netpoll_handler(netpoll, "frames")
    a, b = frame(b"a" * 128), frame(b"b" * 7)
    client.sendall(a[:3])
    assert conn.on_readable(handler)  # only part of a header: nothing answered yet
    client.sendall(a[3:] + b)
    assert conn.on_readable(handler)
    assert recv_exactly(client, len(a) + len(b)) == a + b
    big = frame(bytes(range(256)) * 256)
    client.sendall(big[:1000])
    sender = threading.Thread(target=client.sendall, args=(big[1000:],))
    sender.start()
    try:
        assert conn.on_readable(handler)
    finally:
        sender.join(5.0)
    assert recv_exactly(client, len(big)) == big


@pytest.mark.parametrize("cls", [SafeFloorConn, OwnedFloorConn])
def test_safe_floors_revoke_released_views(
    cls: type, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    conn = cls(server)
    kept: list[memoryview] = []

    def handler(ctx: object, c: SafeFloorConn) -> None:
        kept.append(c.next(len(c)))
        c.release()

    client.sendall(b"hello")
    assert conn.on_readable(handler)
    with pytest.raises(ValueError):
        bytes(kept[0])
    # A view derived before the release keeps the block out of reuse: new bytes land
    # elsewhere and the derived view still shows the old ones.
    derived: list[memoryview] = []

    def keep_slice(ctx: object, c: SafeFloorConn) -> None:
        derived.append(c.next(len(c))[0:5])
        c.release()

    client.sendall(b"first")
    assert conn.on_readable(keep_slice)
    if cls is OwnedFloorConn:
        # Its memory is recycled only when the window wraps: drain past the wrap point.
        def drain(ctx: object, c: SafeFloorConn) -> None:
            c.next(len(c))
            c.release()

        rest = WRAP_AT + 1
        sender = threading.Thread(target=client.sendall, args=(b"y" * rest,))
        sender.start()
        try:
            while rest:
                before = conn.bytes_in
                assert conn.on_readable(drain)
                rest -= conn.bytes_in - before
        finally:
            sender.join(5.0)
        assert conn.r == conn.w == 0  # wrapped
    client.sendall(b"X" * 64)  # covers wherever "first" sat, were its memory reused
    assert conn.on_readable(keep_slice)
    assert bytes(derived[0]) == b"first"


@pytest.mark.parametrize("contender", ["floor-api", "floor-api-safe", "floor-api-owned"])
def test_floor_server_over_loopback(contender: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--contender", contender, "--workload", "frames", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.server", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"READY {port}"
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5.0) for _ in range(5)]
        try:
            for round_ in range(20):
                for i, c in enumerate(clients):
                    c.sendall(frame(bytes([i, round_]) * 64))
                for i, c in enumerate(clients):
                    want = frame(bytes([i, round_]) * 64)
                    assert recv_exactly(c, len(want)) == want
        finally:
            for c in clients:
                c.close()
    finally:
        proc.kill()
        proc.wait(10)
