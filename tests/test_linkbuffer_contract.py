"""LinkBuffer behaviour at the edges of the contract and of Go Netpoll's semantics: failed
reads, absurd sizes, borrowed memory, stream readers, append, repeated peeks, and malloc
views that outlive their buffer."""

from __future__ import annotations

import gc
import io
import socket
import tracemalloc
from typing import Any

import pytest

import netpoll
from netpoll import LinkBuffer


def _two_node_buffer(head: bytes, tail: bytes) -> LinkBuffer:
    """A readable buffer whose data is split across two 64-byte nodes."""
    lb = LinkBuffer(64)
    lb.write_binary(head)
    lb.write_binary(tail)
    lb.flush()
    assert len(lb._nodes) == 2  # the layout the test relies on
    return lb


@pytest.mark.timeout(15)
@pytest.mark.parametrize(
    ("data", "encoding", "exc"),
    [
        (b"\xff\xfe\xfd\xfc", "utf-8", UnicodeDecodeError),
        (b"bcdef", "no-such-codec", LookupError),
    ],
)
def test_failed_read_string_consumes_nothing_in_any_layout(
    data: bytes, encoding: str, exc: type[Exception]
) -> None:
    """A read_string that fails to decode consumes nothing, whether its bytes sit in one
    node or span two."""
    whole = b"a" * 62 + data
    single = LinkBuffer()
    single.write_binary(whole)
    single.flush()
    split = _two_node_buffer(b"a" * 62, data)
    for lb in (single, split):
        with pytest.raises(exc):
            lb.read_string(len(whole), encoding)
        assert len(lb) == len(whole)
        assert lb.read_binary(len(whole)) == whole


@pytest.mark.timeout(15)
@pytest.mark.parametrize(
    "call",
    [lambda: LinkBuffer().malloc(1 << 70), lambda: LinkBuffer(1 << 70)],
    ids=["malloc", "LinkBuffer"],
)
def test_absurd_sizes_raise_value_error(call: object) -> None:
    with pytest.raises(ValueError, match="larger than any buffer"):
        call()  # type: ignore[operator]


@pytest.mark.timeout(15)
@pytest.mark.parametrize("how", ["write_binary", "write_direct"])
def test_read_only_view_of_mutable_memory_is_copied_at_flush(how: str) -> None:
    """A large payload may be referenced until flush; after it the caller may change its
    memory. A read-only view of a bytearray still changes with it, so it is copied."""
    ba = bytearray(b"A" * 5000)
    lb = LinkBuffer()
    if how == "write_binary":
        lb.write_binary(memoryview(ba).toreadonly())
        expected = b"A" * 5000
    else:
        view = lb.malloc(10)
        view[:] = b"0123456789"
        lb.write_direct(memoryview(ba).toreadonly(), 5)
        expected = b"01234" + b"A" * 5000 + b"56789"
    lb.flush()
    ba[:] = b"Z" * 5000
    assert lb.read_binary(len(expected)) == expected


@pytest.mark.timeout(15)
def test_new_reader_over_a_buffered_file_returns_what_has_arrived() -> None:
    """Over a buffered socket file, next(5) returns once 5 bytes are there, as Go's
    NewReader does, instead of waiting to fill the file's whole buffer."""
    a, b = socket.socketpair()
    try:
        b.settimeout(5)
        with b.makefile("rb") as f:
            a.sendall(b"hello")
            r = netpoll.new_reader(f)
            assert bytes(r.next(5)) == b"hello"  # a timeout here means it waited for more
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(15)
def test_append_moves_readable_and_unflushed_data() -> None:
    """API.md: after append(w), w is empty; as in Netpoll, what w held readable moves
    too, ahead of its unflushed bytes, and w's outstanding views stay valid until its
    release()."""
    target = LinkBuffer()
    w = LinkBuffer()
    w.write_binary(b"xR")
    w.flush()
    held = w.next(1)
    w.write_binary(b"U")
    target.append(w)
    assert w.malloc_len() == 0 and len(w) == 0 and w.is_empty()
    assert bytes(held) == b"x"
    w.release()
    target.flush()
    assert target.read_binary(2) == b"RU"


@pytest.mark.timeout(15)
def test_repeated_cross_node_peeks_reuse_one_block() -> None:
    """Peeking ever further from one place (a parser waiting for the rest of a header)
    extends one block instead of copying per peek, as Go's peek cache does; every view
    handed out stays right."""
    lb = LinkBuffer()
    data = bytes(range(256)) * 64  # 16 KiB over two 8 KiB nodes
    lb.write_binary(data[:8000])
    lb.write_binary(data[8000:])
    lb.flush()
    lb.skip(100)
    gc.collect()
    tracemalloc.start()
    try:
        views = [lb.peek(n) for n in range(8000, 16000, 40)]
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 100_000, f"200 peeks from one place hold {current} bytes"
    for v in views:
        assert bytes(v) == data[100 : 100 + len(v)]
    lb.skip(50)  # another place: another block, still right
    assert bytes(lb.peek(9000)) == data[150:9150]
    assert bytes(views[0][:10]) == data[100:110]
    lb.release()
    with pytest.raises(ValueError):
        bytes(views[-1])


def _buffers_of_b() -> list[LinkBuffer]:
    """Eight fresh buffers holding 16 bytes of b"B": they take whatever blocks the pool
    has, the closed buffer's included if it was (wrongly) handed back."""
    out = []
    for _ in range(8):
        b = LinkBuffer()
        b.write_binary(b"B" * 16)
        b.flush()
        out.append(b)
    return out


@pytest.mark.timeout(15)
@pytest.mark.parametrize("end", ["flush", "close"])
def test_malloc_view_dies_at_flush_and_close(end: str) -> None:
    """A malloc view is writable until the next flush; after it, or after close(), a
    write through it raises instead of landing in memory another buffer now uses."""
    a = LinkBuffer()
    stale = a.malloc(16)
    stale[:] = b"S" * 16
    if end == "flush":
        a.flush()
        assert a.read_binary(16) == b"S" * 16
        a.release()
    a.close()
    others = _buffers_of_b()
    with pytest.raises(ValueError):
        stale[:] = b"X" * 16
    for b in others:
        assert b.read_binary(16) == b"B" * 16


@pytest.mark.timeout(15)
def test_view_derived_from_a_malloc_view_keeps_its_block_out_of_the_pool() -> None:
    """A view derived from a malloc view cannot be revoked; its block must then never be
    handed to another buffer."""
    a = LinkBuffer()
    derived = a.malloc(16)[2:6]
    a.close()
    others = _buffers_of_b()
    derived[:] = b"XXXX"
    for b in others:
        assert b.read_binary(16) == b"B" * 16


@pytest.mark.timeout(15)
def test_closed_buffer_refuses_every_writer_call() -> None:
    """close(): further use raises, malloc_ack(0), get_bytes() and appending a closed
    buffer included (they used to do nothing)."""
    lb = LinkBuffer()
    lb.close()
    with pytest.raises(ValueError, match="closed"):
        lb.malloc_ack(0)
    with pytest.raises(ValueError, match="closed"):
        lb.get_bytes()
    with pytest.raises(ValueError, match="w is closed"):
        LinkBuffer().append(lb)


class _RawSink(io.RawIOBase):
    """A non-blocking raw stream: takes ``room`` bytes, then would block (None)."""

    def __init__(self, room: int, full: int | None) -> None:
        self.room = room
        self.full = full  # what write() returns when full: None (would block) or 0
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int | None:  # type: ignore[override]
        if not self.room:
            return self.full
        k = min(self.room, len(b))
        self.data += bytes(b[:k])
        self.room -= k
        return k


@pytest.mark.timeout(15)
@pytest.mark.parametrize("full", [None, 0])
def test_stream_writer_keeps_what_a_full_raw_stream_did_not_take(full: int | None) -> None:
    """new_writer over a non-blocking raw stream that is full: flush raises
    BlockingIOError instead of dropping the rest (None) or spinning (0), and the rest
    goes out on a later flush."""
    sink = _RawSink(5, full)
    w = netpoll.new_writer(sink)
    w.write_binary(b"0123456789")
    with pytest.raises(BlockingIOError):
        w.flush()
    assert bytes(sink.data) == b"01234"
    sink.room = 100
    w.flush()
    assert bytes(sink.data) == b"0123456789"
