"""Small contract fixes: readinto() into read-only memory, unlocked concurrent writers,
malloc() of absurd sizes, linear line reading over one large node, and delimiter search
over nodes that reference the caller's memory."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import netpoll
from conftest import IO_TIMEOUT, wait_until

# --------------------------------------------------------------------------- fixtures


class Pair:
    """A dialed netpoll connection and the plain socket accepted at the other end."""

    def __init__(self, conn: netpoll.Connection, peer: socket.socket) -> None:
        self.conn = conn
        self.peer = peer


@pytest.fixture
def pair() -> Iterator[Pair]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        lsock.settimeout(IO_TIMEOUT)
        conn = netpoll.dial_connection("tcp", lsock.getsockname(), timeout=IO_TIMEOUT)
        try:
            peer, _ = lsock.accept()
        except BaseException:
            conn.close()
            raise
    peer.settimeout(IO_TIMEOUT)
    try:
        yield Pair(conn, peer)
    finally:
        conn.close()
        peer.close()


# --------------------------------------------------------------------------- readinto

READ_ONLY_TARGETS: dict[str, Callable[[], Any]] = {
    "bytes": lambda: b"xxxx",
    "memoryview-of-bytes": lambda: memoryview(b"xxxx"),
    "readonly-view-of-bytearray": lambda: memoryview(bytearray(4)).toreadonly(),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("target", list(READ_ONLY_TARGETS))
def test_readinto_read_only_buffer_raises_and_consumes_nothing(pair: Pair, target: str) -> None:
    """``readinto`` of a read-only buffer raises TypeError at once and leaves the buffered
    bytes where they were: a proper ``readinto(bytearray)`` still gets them."""
    conn = pair.conn
    pair.peer.sendall(b"abcd")
    assert wait_until(lambda: len(conn) == 4, IO_TIMEOUT)
    conn.set_read_timeout(5.0)
    t0 = time.monotonic()
    with pytest.raises(TypeError):
        conn.readinto(READ_ONLY_TARGETS[target]())
    assert time.monotonic() - t0 < 0.5
    assert len(conn) == 4, f"readinto() of a read-only buffer consumed {4 - len(conn)} bytes"
    buf = bytearray(4)
    assert conn.readinto(buf) == 4
    assert buf == b"abcd"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("target", list(READ_ONLY_TARGETS))
def test_readinto_read_only_buffer_raises_at_once_with_nothing_buffered(
    pair: Pair, target: str
) -> None:
    """With nothing buffered and a 5 s read timeout, ``readinto`` of a read-only buffer
    raises TypeError within 0.5 s (the argument is checked before any wait), and the
    connection stays usable."""
    conn = pair.conn
    conn.set_read_timeout(5.0)
    t0 = time.monotonic()
    with pytest.raises(TypeError):
        conn.readinto(READ_ONLY_TARGETS[target]())
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5, f"readinto() of a read-only buffer waited {elapsed:.2f}s first"
    pair.peer.sendall(b"xy")
    buf = bytearray(2)
    assert conn.readinto(buf) == 2
    assert buf == b"xy"


# --------------------------------------------------------------------------- writers

WRITERS = 2
FRAMES = 2000  # per writer
SMALL = 20  # payload bytes: copied by the writer
LARGE = 20 * 1024  # payload bytes: referenced, not copied, until the flush


def frame_for(tid: int, seq: int) -> bytes:
    """One whole frame as ONE bytes object: a 4-byte length, then (tid, seq) and filler."""
    size = LARGE if seq % 3 == 0 else SMALL
    payload = struct.pack(">BI", tid, seq) + bytes([(tid * 7 + seq) & 0xFF]) * (size - 5)
    return struct.pack(">I", len(payload)) + payload


class FrameCollector:
    """A plain server socket that parses the frames of ``frame_for`` as they arrive."""

    def __init__(self, lsock: socket.socket, expected: int) -> None:
        self.lsock = lsock
        self.expected = expected
        self.frames = 0
        self.next_seq = [0] * WRITERS
        self.errors: list[str] = []
        self.trailing = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="frame-collector", daemon=True)

    def _check(self, payload: memoryview) -> None:
        if len(payload) not in (SMALL, LARGE):
            raise AssertionError(f"frame {self.frames}: payload of {len(payload)} bytes")
        tid, seq = struct.unpack(">BI", payload[:5])
        if tid >= WRITERS:
            raise AssertionError(f"frame {self.frames}: writer id {tid}")
        if seq != self.next_seq[tid]:
            raise AssertionError(
                f"frame {self.frames}: writer {tid} sequence {seq}, "
                f"expected {self.next_seq[tid]} (lost, duplicated or reordered)"
            )
        if bytes(payload) != frame_for(tid, seq)[4:]:
            raise AssertionError(f"frame {self.frames}: writer {tid} seq {seq} corrupted")
        self.next_seq[tid] += 1
        self.frames += 1

    def _run(self) -> None:
        try:
            sock, _ = self.lsock.accept()
            with sock:
                sock.settimeout(IO_TIMEOUT)
                buf = bytearray()
                off = 0
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    buf += chunk
                    view = memoryview(buf)
                    try:
                        while len(buf) - off >= 4:
                            n = int.from_bytes(view[off : off + 4], "big")
                            if n not in (SMALL, LARGE):
                                raise AssertionError(
                                    f"frame {self.frames}: length {n} (a torn write)"
                                )
                            if len(buf) - off < 4 + n:
                                break
                            self._check(view[off + 4 : off + 4 + n])
                            off += 4 + n
                    finally:
                        view.release()
                    if off > 1 << 20:
                        del buf[:off]
                        off = 0
                self.trailing = len(buf) - off
        except BaseException as exc:
            self.errors.append(repr(exc))
        finally:
            self.done.set()


@pytest.mark.timeout(90)
def test_unlocked_writers_each_call_and_flush_is_atomic() -> None:
    """Two threads write 2,000 frames each onto one dialed connection with no lock of
    their own: per frame one ``write_binary`` (the whole frame as one bytes object, 20 B
    or 20 KiB of payload, so both the copying and the referencing paths are used) and one
    ``flush()``. Every Writer call and flush must be atomic: the receiver parses exactly
    4,000 intact frames, each writer's in order with none lost or duplicated, and no
    writer raises (an AssertionError from the library included)."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        lsock.settimeout(IO_TIMEOUT)
        collector = FrameCollector(lsock, WRITERS * FRAMES)
        collector.thread.start()
        conn = netpoll.dial_connection("tcp", lsock.getsockname(), timeout=IO_TIMEOUT)
        conn.set_write_timeout(30.0)
        errors: list[str] = []
        start = threading.Barrier(WRITERS, timeout=IO_TIMEOUT)

        def writer(tid: int) -> None:
            try:
                start.wait()
                for seq in range(FRAMES):
                    conn.write_binary(frame_for(tid, seq))
                    conn.flush()
            except BaseException as exc:
                errors.append(f"writer {tid}: {exc!r}")

        threads = [
            threading.Thread(target=writer, args=(t,), name=f"writer-{t}", daemon=True)
            for t in range(WRITERS)
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            alive = [t.name for t in threads if t.is_alive()]
        finally:
            conn.close()
        assert collector.done.wait(30), "the receiver did not finish"
        collector.thread.join(5)
    assert not alive, f"writers still running: {alive}"
    assert not errors, errors[:3]
    assert not collector.errors, collector.errors[:3]
    assert collector.frames == WRITERS * FRAMES, (
        f"{collector.frames} of {WRITERS * FRAMES} frames arrived intact"
    )
    assert collector.trailing == 0, f"{collector.trailing} bytes after the last whole frame"


# --------------------------------------------------------------------------- malloc


@pytest.mark.timeout(10)
@pytest.mark.parametrize("n", [2**62, -1])
def test_linkbuffer_malloc_of_impossible_size_raises_value_error(n: int) -> None:
    """``malloc(2**62)`` and ``malloc(-1)`` raise ValueError naming the argument ``n``
    (not MemoryError from trying), and the buffer stays usable."""
    lb = netpoll.LinkBuffer()
    try:
        with pytest.raises(ValueError, match=r"\bn\b"):
            lb.malloc(n)
        assert lb.malloc_len() == 0
        lb.malloc(3)[:] = b"abc"
        lb.flush()
        assert lb.read_binary(3) == b"abc"
    finally:
        lb.close()


# --------------------------------------------------------------------------- read_line

LINE = b"0123456789abcde\n"  # 16 bytes


@pytest.mark.timeout(120)
def test_read_line_over_a_large_written_buffer_is_linear() -> None:
    """Reading a large ``write_binary`` line by line does not copy what follows each line.

    A structural check, not a speed bound: the quadratic version copied the rest of the
    referenced node at every call (the first call alone 1.4 MiB), so the peak of memory
    allocated while reading shows it at once; a search in place allocates only the
    lines' views. Python's allocations, not wall-clock time, so load cannot flake it.
    """
    size = int(1.4 * (1 << 20))
    count = size // len(LINE)
    lb = netpoll.LinkBuffer()
    try:
        lb.write_binary(LINE * count)
        lb.flush()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            for k in range(count):
                line = lb.read_line()
                if k % 64 == 0 or k == count - 1:
                    assert line == LINE[:-1], f"line {k}: {bytes(line)!r}"
                    lb.release()
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert len(lb) == 0
    finally:
        lb.close()
    assert peak < 512 << 10, (
        f"reading {count} lines allocated up to {peak} bytes at once: each read_line "
        "copies what follows the line (quadratic)"
    )


# --------------------------------------------------------------------------- caller memory

BIG = 4096  # write_binary of this many bytes or more references the caller's memory


def as_kind(data: bytes, kind: str) -> bytes | bytearray | memoryview:
    if kind == "view":
        return memoryview(data)
    if kind == "bytearray-view":
        return memoryview(bytearray(data))
    return data


# Each layout: the pieces written, in order (the delimiter "\n" somewhere after the first).
LAYOUTS: dict[str, list[bytes]] = {
    "delimiter-in-second-node": [b"a" * BIG, b"b" * (BIG - 1) + b"\n" + b"c" * 10],
    "line-starts-mid-node": [b"x\n" + b"a" * BIG, b"b" * BIG + b"\n" + b"tail"],
    "three-nodes": [b"a" * BIG, b"b" * BIG, b"c" * 7 + b"\n" + b"d" * BIG + b"\r\n"],
    "delimiter-first-byte-of-second": [b"a" * BIG, b"\n" + b"b" * BIG + b"\n"],
    "small-copied-second-node": [b"a" * BIG, b"end\n"],
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["view", "bytes", "bytearray-view"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_read_line_and_until_across_nodes_of_caller_memory(layout: str, kind: str) -> None:
    """``read_line`` and ``until`` on a LinkBuffer whose nodes reference the caller's memory
    (large ``write_binary`` of a memoryview, bytes, or a view of a bytearray) return the
    right data when the line spans nodes and the delimiter lies in a later node."""
    pieces = LAYOUTS[layout]
    data = b"".join(pieces)
    expected = data.split(b"\n")
    rest = expected.pop()  # after the last delimiter

    lb = netpoll.LinkBuffer()
    try:
        for p in pieces:
            lb.write_binary(as_kind(p, kind))
        lb.flush()
        for k, want in enumerate(expected):
            got = bytes(lb.read_line())
            assert got == want.removesuffix(b"\r"), f"line {k}: {len(got)} bytes, differs"
        assert len(lb) == len(rest)
        with pytest.raises(netpoll.InsufficientDataError):
            lb.until(b"\n")
        assert lb.read_binary(len(rest)) == rest
    finally:
        lb.close()

    lb = netpoll.LinkBuffer()
    try:
        for p in pieces:
            lb.write_binary(as_kind(p, kind))
        lb.flush()
        first = data.index(b"\n") + 1
        assert bytes(lb.until(10)) == data[:first]
        if b"\n" in data[first:]:
            second = data.index(b"\n", first) + 1
            assert bytes(lb.until(b"\n")) == data[first:second]
    finally:
        lb.close()
