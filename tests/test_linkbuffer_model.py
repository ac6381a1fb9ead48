"""Model-based test of ``netpoll.LinkBuffer`` against two plain ``bytearray`` objects.

The model keeps ``unflushed`` (written or allocated, not yet flushed) and ``readable``
(flushed, not yet read).  Every operation of the Reader/Writer contract in API.md is
applied to both, and every result is compared.
"""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import netpoll

NODE_SIZES = [None, 1, 7, 16, 64, 512, 4096]

# Sizes: mostly small, sometimes larger than typical nodes (up to 20 KiB).
sizes = st.one_of(
    st.integers(0, 16),
    st.integers(0, 600),
    st.integers(0, 20 * 1024),
)


def _pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


_line_parts = st.sampled_from([b"", b"abc", b"hello world", b"x\r", b"\r", b";", b"\x00\x01"])

payloads = st.one_of(
    st.binary(max_size=40),
    st.builds(_pattern, sizes, st.integers(0, 2**16)),
    st.lists(_line_parts, max_size=8).map(lambda parts: b"\n".join(parts)),
    st.lists(_line_parts, max_size=8).map(lambda parts: b"\r\n".join(parts) + b"\r\n"),
)

BYTES_KINDS = ["bytes", "bytearray", "memoryview", "memoryview_slice"]


def _as_kind(data: bytes, kind: str) -> bytes | bytearray | memoryview:
    if kind == "bytes":
        return bytes(data)
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(bytes(data))
    # a view that does not start at offset 0 of its exporter
    return memoryview(bytearray(b"<<" + data + b">>"))[2 : 2 + len(data)]


class _Region:
    """A live malloc view and, for each of its bytes, the index into ``unflushed``."""

    __slots__ = ("indices", "view")

    def __init__(self, view: memoryview, indices: list[int]) -> None:
        self.view = view
        self.indices = indices


class LinkBufferMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lb: netpoll.LinkBuffer | None = None
        self.unflushed = bytearray()
        self.readable = bytearray()
        # malloc views that may still be written into (valid until flush)
        self.regions: list[_Region] = []
        # (region, remain limit) when the tail of the unflushed data is a malloc region
        self.tail: tuple[_Region, int] | None = None
        # non-empty views returned by consuming reads since the last release
        self.consumed_views: list[tuple[str, memoryview]] = []
        # outstanding slices with the bytes they still have to return
        self.slices: list[tuple[object, bytearray]] = []

    # ------------------------------------------------------------------ helpers

    def _draw_n(self, data: st.DataObject, avail: int) -> int:
        return data.draw(
            st.one_of(
                st.integers(0, avail),
                st.just(avail),
                st.integers(avail + 1, avail + 64),
            ),
            label="n",
        )

    def _check_unchanged(self, avail: int) -> None:
        assert len(self.lb) == avail, "a failed read changed len()"
        assert self.lb.malloc_len() == len(self.unflushed), "a failed read changed malloc_len()"

    def _consume(self, n: int) -> bytes:
        out = bytes(self.readable[:n])
        del self.readable[:n]
        return out

    def _check_views_dead(self, why: str) -> None:
        for op, view in self.consumed_views:
            try:
                content = bytes(view)
            except ValueError:
                continue
            raise AssertionError(
                f"a view returned by {op}() is still readable after {why}(): {content[:32]!r}"
            )
        self.consumed_views = []

    def _written(self) -> None:
        """Something other than write_direct was appended: the tail is no malloc region."""
        self.tail = None

    # ------------------------------------------------------------------ setup

    @initialize(size=st.sampled_from(NODE_SIZES), keyword=st.booleans())
    def init(self, size: int | None, keyword: bool) -> None:
        if size is None:
            self.lb = netpoll.LinkBuffer()
        elif keyword:
            self.lb = netpoll.LinkBuffer(size=size)
        else:
            self.lb = netpoll.LinkBuffer(size)

    def teardown(self) -> None:
        if self.lb is None:
            return
        if sys.exc_info()[0] is not None:
            # a step failed: report that failure, not a consequence of it
            return
        # everything still pending must come out in order
        self.lb.flush()
        self.readable += self.unflushed
        self.unflushed.clear()
        rest = self.lb.read_binary(len(self.readable))
        assert rest == bytes(self.readable)
        assert self.lb.is_empty()
        self.lb.release()
        for reader, expected in self.slices:
            assert reader.read_binary(len(expected)) == bytes(expected)
            reader.release()
        self.slices = []
        self.lb.close()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lengths_agree(self) -> None:
        if self.lb is None:
            return
        assert len(self.lb) == len(self.readable)
        assert self.lb.len() == len(self.readable)
        assert self.lb.malloc_len() == len(self.unflushed)
        assert self.lb.is_empty() == (len(self.readable) == 0)

    # ------------------------------------------------------------------ writes

    @rule(payload=payloads, kind=st.sampled_from(BYTES_KINDS))
    def write_binary(self, payload: bytes, kind: str) -> None:
        n = self.lb.write_binary(_as_kind(payload, kind))
        assert n == len(payload)
        self.unflushed += payload
        self._written()

    @rule(text=st.text(max_size=30), encoding=st.sampled_from([None, "utf-8", "utf-16-le"]))
    def write_string(self, text: str, encoding: str | None) -> None:
        if encoding is None:
            n = self.lb.write_string(text)
            encoded = text.encode("utf-8")
        else:
            try:
                encoded = text.encode(encoding)
            except UnicodeEncodeError:  # lone surrogates
                return
            n = self.lb.write_string(text, encoding=encoding)
        if text.isascii() and encoding != "utf-16-le":
            assert n == len(encoded)
        self.unflushed += encoded
        self._written()

    @rule(value=st.integers(0, 255))
    def write_byte(self, value: int) -> None:
        self.lb.write_byte(value)
        self.unflushed.append(value)
        self._written()

    def _do_malloc(self, n: int, seed: int) -> _Region:
        view = self.lb.malloc(n)
        assert isinstance(view, memoryview)
        assert view.nbytes == n
        assert not view.readonly
        content = _pattern(n, seed)
        view[:] = content
        start = len(self.unflushed)
        self.unflushed += content
        region = _Region(view, list(range(start, start + n)))
        self.regions.append(region)
        self.tail = (region, n)
        return region

    def _do_write_direct(self, p: bytes, kind: str, remain_cap: int) -> None:
        region, limit = self.tail
        assert 0 <= remain_cap <= limit
        self.lb.write_direct(_as_kind(p, kind), remain_cap)
        pos = len(self.unflushed) - remain_cap
        self.unflushed[pos:pos] = p
        for r in self.regions:
            r.indices = [i + len(p) if i >= pos else i for i in r.indices]
        self.tail = (region, remain_cap)

    def _fill_region(self, region: _Region, start: int, content: bytes) -> None:
        region.view[start : start + len(content)] = content
        for i, byte in zip(region.indices[start : start + len(content)], content, strict=True):
            self.unflushed[i] = byte

    @rule(n=sizes, seed=st.integers(0, 2**16))
    def malloc(self, n: int, seed: int) -> None:
        self._do_malloc(n, seed)

    @rule(
        n=sizes,
        seed=st.integers(0, 2**16),
        directs=st.lists(
            st.tuples(payloads.filter(bool), st.sampled_from(BYTES_KINDS), st.floats(0, 1)),
            min_size=1,
            max_size=4,
        ),
        refill_seed=st.integers(0, 2**16),
    )
    def malloc_write_direct_fill(
        self, n: int, seed: int, directs: list[tuple[bytes, str, float]], refill_seed: int
    ) -> None:
        """Netpoll's nocopy encoding: malloc, insert payloads, then fill the region."""
        region = self._do_malloc(n, seed)
        for p, kind, frac in directs:
            _, limit = self.tail
            self._do_write_direct(p, kind, int(limit * frac))
        self._fill_region(region, 0, _pattern(n, refill_seed))

    @precondition(lambda self: any(r.view.nbytes for r in self.regions))
    @rule(data=st.data())
    def refill_malloc_view(self, data: st.DataObject) -> None:
        """A malloc view stays writable until flush, even after later writes."""
        region = data.draw(st.sampled_from([r for r in self.regions if r.view.nbytes]))
        size = region.view.nbytes
        start = data.draw(st.integers(0, size - 1), label="start")
        stop = data.draw(st.integers(start, size), label="stop")
        self._fill_region(
            region, start, data.draw(st.binary(min_size=stop - start, max_size=stop - start))
        )

    @precondition(lambda self: self.tail is not None)
    @rule(data=st.data(), p=payloads.filter(bool), kind=st.sampled_from(BYTES_KINDS))
    def write_direct(self, data: st.DataObject, p: bytes, kind: str) -> None:
        _, limit = self.tail
        remain_cap = data.draw(
            st.one_of(st.integers(0, limit), st.just(limit), st.just(0)), label="remain_cap"
        )
        self._do_write_direct(p, kind, remain_cap)

    @rule(data=st.data())
    def malloc_ack(self, data: st.DataObject) -> None:
        have = len(self.unflushed)
        n = data.draw(
            st.one_of(st.integers(0, have), st.just(have), st.integers(have + 1, have + 50)),
            label="n",
        )
        if n > have:
            with pytest.raises(ValueError):
                self.lb.malloc_ack(n)
            assert self.lb.malloc_len() == have, "a rejected malloc_ack changed malloc_len()"
            return
        self.lb.malloc_ack(n)
        del self.unflushed[n:]
        # views past the ack point are dead; do not write any malloc view after an ack
        self.regions = []
        self.tail = None

    @rule(
        size=st.sampled_from(NODE_SIZES),
        history=st.one_of(st.just(b""), payloads),
        parts=st.lists(
            st.tuples(st.sampled_from(["binary", "string", "byte", "malloc"]), payloads),
            max_size=5,
        ),
        unread=st.integers(0, 64),
    )
    def append(
        self, size: int | None, history: bytes, parts: list[tuple[str, bytes]], unread: int
    ) -> None:
        other = netpoll.LinkBuffer() if size is None else netpoll.LinkBuffer(size)
        held = None
        expected = bytearray()
        if history:
            # the source has been used: flushed, partly read (a view still held), not
            # released; what is still readable moves along, first (as in Netpoll)
            other.write_binary(history)
            other.flush()
            read = len(history) - min(unread, len(history))
            if read:
                held = other.next(read)
            expected += history[read:]
            history = history[:read]
        for op, payload in parts:
            if op == "binary":
                other.write_binary(payload)
                expected += payload
            elif op == "string":
                text = payload.decode("latin-1")
                other.write_string(text, encoding="latin-1")
                expected += payload
            elif op == "byte":
                value = payload[0] if payload else 0
                other.write_byte(value)
                expected.append(value)
            else:
                view = other.malloc(len(payload))
                view[:] = payload
                del view
                expected += payload
        assert other.malloc_len() + len(other) == len(expected)
        self.lb.append(other)
        assert other.malloc_len() == 0, "append() must leave the source writer empty"
        assert len(other) == 0
        self.unflushed += expected
        self._written()
        if held is not None:
            assert bytes(held) == history, "append() disturbed a view of the source"
            other.release()

    @rule()
    def flush(self) -> None:
        self.lb.flush()
        self.readable += self.unflushed
        self.unflushed.clear()
        self.regions = []
        self.tail = None

    # ------------------------------------------------------------------ reads

    @rule(data=st.data())
    def next(self, data: st.DataObject) -> None:
        avail = len(self.readable)
        n = self._draw_n(data, avail)
        if n > avail:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.next(n)
            self._check_unchanged(avail)
            return
        view = self.lb.next(n)
        assert isinstance(view, memoryview)
        assert view.nbytes == n
        assert bytes(view) == self._consume(n)
        if n:
            self.consumed_views.append(("next", view))

    @rule(data=st.data())
    def peek(self, data: st.DataObject) -> None:
        avail = len(self.readable)
        n = self._draw_n(data, avail)
        if n > avail:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.peek(n)
            self._check_unchanged(avail)
            return
        view = self.lb.peek(n)
        assert isinstance(view, memoryview)
        assert view.nbytes == n
        assert bytes(view) == bytes(self.readable[:n])

    @rule(data=st.data())
    def skip(self, data: st.DataObject) -> None:
        avail = len(self.readable)
        n = self._draw_n(data, avail)
        if n > avail:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.skip(n)
            self._check_unchanged(avail)
            return
        self.lb.skip(n)
        self._consume(n)

    @rule(data=st.data(), as_int=st.booleans())
    def until(self, data: st.DataObject, as_int: bool) -> None:
        if self.readable and data.draw(st.booleans(), label="present"):
            delim = self.readable[data.draw(st.integers(0, len(self.readable) - 1))]
        else:
            delim = data.draw(st.sampled_from([0, 10, 59, 255]), label="delim")
        arg = delim if as_int else bytes([delim])
        avail = len(self.readable)
        pos = self.readable.find(bytes([delim]))
        if pos < 0:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.until(arg)
            self._check_unchanged(avail)
            return
        view = self.lb.until(arg)
        assert isinstance(view, memoryview)
        assert bytes(view) == self._consume(pos + 1)
        self.consumed_views.append(("until", view))

    @rule()
    def read_line(self) -> None:
        avail = len(self.readable)
        pos = self.readable.find(b"\n")
        if pos < 0:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.read_line()
            self._check_unchanged(avail)
            return
        view = self.lb.read_line()
        assert isinstance(view, memoryview)
        line = self._consume(pos + 1)[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        assert bytes(view) == line
        if line:
            self.consumed_views.append(("read_line", view))

    @rule(data=st.data())
    def read_string(self, data: st.DataObject) -> None:
        avail = len(self.readable)
        n = self._draw_n(data, avail)
        if n > avail:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.read_string(n, encoding="latin-1")
            self._check_unchanged(avail)
            return
        chunk = bytes(self.readable[:n])
        try:
            expected = chunk.decode("utf-8")
        except UnicodeDecodeError:
            got = self.lb.read_string(n, encoding="latin-1")
            expected = chunk.decode("latin-1")
        else:
            got = self.lb.read_string(n)
        assert isinstance(got, str)
        assert got == expected
        self._consume(n)

    @rule(data=st.data())
    def read_binary(self, data: st.DataObject) -> None:
        avail = len(self.readable)
        n = self._draw_n(data, avail)
        if n > avail:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.read_binary(n)
            self._check_unchanged(avail)
            return
        got = self.lb.read_binary(n)
        assert type(got) is bytes
        assert got == self._consume(n)

    @rule()
    def read_byte(self) -> None:
        if not self.readable:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.read_byte()
            self._check_unchanged(0)
            return
        got = self.lb.read_byte()
        assert type(got) is int
        assert got == self._consume(1)[0]

    @rule(data=st.data(), keep=st.booleans())
    def slice(self, data: st.DataObject, keep: bool) -> None:
        avail = len(self.readable)
        n = self._draw_n(data, avail)
        if n > avail:
            with pytest.raises(netpoll.InsufficientDataError):
                self.lb.slice(n)
            self._check_unchanged(avail)
            return
        reader = self.lb.slice(n)
        # slice() releases what was consumed before it: those views are dead now
        self._check_views_dead("slice")
        expected = bytearray(self._consume(n))
        assert len(reader) == n
        assert reader.len() == n
        if keep and len(self.slices) < 4:
            self.slices.append((reader, expected))
        else:
            assert bytes(reader.next(n)) == bytes(expected)
            assert len(reader) == 0
            reader.release()

    @precondition(lambda self: bool(self.slices))
    @rule(data=st.data(), how=st.sampled_from(["next", "read_binary", "skip", "peek"]))
    def read_from_slice(self, data: st.DataObject, how: str) -> None:
        index = data.draw(st.integers(0, len(self.slices) - 1), label="slice")
        reader, expected = self.slices[index]
        assert len(reader) == len(expected)
        n = data.draw(st.integers(0, len(expected)), label="n")
        if how == "next":
            assert bytes(reader.next(n)) == bytes(expected[:n])
        elif how == "read_binary":
            assert reader.read_binary(n) == bytes(expected[:n])
        elif how == "skip":
            reader.skip(n)
        else:
            assert bytes(reader.peek(n)) == bytes(expected[:n])
            n = 0
        del expected[:n]
        assert len(reader) == len(expected)
        reader.release()
        if not expected:
            del self.slices[index]

    @rule()
    def release(self) -> None:
        self.lb.release()
        self._check_views_dead("release")

    @rule()
    def get_bytes(self) -> None:
        views = self.lb.get_bytes()
        assert isinstance(views, list)
        assert all(isinstance(v, memoryview) for v in views)
        assert sum(v.nbytes for v in views) == len(self.lb)
        assert b"".join(bytes(v) for v in views) == bytes(self.readable)
        del views


LinkBufferMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestLinkBufferModel = pytest.mark.timeout(120)(LinkBufferMachine.TestCase)
