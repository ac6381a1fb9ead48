"""The Reader/Writer protocols and adapters that give them to file-likes and sockets."""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ._errors import InsufficientDataError, PeerClosedError
from ._linkbuffer import (
    DEFAULT_NODE_SIZE,
    LinkBuffer,
    MemoryView,
    _check_size,
    _delim_byte,
    trim_line,
)

__all__ = [
    "ReadWriter",
    "Reader",
    "Writer",
    "new_io_reader",
    "new_io_writer",
    "new_read_writer",
    "new_reader",
    "new_writer",
]


@runtime_checkable
class Reader(Protocol):
    """Zero-copy reading: views stay valid until ``release()``."""

    def next(self, n: int) -> memoryview: ...
    def peek(self, n: int) -> memoryview: ...
    def skip(self, n: int) -> None: ...
    def until(self, delim: int | bytes) -> memoryview: ...
    def read_line(self) -> memoryview: ...
    def read_string(self, n: int, encoding: str = "utf-8") -> str: ...
    def read_binary(self, n: int) -> bytes: ...
    def read_byte(self) -> int: ...
    def slice(self, n: int) -> Reader: ...
    def release(self) -> None: ...
    def __len__(self) -> int: ...
    def len(self) -> int: ...


@runtime_checkable
class Writer(Protocol):
    """Zero-copy writing: data is submitted by ``flush()``."""

    def malloc(self, n: int) -> memoryview: ...
    def malloc_len(self) -> int: ...
    def malloc_ack(self, n: int) -> None: ...
    def write_binary(self, b: bytes | bytearray | memoryview) -> int: ...
    def write_string(self, s: str, encoding: str = "utf-8") -> int: ...
    def write_byte(self, b: int) -> None: ...
    def write_direct(self, p: bytes | bytearray | memoryview, remain_cap: int) -> None: ...
    def append(self, w: Writer) -> None: ...
    def flush(self) -> None: ...


@runtime_checkable
class ReadWriter(Reader, Writer, Protocol):
    """Both halves."""


def writer_buffer(w: object) -> LinkBuffer:
    """The LinkBuffer holding a writer's unflushed data (for zero-copy ``append``)."""
    if isinstance(w, LinkBuffer):
        return w
    spill = getattr(w, "_spill", None)
    if spill is not None:
        spill()  # a connection's pending single write joins its buffer first
    buf = getattr(w, "_wbuf", None)
    if isinstance(buf, LinkBuffer):
        return buf
    raise TypeError(f"w must be a netpoll Writer, not {type(w).__name__}")


def until_filling(buf: LinkBuffer, delim: int | bytes, more: Callable[[int], None]) -> memoryview:
    """``buf.until(delim)``, calling ``more(n)`` to get ``n`` bytes buffered until it is found.

    When ``more`` meets the end of the stream, the PeerClosedError carries what was
    buffered in ``partial``.
    """
    byte = _delim_byte(delim)
    while True:
        pos = buf._find(byte)
        if pos >= 0:
            return buf.next(pos + 1)
        try:
            more(buf._rlen + 1)
        except PeerClosedError:
            partial = buf.read_binary(buf._rlen)
            raise PeerClosedError(
                f"end of stream before delimiter {bytes([byte])!r}", partial
            ) from None


class _StreamReader:
    """A Reader that pulls from any object with ``recv_into``, ``readinto1`` or ``readinto``.

    ``readinto1`` comes before ``readinto``: a buffered file's ``readinto`` waits to fill
    the whole target, where a reader wants what has arrived.
    """

    __slots__ = ("_buf", "_eof", "_fill_into", "_src")

    def __init__(self, src: Any) -> None:
        fill = (
            getattr(src, "recv_into", None)
            or getattr(src, "readinto1", None)
            or getattr(src, "readinto", None)
        )
        if fill is None:
            raise TypeError(
                f"f must have recv_into() or readinto(), {type(src).__name__} has neither"
            )
        self._src = src
        self._fill_into = fill
        self._buf = LinkBuffer()
        self._eof = False

    def _fill(self, n: int) -> None:
        """Read from the source until ``n`` bytes are buffered; EOF raises PeerClosedError."""
        buf = self._buf
        while len(buf) < n:
            if self._eof:
                raise PeerClosedError(f"end of stream: need {n} bytes, {len(buf)} buffered")
            target = buf.recv_target(1024, max(DEFAULT_NODE_SIZE, n - len(buf)))
            got = self._fill_into(target)
            if not got:
                self._eof = True
                buf.drop_empty_tail()
            else:
                buf.commit_recv(got)

    def __len__(self) -> int:
        return len(self._buf)

    def len(self) -> int:
        return len(self._buf)

    def next(self, n: int) -> memoryview:
        self._fill(_check_size(n))
        return self._buf.next(n)

    def peek(self, n: int) -> memoryview:
        self._fill(_check_size(n))
        return self._buf.peek(n)

    def skip(self, n: int) -> None:
        self._fill(_check_size(n))
        self._buf.skip(n)

    def until(self, delim: int | bytes) -> memoryview:
        return until_filling(self._buf, delim, self._fill)

    def read_line(self) -> memoryview:
        out = trim_line(self.until(10))
        self._buf._track(out)
        return out

    def read_string(self, n: int, encoding: str = "utf-8") -> str:
        self._fill(_check_size(n))
        return self._buf.read_string(n, encoding)

    def read_binary(self, n: int) -> bytes:
        self._fill(_check_size(n))
        return self._buf.read_binary(n)

    def read_byte(self) -> int:
        self._fill(1)
        return self._buf.read_byte()

    def slice(self, n: int) -> Reader:
        self._fill(_check_size(n))
        return self._buf.slice(n)

    def release(self) -> None:
        self._buf.release()


class _StreamWriter:
    """A Writer that pushes to any object with ``send`` or ``write`` on ``flush()``."""

    __slots__ = ("_dst", "_put", "_wbuf")

    def __init__(self, dst: Any) -> None:
        put = getattr(dst, "send", None) or getattr(dst, "write", None)
        if put is None:
            raise TypeError(f"f must have send() or write(), {type(dst).__name__} has neither")
        self._dst = dst
        self._put = put
        self._wbuf = LinkBuffer()

    def malloc(self, n: int) -> memoryview:
        return self._wbuf.malloc(n)

    def malloc_len(self) -> int:
        return self._wbuf.malloc_len()

    def malloc_ack(self, n: int) -> None:
        self._wbuf.malloc_ack(n)

    def write_binary(self, b: bytes | bytearray | memoryview) -> int:
        return self._wbuf.write_binary(b)

    def write_string(self, s: str, encoding: str = "utf-8") -> int:
        return self._wbuf.write_string(s, encoding)

    def write_byte(self, b: int) -> None:
        self._wbuf.write_byte(b)

    def write_direct(self, p: bytes | bytearray | memoryview, remain_cap: int) -> None:
        self._wbuf.write_direct(p, remain_cap)

    def append(self, w: Writer) -> None:
        self._wbuf.append(writer_buffer(w))

    def flush(self) -> None:
        buf = self._wbuf
        buf._publish()  # sent before flush returns, so borrowed data needs no copy
        while len(buf):
            for view in buf.send_views():
                sent = self._put(view)
                if sent is None:
                    # A raw stream returns None when it would block; other objects whose
                    # write() returns nothing took it all.
                    n = 0 if isinstance(self._dst, io.RawIOBase) else len(view)
                else:
                    n = sent
                if n <= 0:  # nothing taken: stop rather than spin, the data stays queued
                    raise BlockingIOError(
                        errno.EAGAIN, f"{type(self._dst).__name__} took no bytes; flush again"
                    )
                buf.consume_sent(n)
                if n < len(view):
                    break
        inner_flush = getattr(self._dst, "flush", None)
        if inner_flush is not None:
            inner_flush()


class _StreamReadWriter(_StreamReader):
    """Reader and Writer over one object (a socket, a BufferedRWPair...)."""

    __slots__ = ("_writer",)

    def __init__(self, f: Any) -> None:
        super().__init__(f)
        self._writer = _StreamWriter(f)

    @property
    def _wbuf(self) -> LinkBuffer:
        return self._writer._wbuf

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def new_reader(f: Any) -> Reader:
    """A Reader over any object with ``recv_into`` (sockets) or ``readinto`` (files)."""
    return _StreamReader(f)


def new_writer(f: Any) -> Writer:
    """A Writer over any object with ``send`` (sockets) or ``write`` (files)."""
    return _StreamWriter(f)


def new_read_writer(f: Any) -> ReadWriter:
    """Reader and Writer over one object that can do both."""
    return _StreamReadWriter(f)


class _IOReader(io.RawIOBase):
    """``io.RawIOBase`` over a netpoll Reader: ``read``/``readinto`` copy out its data."""

    def __init__(self, r: Reader) -> None:
        super().__init__()
        self._r = r

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self._checkClosed()  # io.IOBase's own check
        out = MemoryView(b).cast("B")
        want = len(out)
        if want == 0:
            return 0
        r = self._r
        have = len(r)
        if have == 0:
            # Block for one byte on a connection; a plain buffer or a closed peer is EOF.
            try:
                out[0] = r.read_byte()
            except (InsufficientDataError, PeerClosedError):
                return 0
            n = 1 + min(len(r), want - 1)
            if n > 1:
                out[1:n] = r.next(n - 1)
        else:
            n = min(have, want)
            out[:n] = r.next(n)
        r.release()
        return n


class _IOWriter(io.RawIOBase):
    """``io.RawIOBase`` over a netpoll Writer: each ``write`` copies in and flushes.

    ``io.BufferedWriter`` never calls its raw stream's ``flush``, so flushing per write is
    what makes buffered output visible (as Netpoll's io adapter does).
    """

    def __init__(self, w: Writer) -> None:
        super().__init__()
        self._w = w

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._checkClosed()  # io.IOBase's own check
        # io callers may reuse b after write() returns, so take a copy.
        n = self._w.write_binary(bytes(b))
        self._w.flush()
        return n

    def flush(self) -> None:
        if not self.closed:
            self._w.flush()


def new_io_reader(r: Reader) -> io.RawIOBase:
    """An ``io.RawIOBase`` reading from a netpoll Reader."""
    if not hasattr(r, "next"):
        raise TypeError(f"r must be a netpoll Reader, not {type(r).__name__}")
    return _IOReader(r)


def new_io_writer(w: Writer) -> io.RawIOBase:
    """An ``io.RawIOBase`` writing to a netpoll Writer."""
    if not hasattr(w, "write_binary"):
        raise TypeError(f"w must be a netpoll Writer, not {type(w).__name__}")
    return _IOWriter(w)
