"""Edge cases of ``netpoll.LinkBuffer`` and the exception hierarchy (API.md: Errors, buffers)."""

from __future__ import annotations

import ctypes
import gc
import random
import re
import tracemalloc

import pytest

import netpoll


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _filled(data: bytes, size: int | None = None, chunk: int | None = None) -> netpoll.LinkBuffer:
    """A buffer whose readable data is ``data``, written in chunks of ``chunk`` bytes."""
    lb = netpoll.LinkBuffer() if size is None else netpoll.LinkBuffer(size)
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        lb.write_binary(data[i : i + step])
    lb.flush()
    assert len(lb) == len(data)
    return lb


def _drain(lb: netpoll.LinkBuffer) -> bytes:
    out = lb.read_binary(len(lb))
    lb.release()
    return out


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "bases"),
    [
        ("NetpollError", (Exception,)),
        ("ConnectionClosedError", ("NetpollError", ConnectionError)),
        ("PeerClosedError", ("ConnectionClosedError", EOFError, "NetpollError", ConnectionError)),
        ("ReadTimeoutError", ("NetpollError", TimeoutError)),
        ("WriteTimeoutError", ("NetpollError", TimeoutError)),
        ("DialTimeoutError", ("NetpollError", TimeoutError)),
        ("InsufficientDataError", ("NetpollError", ValueError)),
    ],
)
def test_exception_hierarchy(name: str, bases: tuple) -> None:
    cls = getattr(netpoll, name)
    assert isinstance(cls, type)
    assert issubclass(cls, Exception)
    for base in bases:
        base_cls = getattr(netpoll, base) if isinstance(base, str) else base
        assert issubclass(cls, base_cls), f"{name} must subclass {base_cls.__name__}"


def test_timeout_errors_are_distinct() -> None:
    names = ["ReadTimeoutError", "WriteTimeoutError", "DialTimeoutError"]
    classes = [getattr(netpoll, n) for n in names]
    for a in classes:
        for b in classes:
            if a is not b:
                assert not issubclass(a, b)
    assert not issubclass(netpoll.InsufficientDataError, ConnectionError)
    assert not issubclass(netpoll.ConnectionClosedError, EOFError)


# --------------------------------------------------------------------------- empty / zero


READ_CALLS = {
    "next": lambda lb: lb.next(1),
    "peek": lambda lb: lb.peek(1),
    "skip": lambda lb: lb.skip(1),
    "until_int": lambda lb: lb.until(10),
    "until_bytes": lambda lb: lb.until(b"\n"),
    "read_line": lambda lb: lb.read_line(),
    "read_string": lambda lb: lb.read_string(1),
    "read_binary": lambda lb: lb.read_binary(1),
    "read_byte": lambda lb: lb.read_byte(),
    "slice": lambda lb: lb.slice(1),
}


@pytest.mark.parametrize("op", sorted(READ_CALLS))
def test_empty_buffer_reads_raise_insufficient(op: str) -> None:
    lb = netpoll.LinkBuffer()
    assert len(lb) == 0
    assert lb.len() == 0
    assert lb.is_empty()
    with pytest.raises(netpoll.InsufficientDataError) as info:
        READ_CALLS[op](lb)
    assert isinstance(info.value, ValueError)
    assert len(lb) == 0
    assert lb.is_empty()


def test_empty_buffer_get_bytes_and_release() -> None:
    lb = netpoll.LinkBuffer()
    assert sum(v.nbytes for v in lb.get_bytes()) == 0
    lb.release()
    assert lb.malloc_len() == 0
    lb.flush()
    assert lb.is_empty()


@pytest.mark.parametrize("initial", [b"", b"abc"])
def test_zero_sizes(initial: bytes) -> None:
    lb = _filled(initial)
    view = lb.next(0)
    assert isinstance(view, memoryview)
    assert view.nbytes == 0
    assert lb.peek(0).nbytes == 0
    lb.skip(0)
    assert lb.read_binary(0) == b""
    assert lb.read_string(0) == ""
    sliced = lb.slice(0)
    assert len(sliced) == 0
    assert len(lb) == len(initial)
    assert lb.malloc(0).nbytes == 0
    assert lb.write_binary(b"") == 0
    assert lb.write_string("") == 0
    assert lb.malloc_len() == 0
    lb.flush()
    assert lb.read_binary(len(initial)) == initial


# --------------------------------------------------------------------------- bad arguments


NEGATIVE_CALLS = [
    ("next", lambda lb: lb.next(-1), "n"),
    ("peek", lambda lb: lb.peek(-1), "n"),
    ("skip", lambda lb: lb.skip(-1), "n"),
    ("read_string", lambda lb: lb.read_string(-1), "n"),
    ("read_binary", lambda lb: lb.read_binary(-1), "n"),
    ("slice", lambda lb: lb.slice(-1), "n"),
    ("malloc", lambda lb: lb.malloc(-1), "n"),
    ("malloc_ack", lambda lb: lb.malloc_ack(-1), "n"),
]


@pytest.mark.parametrize(("op", "call", "arg"), NEGATIVE_CALLS, ids=[c[0] for c in NEGATIVE_CALLS])
def test_negative_sizes_raise_value_error_naming_argument(op, call, arg) -> None:
    lb = _filled(b"0123456789")
    lb.write_binary(b"pending")
    with pytest.raises(ValueError) as info:
        call(lb)
    assert re.search(rf"\b{arg}\b", str(info.value)), (
        f"{op}: message {str(info.value)!r} does not name the argument {arg!r}"
    )
    assert len(lb) == 10
    assert lb.malloc_len() == 7
    lb.flush()
    assert lb.read_binary(17) == b"0123456789pending"


def test_write_direct_negative_remain_cap() -> None:
    lb = netpoll.LinkBuffer()
    view = lb.malloc(4)
    view[:] = b"abcd"
    with pytest.raises(ValueError) as info:
        lb.write_direct(b"xy", -1)
    assert re.search(r"\bremain_cap\b", str(info.value)), str(info.value)
    assert lb.malloc_len() == 4


def test_write_direct_remain_cap_past_malloc_region() -> None:
    lb = netpoll.LinkBuffer()
    view = lb.malloc(4)
    view[:] = b"abcd"
    with pytest.raises(ValueError) as info:
        lb.write_direct(b"xy", 5)
    assert re.search(r"\bremain_cap\b", str(info.value)), str(info.value)
    assert lb.malloc_len() == 4
    lb.flush()
    assert lb.read_binary(4) == b"abcd"


def test_linkbuffer_negative_size() -> None:
    with pytest.raises(ValueError) as info:
        netpoll.LinkBuffer(-1)
    assert re.search(r"\bsize\b", str(info.value)), str(info.value)


def test_malloc_ack_past_allocation_raises() -> None:
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"abc")
    view = lb.malloc(5)
    view[:] = b"defgh"
    with pytest.raises(ValueError) as info:
        lb.malloc_ack(9)
    assert re.search(r"\bn\b", str(info.value)), str(info.value)
    assert lb.malloc_len() == 8
    lb.flush()
    assert lb.read_binary(8) == b"abcdefgh"


TYPE_ERROR_CALLS = {
    "next_str": lambda lb: lb.next("1"),
    "next_float": lambda lb: lb.next(1.0),
    "next_none": lambda lb: lb.next(None),
    "peek_str": lambda lb: lb.peek("1"),
    "skip_float": lambda lb: lb.skip(1.5),
    "read_binary_str": lambda lb: lb.read_binary("2"),
    "read_string_float": lambda lb: lb.read_string(2.0),
    "slice_str": lambda lb: lb.slice("1"),
    "until_str": lambda lb: lb.until("\n"),
    "until_none": lambda lb: lb.until(None),
    "malloc_str": lambda lb: lb.malloc("3"),
    "malloc_float": lambda lb: lb.malloc(3.0),
    "malloc_ack_str": lambda lb: lb.malloc_ack("0"),
    "write_binary_str": lambda lb: lb.write_binary("text"),
    "write_binary_int": lambda lb: lb.write_binary(5),
    "write_binary_none": lambda lb: lb.write_binary(None),
    "write_string_bytes": lambda lb: lb.write_string(b"bytes"),
    "write_string_int": lambda lb: lb.write_string(5),
    "write_byte_str": lambda lb: lb.write_byte("a"),
    "write_byte_float": lambda lb: lb.write_byte(1.0),
    "append_object": lambda lb: lb.append(object()),
    "append_int": lambda lb: lb.append(42),
}


@pytest.mark.parametrize("op", sorted(TYPE_ERROR_CALLS))
def test_wrong_types_raise_type_error(op: str) -> None:
    lb = _filled(b"line one\nline two\n")
    with pytest.raises(TypeError):
        TYPE_ERROR_CALLS[op](lb)
    assert len(lb) == 18
    assert lb.malloc_len() == 0


def test_write_direct_wrong_type() -> None:
    lb = netpoll.LinkBuffer()
    view = lb.malloc(4)
    view[:] = b"abcd"
    with pytest.raises(TypeError):
        lb.write_direct("text", 0)
    with pytest.raises(TypeError):
        lb.write_direct(b"xy", "0")


def test_linkbuffer_size_wrong_type() -> None:
    with pytest.raises(TypeError):
        netpoll.LinkBuffer("big")


@pytest.mark.parametrize("value", [256, -1, 1000])
def test_write_byte_out_of_range(value: int) -> None:
    lb = netpoll.LinkBuffer()
    with pytest.raises(ValueError):
        lb.write_byte(value)
    assert lb.malloc_len() == 0


@pytest.mark.parametrize("delim", [b"", b"ab", 256, -1])
def test_until_delimiter_must_be_one_byte(delim) -> None:
    lb = _filled(b"ab\n")
    with pytest.raises((ValueError, TypeError)):
        lb.until(delim)
    assert len(lb) == 3


# --------------------------------------------------------------------------- flush


def test_data_invisible_until_flush() -> None:
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"abc")
    lb.write_string("def")
    lb.write_byte(ord("g"))
    view = lb.malloc(3)
    view[:] = b"hij"
    assert lb.malloc_len() == 10
    assert len(lb) == 0
    assert lb.is_empty()
    assert sum(v.nbytes for v in lb.get_bytes()) == 0
    with pytest.raises(netpoll.InsufficientDataError):
        lb.next(1)
    with pytest.raises(netpoll.InsufficientDataError):
        lb.until(b"c")
    lb.flush()
    assert lb.malloc_len() == 0
    assert len(lb) == 10
    assert not lb.is_empty()
    lb.write_binary(b"later")
    assert len(lb) == 10
    assert bytes(lb.next(10)) == b"abcdefghij"
    with pytest.raises(netpoll.InsufficientDataError):
        lb.next(1)
    lb.flush()
    assert bytes(lb.next(5)) == b"later"


def test_flush_twice_and_empty_flush() -> None:
    lb = netpoll.LinkBuffer()
    lb.flush()
    lb.write_binary(b"x")
    lb.flush()
    lb.flush()
    assert len(lb) == 1
    assert lb.read_byte() == ord("x")


def test_write_return_values() -> None:
    lb = netpoll.LinkBuffer()
    assert lb.write_binary(b"abc") == 3
    assert lb.write_binary(bytearray(b"de")) == 2
    assert lb.write_binary(memoryview(b"xfgx")[1:3]) == 2
    # write_string counts bytes, as every write method does for malloc_len()
    assert lb.write_string("h\u00e9") == 3
    assert lb.write_string("\u00e9", encoding="latin-1") == 1
    assert lb.malloc_len() == 11
    lb.flush()
    assert lb.read_binary(7) == b"abcdefg"
    assert lb.read_string(3) == "h\u00e9"
    assert lb.read_string(1, encoding="latin-1") == "\u00e9"


# --------------------------------------------------------------------------- node boundaries


@pytest.mark.parametrize(("size", "chunk"), [(1, 3), (8, 5), (16, 16), (64, 100), (None, 1000)])
def test_reads_across_node_boundaries(size: int | None, chunk: int) -> None:
    data = _data(30_000, seed=size or 0)
    lb = _filled(data, size=size, chunk=chunk)
    pos = 0
    steps = [1, 7, 33, 500, 4097, 3, 9000, 1]
    for i, n in enumerate(steps):
        assert bytes(lb.peek(n)) == data[pos : pos + n]
        if i % 3 == 0:
            got = bytes(lb.next(n))
        elif i % 3 == 1:
            got = lb.read_binary(n)
        else:
            got = bytes(lb.slice(n).next(n))
        assert got == data[pos : pos + n], f"step {i} (n={n}) at offset {pos}"
        pos += n
        assert len(lb) == len(data) - pos
        if i % 2:
            lb.release()
    lb.skip(5000)
    pos += 5000
    assert b"".join(bytes(v) for v in lb.get_bytes()) == data[pos:]
    assert _drain(lb) == data[pos:]


@pytest.mark.parametrize("size", [1, 4, None])
def test_until_and_read_line_across_nodes(size: int | None) -> None:
    lines = [b"a" * 10, b"", b"b" * 3000, b"c\r", b"d" * 5]
    data = b"".join(line + b"\r\n" for line in lines) + b"tail"
    lb = _filled(data, size=size, chunk=7)
    for line in lines:
        got = lb.read_line()
        assert isinstance(got, memoryview)
        assert bytes(got) == line
    with pytest.raises(netpoll.InsufficientDataError):
        lb.read_line()
    assert len(lb) == 4
    lb.write_binary(b";rest")
    lb.flush()
    assert bytes(lb.until(b";")) == b"tail;"
    assert bytes(lb.until(ord("t"))) == b"rest"
    assert lb.is_empty()


def test_read_line_variants() -> None:
    lb = _filled(b"plain\nwin\r\n\n\r\nx\r\r\nlone\r")
    assert bytes(lb.read_line()) == b"plain"
    assert bytes(lb.read_line()) == b"win"
    assert bytes(lb.read_line()) == b""
    assert bytes(lb.read_line()) == b""
    assert bytes(lb.read_line()) == b"x\r"
    with pytest.raises(netpoll.InsufficientDataError):
        lb.read_line()
    assert lb.read_binary(len(lb)) == b"lone\r"


def test_until_with_and_without_delimiter() -> None:
    lb = _filled(b"key=value;other")
    lb.write_binary(b"!")  # not flushed: until must not see it
    assert bytes(lb.until(ord("="))) == b"key="
    assert bytes(lb.until(b";")) == b"value;"
    for delim in (b";", ord("!"), b"\n"):
        with pytest.raises(netpoll.InsufficientDataError):
            lb.until(delim)
        assert len(lb) == 5
    assert bytes(lb.peek(5)) == b"other"
    lb.flush()
    assert bytes(lb.until(b"!")) == b"other!"


def test_failed_reads_consume_nothing() -> None:
    data = _data(5000, seed=3)
    lb = _filled(data, size=64, chunk=100)
    lb.next(10)
    for call in (
        lambda: lb.next(4991),
        lambda: lb.peek(4991),
        lambda: lb.skip(4991),
        lambda: lb.read_binary(4991),
        lambda: lb.read_string(4991, encoding="latin-1"),
        lambda: lb.slice(4991),
    ):
        with pytest.raises(netpoll.InsufficientDataError):
            call()
        assert len(lb) == 4990
    assert lb.read_binary(4990) == data[10:]


def test_read_byte_and_read_string() -> None:
    lb = _filled("\u00fcber\u00b7".encode() + b"\xff")
    assert lb.read_string(5) == "\u00fcber"
    assert lb.read_string(2, encoding="utf-8") == "\u00b7"
    assert lb.read_byte() == 0xFF
    with pytest.raises(netpoll.InsufficientDataError):
        lb.read_byte()


# --------------------------------------------------------------------------- zero copy, views


def test_single_node_read_is_zero_copy_view() -> None:
    lb = netpoll.LinkBuffer()
    region = lb.malloc(100)
    assert isinstance(region, memoryview)
    content = _data(100, seed=7)
    region[:] = content
    block = region.obj
    lb.flush()
    with pytest.raises(ValueError):
        region[0] = 1  # a malloc view dies at flush: writes past it cannot reach the data
    view = lb.next(10)
    assert isinstance(view, memoryview)
    assert bytes(view) == content[:10]
    peeked = lb.peek(20)
    assert isinstance(peeked, memoryview)
    assert bytes(peeked) == content[10:30]
    # a zero-copy view reads the same memory that malloc() handed out
    assert view.obj is block, "next() inside one node copied the data"
    assert peeked.obj is block, "peek() inside one node copied the data"
    sliced = lb.slice(30)
    part = sliced.next(30)
    assert bytes(part) == content[10:40]
    assert part.obj is block, "slice() copied the data"


def test_large_write_binary_round_trip() -> None:
    big = _data(1 << 20, seed=11)
    lb = netpoll.LinkBuffer()
    assert lb.write_binary(big) == len(big)
    lb.write_binary(b"end")
    lb.flush()
    assert len(lb) == len(big) + 3
    assert bytes(lb.next(len(big))) == big
    assert bytes(lb.next(3)) == b"end"


def test_read_binary_returns_bytes_that_survive_release() -> None:
    lb = netpoll.LinkBuffer(64)
    data = _data(300, seed=1)
    lb.write_binary(data)
    lb.flush()
    kept = [lb.read_binary(10), lb.read_binary(200)]
    assert all(type(k) is bytes for k in kept)
    lb.release()
    for i in range(50):
        lb.write_binary(bytes([i]) * 300)
        lb.flush()
        lb.next(len(lb))
        lb.release()
    assert kept == [data[:10], data[10:210]]


READ_VIEW_CALLS = {
    "next_in_node": (b"0123456789", lambda lb: lb.next(4)),
    "next_cross_node": (b"0123456789" * 40, lambda lb: lb.next(300)),
    "until": (b"abc;def", lambda lb: lb.until(b";")),
    "until_cross_node": (b"x" * 300 + b";", lambda lb: lb.until(ord(";"))),
    "read_line": (b"line\nrest", lambda lb: lb.read_line()),
}


@pytest.mark.parametrize("op", sorted(READ_VIEW_CALLS))
def test_views_dead_after_release(op: str) -> None:
    data, call = READ_VIEW_CALLS[op]
    lb = _filled(data, size=16, chunk=16)
    view = call(lb)
    assert view.nbytes > 0
    before = bytes(view)
    lb.release()
    with pytest.raises(ValueError):
        bytes(view)
    with pytest.raises(ValueError):
        view[0]
    # reuse the buffer heavily; the old view must never show the new bytes
    for _ in range(20):
        lb.write_binary(b"\xee" * 64)
        lb.flush()
        lb.next(len(lb))
        lb.release()
    with pytest.raises(ValueError):
        bytes(view)
    assert before == data[: len(before)]


DERIVE = {
    "slice": lambda v: v[1:-1],
    "memoryview": memoryview,
    "cast": lambda v: v.cast("c"),
    "ctypes": lambda v: (ctypes.c_char * len(v)).from_buffer(v),
}


@pytest.mark.parametrize("how", sorted(DERIVE))
@pytest.mark.parametrize("op", sorted(READ_VIEW_CALLS))
def test_views_derived_from_a_released_view_never_show_reused_memory(op: str, how: str) -> None:
    """release() revokes the views it handed out; one a reader derived from them (a slice,
    memoryview(v), a ctypes array) cannot be revoked, so its memory must not be reused
    while it lives."""
    data, call = READ_VIEW_CALLS[op]
    lb = _filled(data, size=16, chunk=16)
    view = call(lb)
    derived = DERIVE[how](view)
    expected = bytes(derived)
    lb.skip(len(lb))  # drained: every block of the buffer is up for reuse
    lb.release()
    for _ in range(50):  # other buffers take the pooled blocks and overwrite them
        other = netpoll.LinkBuffer(16)
        other.write_binary(b"\xee" * 300)
        other.flush()
        other.next(len(other))
        other.release()
        lb.write_binary(b"\xdd" * 300)
        lb.flush()
        lb.skip(len(lb))
        lb.release()
    assert bytes(derived) == expected
    del derived  # once it is gone the blocks may be pooled again; nothing breaks
    gc.collect()
    lb.write_binary(b"x" * 10)
    lb.flush()
    assert bytes(lb.next(10)) == b"x" * 10


def test_views_dead_after_slice_releases_consumed() -> None:
    lb = _filled(b"head" + b"body" * 10, size=8, chunk=8)
    view = lb.next(4)
    assert bytes(view) == b"head"
    sliced = lb.slice(8)
    with pytest.raises(ValueError):
        bytes(view)
    assert bytes(sliced.next(8)) == b"bodybody"


def test_views_dead_after_close() -> None:
    lb = _filled(b"abcdef")
    view = lb.next(3)
    lb.close()
    with pytest.raises(ValueError):
        bytes(view)


def test_views_valid_until_release() -> None:
    data = _data(2000, seed=5)
    lb = _filled(data, size=32, chunk=50)
    views = [lb.next(100) for _ in range(10)]
    # more writes and reads before release must not disturb the views
    lb.write_binary(b"\x00" * 5000)
    lb.flush()
    lb.peek(len(lb))
    for i, view in enumerate(views):
        assert bytes(view) == data[i * 100 : (i + 1) * 100]
    lb.release()


def test_malloc_view_writable_until_flush() -> None:
    lb = netpoll.LinkBuffer(16)
    early = lb.malloc(4)
    lb.write_binary(b"z" * 5000)
    lb.write_string("tail")
    early[:] = b"abcd"
    lb.flush()
    assert lb.read_binary(len(lb)) == b"abcd" + b"z" * 5000 + b"tail"


# --------------------------------------------------------------------------- slice


@pytest.mark.parametrize(("size", "skip", "n"), [(None, 0, 100), (64, 100, 2000), (8, 3, 999)])
def test_slice_survives_parent_release_and_reuse(size: int | None, skip: int, n: int) -> None:
    data = _data(3000, seed=9)
    lb = _filled(data, size=size, chunk=128)
    lb.next(skip)
    sliced = lb.slice(n)
    assert len(sliced) == n
    assert len(lb) == len(data) - skip - n
    lb.release()
    rng = random.Random(1)
    for _ in range(60):
        chunk = rng.randbytes(rng.randrange(1, 10_000))
        lb.write_binary(chunk)
        lb.flush()
        lb.next(len(lb))
        lb.release()
    expected = data[skip : skip + n]
    assert bytes(sliced.peek(n)) == expected
    first = sliced.read_binary(n // 3)
    sliced.release()
    assert first + bytes(sliced.next(n - n // 3)) == expected
    assert len(sliced) == 0
    with pytest.raises(netpoll.InsufficientDataError):
        sliced.next(1)


def test_slice_survives_parent_close() -> None:
    data = _data(1000, seed=4)
    lb = _filled(data, size=64, chunk=64)
    sliced = lb.slice(700)
    lb.close()
    junk = netpoll.LinkBuffer(64)
    for _ in range(20):
        junk.write_binary(b"\xaa" * 1000)
        junk.flush()
        junk.next(1000)
        junk.release()
    assert sliced.read_binary(700) == data[:700]


def test_slice_is_independent_of_parent_reads() -> None:
    lb = _filled(b"abcdefghij")
    sliced = lb.slice(4)
    assert bytes(lb.next(3)) == b"efg"
    assert bytes(sliced.next(2)) == b"ab"
    assert len(lb) == 3
    assert len(sliced) == 2
    assert sliced.read_byte() == ord("c")
    assert bytes(lb.next(3)) == b"hij"
    assert bytes(sliced.until(b"d")) == b"d"


# --------------------------------------------------------------------------- write_direct


def test_write_direct_placement() -> None:
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"<")
    buf = lb.malloc(10)
    lb.write_direct(b"XYZ", 4)
    assert lb.malloc_len() == 14
    buf[:6] = b"aaaaaa"
    buf[6:] = b"bbbb"
    lb.flush()
    assert lb.read_binary(14) == b"<aaaaaaXYZbbbb"


def test_write_direct_equals_malloc_write_malloc() -> None:
    payload = _data(50_000, seed=2)  # large: may be referenced, not copied
    a = netpoll.LinkBuffer(32)
    buf = a.malloc(20)
    a.write_direct(payload, 8)
    buf[:12] = b"A" * 12
    buf[12:] = b"B" * 8

    b = netpoll.LinkBuffer(32)
    b.malloc(12)[:] = b"A" * 12
    b.write_binary(payload)
    b.malloc(8)[:] = b"B" * 8

    assert a.malloc_len() == b.malloc_len() == 20 + len(payload)
    a.flush()
    b.flush()
    assert _drain(a) == _drain(b) == b"A" * 12 + payload + b"B" * 8


@pytest.mark.parametrize(("remain", "expected"), [(0, b"abcdP"), (4, b"Pabcd"), (2, b"abPcd")])
def test_write_direct_boundaries(remain: int, expected: bytes) -> None:
    lb = netpoll.LinkBuffer(8)
    lb.write_binary(b"1234567")  # the malloc region may start near a node end
    buf = lb.malloc(4)
    buf[:] = b"abcd"
    lb.write_direct(b"P", remain)
    lb.flush()
    assert lb.read_binary(7) == b"1234567"
    assert lb.read_binary(5) == expected


def test_write_direct_several_inserts() -> None:
    lb = netpoll.LinkBuffer()
    buf = lb.malloc(9)
    lb.write_direct(b"<1>", 6)
    lb.write_direct(bytearray(b"<2>"), 3)
    lb.write_direct(memoryview(b"<3>"), 0)
    buf[:] = b"aaabbbccc"
    assert lb.malloc_len() == 18
    lb.write_binary(b"!")
    lb.flush()
    assert lb.read_binary(19) == b"aaa<1>bbb<2>ccc<3>!"


def test_write_direct_after_empty_malloc() -> None:
    """malloc(0) then write_direct(p, 0) is write_binary(p) (nA = nB = 0)."""
    lb = netpoll.LinkBuffer()
    buf = lb.malloc(0)
    assert buf.nbytes == 0
    lb.write_direct(b"first", 0)
    assert lb.malloc_len() == 5
    lb.write_binary(_data(10_000, seed=13))  # a large write: the tail may be borrowed memory
    lb.malloc(0)
    lb.write_direct(b"second", 0)
    lb.flush()
    assert lb.read_binary(len(lb)) == b"first" + _data(10_000, seed=13) + b"second"


def test_write_direct_twice_at_region_end() -> None:
    """Two inserts at the end of the region (remain_cap=0 twice) both land there, in order."""
    lb = netpoll.LinkBuffer()
    buf = lb.malloc(6)
    lb.write_direct(b"<p1>", 0)
    lb.write_direct(b"<p2>", 0)
    buf[:] = b"region"
    assert lb.malloc_len() == 14
    lb.flush()
    assert lb.read_binary(14) == b"region<p1><p2>"


def test_write_direct_same_remain_cap_twice() -> None:
    lb = netpoll.LinkBuffer()
    buf = lb.malloc(6)
    lb.write_direct(b"<p1>", 3)
    lb.write_direct(b"<p2>", 3)
    buf[:] = b"abcdef"
    lb.flush()
    assert lb.read_binary(14) == b"abc<p1><p2>def"


# --------------------------------------------------------------------------- malloc_ack


def test_malloc_ack_discards_tail() -> None:
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"keep")
    buf = lb.malloc(100)
    buf[:6] = b"header"
    lb.malloc_ack(10)
    assert lb.malloc_len() == 10
    lb.write_binary(b"+more")
    assert lb.malloc_len() == 15
    lb.flush()
    assert lb.read_binary(len(lb)) == b"keepheader+more"


@pytest.mark.parametrize("size", [4, 16, None])
def test_malloc_ack_across_nodes(size: int | None) -> None:
    lb = netpoll.LinkBuffer(size)
    data = _data(3000, seed=8)
    for i in range(0, 3000, 100):
        lb.malloc(100)[:] = data[i : i + 100]
    lb.malloc(5000)
    assert lb.malloc_len() == 8000
    lb.malloc_ack(1234)
    assert lb.malloc_len() == 1234
    assert len(lb) == 0
    lb.write_binary(b"+tail")
    lb.flush()
    assert _drain(lb) == data[:1234] + b"+tail"


def test_malloc_ack_zero_and_all() -> None:
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"gone")
    lb.malloc_ack(0)
    assert lb.malloc_len() == 0
    lb.write_binary(b"stay")
    lb.malloc_ack(4)
    lb.flush()
    assert lb.read_binary(len(lb)) == b"stay"


def test_malloc_ack_leaves_flushed_data_alone() -> None:
    lb = _filled(b"flushed")
    lb.write_binary(b"abc")
    lb.malloc_ack(1)
    assert len(lb) == 7
    lb.flush()
    assert lb.read_binary(8) == b"flusheda"


# --------------------------------------------------------------------------- append, get_bytes


def test_append_moves_unflushed_data() -> None:
    lb = _filled(b"readable|")
    lb.write_binary(b"mine|")
    other = netpoll.LinkBuffer(8)
    other.write_binary(b"theirs|")
    other.malloc(4)[:] = b"mal|"
    other.write_binary(_data(10_000, seed=6))
    assert other.malloc_len() == 11 + 10_000
    lb.append(other)
    assert other.malloc_len() == 0
    assert len(other) == 0
    assert lb.malloc_len() == 5 + 11 + 10_000
    assert len(lb) == 9
    lb.write_binary(b"|after")
    lb.flush()
    expected = b"readable|mine|theirs|mal|" + _data(10_000, seed=6) + b"|after"
    assert _drain(lb) == expected


def test_append_empty_writer() -> None:
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"x")
    lb.append(netpoll.LinkBuffer())
    assert lb.malloc_len() == 1
    lb.flush()
    assert lb.read_binary(1) == b"x"


@pytest.mark.parametrize("size", [1, 16, None])
def test_get_bytes_sums_to_len(size: int | None) -> None:
    data = _data(20_000, seed=12)
    lb = _filled(data, size=size, chunk=333)
    lb.write_binary(b"unflushed")
    views = lb.get_bytes()
    assert isinstance(views, list)
    assert all(isinstance(v, memoryview) for v in views)
    assert sum(v.nbytes for v in views) == len(lb) == len(data)
    assert b"".join(bytes(v) for v in views) == data
    del views
    lb.next(777)
    lb.release()
    views = lb.get_bytes()
    assert sum(v.nbytes for v in views) == len(lb) == len(data) - 777
    assert b"".join(bytes(v) for v in views) == data[777:]


def test_get_bytes_covers_many_nodes() -> None:
    """All readable data, however many nodes hold it (here 1100 referenced writes)."""
    lb = netpoll.LinkBuffer()
    chunks = [bytes([i % 251]) * 4096 for i in range(1100)]
    for chunk in chunks:
        lb.write_binary(chunk)
    lb.flush()
    views = lb.get_bytes()
    assert sum(v.nbytes for v in views) == len(lb) == 1100 * 4096
    assert b"".join(bytes(v) for v in views) == b"".join(chunks)


def test_release_keeps_unflushed_data() -> None:
    """release() with nothing readable must not drop or recycle data still being written."""
    lb = netpoll.LinkBuffer()
    lb.write_binary(b"a" * 10)
    lb.flush()
    lb.next(10)
    lb.write_binary(b"pending")
    region = lb.malloc(3)
    lb.release()
    region[:] = b"xyz"
    other = netpoll.LinkBuffer()
    other.write_binary(b"\xee" * 200)  # would reuse a recycled block
    other.flush()
    assert lb.malloc_len() == 10
    lb.flush()
    assert lb.read_binary(10) == b"pendingxyz"
    assert other.read_binary(200) == b"\xee" * 200


def test_write_binary_source_may_change_after_flush() -> None:
    """API.md: "the caller must not mutate b until flush" -- so after flush() it may."""
    lb = netpoll.LinkBuffer()
    big = bytearray(b"A" * 50_000)
    small = bytearray(b"B" * 10)
    lb.write_binary(big)
    lb.write_binary(small)
    lb.flush()
    big[:] = b"Z" * 50_000
    small[:] = b"Z" * 10
    assert lb.read_binary(50_010) == b"A" * 50_000 + b"B" * 10


# --------------------------------------------------------------------------- close


# A closed buffer has nothing to read (reads raise InsufficientDataError, a ValueError)
# and takes no writes (ValueError); both say why.
CLOSED_READS = {
    "next": lambda lb: lb.next(1),
    "peek": lambda lb: lb.peek(1),
    "skip": lambda lb: lb.skip(1),
    "read_binary": lambda lb: lb.read_binary(1),
    "read_string": lambda lb: lb.read_string(1),
    "read_byte": lambda lb: lb.read_byte(),
    "read_line": lambda lb: lb.read_line(),
    "until": lambda lb: lb.until(b"a"),
    "slice": lambda lb: lb.slice(1),
}
CLOSED_WRITES = {
    "write_binary": lambda lb: lb.write_binary(b"x"),
    "write_string": lambda lb: lb.write_string("x"),
    "write_byte": lambda lb: lb.write_byte(1),
    "write_direct": lambda lb: lb.write_direct(b"x", 0),
    "malloc": lambda lb: lb.malloc(1),
    "malloc_ack": lambda lb: lb.malloc_ack(0),
    "append": lambda lb: lb.append(netpoll.LinkBuffer()),
    "flush": lambda lb: lb.flush(),
    "get_bytes": lambda lb: lb.get_bytes(),
}


@pytest.mark.parametrize("op", sorted(CLOSED_READS))
def test_closed_buffer_reads_raise(op: str) -> None:
    lb = _filled(b"a" * 100)
    lb.close()
    with pytest.raises(netpoll.InsufficientDataError, match=r"^LinkBuffer is closed$"):
        CLOSED_READS[op](lb)


@pytest.mark.parametrize("op", sorted(CLOSED_WRITES))
def test_closed_buffer_writes_raise(op: str) -> None:
    lb = _filled(b"a" * 100)
    lb.close()
    with pytest.raises(ValueError, match=r"^LinkBuffer is closed$"):
        CLOSED_WRITES[op](lb)


def test_close_is_idempotent() -> None:
    """A second close() is a no-op: no error, and the buffer stays closed and empty."""
    lb = _filled(b"abc")
    lb.close()
    lb.close()
    assert lb.closed
    assert len(lb) == 0 and lb.is_empty() and lb.malloc_len() == 0
    with pytest.raises(ValueError, match=r"^LinkBuffer is closed$"):
        lb.write_binary(b"x")
    with pytest.raises(netpoll.InsufficientDataError, match=r"^LinkBuffer is closed$"):
        lb.next(1)


# --------------------------------------------------------------------------- memory


def _traced_after(fn) -> int:
    fn()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("payload", "reads", "warm_cycles", "cycles"),
    [
        (b"\x5a" * 1024, (1024,), 20_000, 200_000),
        # Reads that straddle nodes (assembled copies) must be freed by release() too.
        (b"\xa5" * 1000, (700, 300), 10_000, 50_000),
    ],
    ids=["aligned", "unaligned"],
)
def test_fill_and_drain_memory_is_steady(
    payload: bytes, reads: tuple[int, ...], warm_cycles: int, cycles: int
) -> None:
    lb = netpoll.LinkBuffer()

    def run(count: int) -> None:
        for _ in range(count):
            lb.write_binary(payload)
            lb.flush()
            for n in reads:
                lb.next(n)
            lb.release()

    tracemalloc.start()
    try:
        warm = _traced_after(lambda: run(warm_cycles))
        after = _traced_after(lambda: run(cycles))
    finally:
        tracemalloc.stop()
    assert lb.is_empty()
    assert after - warm < 64 * 1024, f"memory grew by {after - warm} bytes over {cycles} cycles"
