"""Adapters: ``new_reader``/``new_writer``/``new_read_writer`` over file-likes and sockets,
``new_io_reader``/``new_io_writer`` giving ``io.RawIOBase`` objects over a LinkBuffer."""

from __future__ import annotations

import io
import random
import socket
import threading
from collections.abc import Iterator

import pytest

import netpoll

TIMEOUT = 10.0


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def sockpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class _Thread(threading.Thread):
    """A worker thread whose exception is re-raised by ``join_checked``."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def join_checked(self):
        self.join(TIMEOUT * 2)
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(1 << 16, n - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# --------------------------------------------------------------------------- new_reader


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: netpoll.new_reader(object()), "recv_into.*object has neither"),
        (lambda: netpoll.new_reader(b"bytes are not a stream"), "bytes has neither"),
        (lambda: netpoll.new_writer(object()), r"send\(\) or write\(\), object has neither"),
        (lambda: netpoll.new_read_writer(42), "int has neither"),
        (lambda: netpoll.new_io_reader(42), "r must be a netpoll Reader, not int"),
        (lambda: netpoll.new_io_writer(object()), "w must be a netpoll Writer, not object"),
    ],
    ids=["reader", "reader_bytes", "writer", "read_writer", "io_reader", "io_writer"],
)
def test_adapters_reject_wrong_types(make, words: str) -> None:
    with pytest.raises(TypeError, match=words):
        make()


def test_new_reader_bytesio_next_until_read_line() -> None:
    src = io.BytesIO(b"HEAD" + b"first line\r\nsecond\nkey=value;" + _data(5000) + b"\nend")
    reader = netpoll.new_reader(src)
    head = reader.next(4)
    assert isinstance(head, memoryview)
    assert bytes(head) == b"HEAD"
    assert bytes(reader.peek(5)) == b"first"
    assert bytes(reader.read_line()) == b"first line"
    assert bytes(reader.read_line()) == b"second"
    assert bytes(reader.until(b"=")) == b"key="
    assert bytes(reader.until(ord(";"))) == b"value;"
    assert reader.read_binary(5000) == _data(5000)
    reader.skip(1)
    assert reader.read_string(3) == "end"
    reader.release()


def test_new_reader_bytesio_eof() -> None:
    reader = netpoll.new_reader(io.BytesIO(b"0123456789"))
    assert bytes(reader.next(4)) == b"0123"
    with pytest.raises(EOFError):
        reader.next(7)
    # the bytes that were there are still readable after the failed read
    assert bytes(reader.next(6)) == b"456789"
    with pytest.raises(EOFError):
        reader.next(1)
    with pytest.raises(EOFError):
        reader.read_line()


def test_new_reader_view_dead_after_release() -> None:
    reader = netpoll.new_reader(io.BytesIO(b"abcdefgh" * 10))
    view = reader.next(8)
    assert bytes(view) == b"abcdefgh"
    reader.release()
    with pytest.raises(ValueError):
        bytes(view)
    assert bytes(reader.next(8)) == b"abcdefgh"


def test_new_reader_slice() -> None:
    reader = netpoll.new_reader(io.BytesIO(b"abc" + b"x" * 10_000 + b"tail"))
    reader.skip(3)
    sliced = reader.slice(10_000)
    assert len(sliced) == 10_000
    assert bytes(reader.next(4)) == b"tail"
    reader.release()
    assert sliced.read_binary(10_000) == b"x" * 10_000


@pytest.mark.timeout(30)
def test_new_reader_socketpair(sockpair) -> None:
    a, b = sockpair
    reader = netpoll.new_reader(a)
    b.sendall(b"hel")
    b.sendall(b"lo wor")
    b.sendall(b"ld\nnext;")
    assert bytes(reader.next(5)) == b"hello"
    assert bytes(reader.read_line()) == b" world"
    assert bytes(reader.until(b";")) == b"next;"
    reader.release()


@pytest.mark.timeout(30)
def test_new_reader_socketpair_large_concurrent(sockpair) -> None:
    a, b = sockpair
    payload = _data(2 << 20, seed=1)
    sender = _Thread(lambda: b.sendall(payload))
    sender.start()
    reader = netpoll.new_reader(a)
    got = bytearray()
    sizes = [1, 100, 65_536, 300_000, 1_000_000]
    i = 0
    while len(got) < len(payload):
        n = min(sizes[i % len(sizes)], len(payload) - len(got))
        got += reader.next(n)
        reader.release()
        i += 1
    sender.join_checked()
    assert bytes(got) == payload


@pytest.mark.timeout(30)
def test_new_reader_socket_peer_close(sockpair) -> None:
    a, b = sockpair
    reader = netpoll.new_reader(a)
    b.sendall(b"last words")
    b.close()
    assert bytes(reader.next(4)) == b"last"
    with pytest.raises(EOFError):
        reader.next(100)
    assert bytes(reader.next(6)) == b" words"
    with pytest.raises(EOFError):
        reader.next(1)


# --------------------------------------------------------------------------- new_writer


def test_new_writer_bytesio() -> None:
    dst = io.BytesIO()
    writer = netpoll.new_writer(dst)
    assert writer.write_binary(b"abc") == 3
    writer.write_string("def")
    writer.write_byte(ord("g"))
    view = writer.malloc(3)
    view[:] = b"hij"
    assert writer.malloc_len() == 10
    assert dst.getvalue() == b"", "data must not be written before flush()"
    writer.flush()
    assert dst.getvalue() == b"abcdefghij"
    assert writer.malloc_len() == 0
    big = _data(100_000, seed=2)
    writer.write_binary(big)
    writer.flush()
    assert dst.getvalue() == b"abcdefghij" + big


def test_new_writer_malloc_ack_and_write_direct() -> None:
    dst = io.BytesIO()
    writer = netpoll.new_writer(dst)
    buf = writer.malloc(8)
    writer.write_direct(b"[mid]", 4)
    buf[:4] = b"head"
    buf[4:] = b"tail"
    writer.flush()
    assert dst.getvalue() == b"head[mid]tail"
    buf = writer.malloc(100)
    buf[:3] = b"ack"
    writer.malloc_ack(3)
    writer.flush()
    assert dst.getvalue() == b"head[mid]tailack"


def test_new_writer_append_linkbuffer() -> None:
    dst = io.BytesIO()
    writer = netpoll.new_writer(dst)
    other = netpoll.LinkBuffer()
    other.write_binary(b"appended")
    writer.write_binary(b"own+")
    writer.append(other)
    assert other.malloc_len() == 0
    writer.flush()
    assert dst.getvalue() == b"own+appended"


def test_new_writer_append_takes_any_netpoll_writer(sockpair) -> None:
    """append() moves the unflushed data of another adapter, of a read-writer and of a
    live connection (its pending write included), leaving each empty; anything else is a
    TypeError naming the argument, and changes nothing."""
    dst = io.BytesIO()
    writer = netpoll.new_writer(dst)
    other = netpoll.new_writer(io.BytesIO())
    other.write_binary(b"[adapter]")
    a, _ = sockpair
    rw = netpoll.new_read_writer(a)
    rw.write_string("[read-writer]")
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    conn = netpoll.dial_connection("tcp", lsock.getsockname(), timeout=TIMEOUT)
    try:
        conn.write_binary(b"[connection]")
        writer.write_binary(b"own")
        writer.append(other)
        writer.append(rw)
        writer.append(conn)
        with pytest.raises(TypeError, match="w must be a netpoll Writer, not bytes"):
            writer.append(b"raw bytes")
        assert other.malloc_len() == rw.malloc_len() == conn.malloc_len() == 0
        assert dst.getvalue() == b""
        writer.flush()
    finally:
        conn.close()
        lsock.close()
    assert dst.getvalue() == b"own[adapter][read-writer][connection]"


def test_stream_reader_len_and_read_byte(sockpair) -> None:
    """A stream reader pulls what has arrived: read_byte() waits for one byte and the
    rest of that receive is then buffered (len() and .len() say how much)."""
    a, b = sockpair
    reader = netpoll.new_reader(a)
    assert len(reader) == 0 and reader.len() == 0
    b.sendall(b"xyz")
    assert reader.read_byte() == ord("x")
    assert len(reader) == 2 and reader.len() == 2
    assert reader.read_byte() == ord("y")
    b.sendall(b"!")
    b.close()
    assert reader.read_binary(2) == b"z!"
    with pytest.raises(netpoll.PeerClosedError, match="end of stream"):
        reader.read_byte()


@pytest.mark.timeout(30)
def test_new_writer_socketpair_large(sockpair) -> None:
    a, b = sockpair
    payload = _data(4 << 20, seed=3)  # far larger than the kernel socket buffer
    receiver = _Thread(lambda: _recv_exactly(b, len(payload) + 3))
    receiver.start()
    writer = netpoll.new_writer(a)
    writer.write_binary(payload[:1000])
    writer.write_binary(payload[1000:])
    writer.write_string("end")
    writer.flush()
    assert receiver.join_checked() == payload + b"end"


# --------------------------------------------------------------------------- new_read_writer


@pytest.mark.timeout(30)
def test_new_read_writer_socketpair(sockpair) -> None:
    a, b = sockpair
    rw = netpoll.new_read_writer(a)
    rw.write_binary(b"ping\n")
    rw.flush()
    assert _recv_exactly(b, 5) == b"ping\n"
    b.sendall(b"pong\r\nmore")
    assert bytes(rw.read_line()) == b"pong"
    assert bytes(rw.next(4)) == b"more"
    rw.release()
    for i in range(50):
        msg = f"msg {i}\n".encode()
        rw.write_binary(msg)
        rw.flush()
        echoed = _recv_exactly(b, len(msg))
        b.sendall(echoed.upper())
        assert bytes(rw.read_line()) == msg.upper()[:-1]
        rw.release()


# --------------------------------------------------------------------------- new_io_reader


def test_new_io_reader_read_and_readinto() -> None:
    lb = netpoll.LinkBuffer(16)
    data = _data(1000, seed=4)
    lb.write_binary(data)
    lb.flush()
    raw = netpoll.new_io_reader(lb)
    assert isinstance(raw, io.RawIOBase)
    assert raw.readable()
    assert raw.read(0) == b""
    assert raw.read(10) == data[:10]
    assert len(lb) == 990
    target = bytearray(100)
    assert raw.readinto(target) == 100
    assert bytes(target) == data[10:110]
    view_target = memoryview(bytearray(50))
    assert raw.readinto(view_target[10:30]) == 20
    assert bytes(view_target[10:30]) == data[110:130]
    # asking for more than is there returns what is there
    assert raw.read(10_000) == data[130:]
    assert len(lb) == 0
    assert raw.read(10) == b""
    assert raw.readinto(bytearray(5)) == 0


def test_new_io_reader_readall_and_buffered() -> None:
    lines = [f"line {i}\n".encode() * (i + 1) for i in range(40)]
    lb = netpoll.LinkBuffer(8)
    for line in lines:
        lb.write_binary(line)
    lb.flush()
    reader = io.BufferedReader(netpoll.new_io_reader(lb), buffer_size=64)
    assert reader.readline() == b"line 0\n"
    rest = reader.read()
    assert rest == b"".join(lines)[len(b"line 0\n") :]

    lb2 = netpoll.LinkBuffer()
    lb2.write_binary(b"all of it")
    lb2.flush()
    assert netpoll.new_io_reader(lb2).readall() == b"all of it"


def test_new_io_reader_copy_survives_buffer_reuse() -> None:
    lb = netpoll.LinkBuffer(32)
    lb.write_binary(b"A" * 100)
    lb.flush()
    raw = netpoll.new_io_reader(lb)
    got = raw.read(100)
    for _ in range(10):
        lb.write_binary(b"B" * 100)
        lb.flush()
        lb.next(100)
        lb.release()
    assert got == b"A" * 100


def test_new_io_reader_over_a_stream_waits_then_returns_what_came(sockpair) -> None:
    """Over a reader that blocks (a socket's), read(n) waits for the first byte, then
    returns everything that arrived with it, up to n, as a raw stream does; the end of
    the stream reads as b""."""
    a, b = sockpair
    raw = netpoll.new_io_reader(netpoll.new_reader(a))
    b.sendall(b"hello")
    assert raw.read(100) == b"hello"
    reader = _Thread(lambda: raw.read(3))
    reader.start()
    b.sendall(b"world")
    assert reader.join_checked() == b"wor"
    assert raw.read(100) == b"ld"
    b.close()
    assert raw.read(10) == b""


# --------------------------------------------------------------------------- new_io_writer


def test_new_io_writer_write_then_flush() -> None:
    lb = netpoll.LinkBuffer()
    raw = netpoll.new_io_writer(lb)
    assert isinstance(raw, io.RawIOBase)
    assert raw.writable()
    assert raw.write(b"abc") == 3
    assert raw.write(bytearray(b"def")) == 3
    assert raw.write(memoryview(b"xghix")[1:4]) == 3
    raw.flush()
    assert len(lb) == 9
    assert lb.read_binary(9) == b"abcdefghi"


def test_new_io_writer_caller_may_reuse_buffer() -> None:
    """RawIOBase.write: the caller may mutate ``b`` once write() returns."""
    lb = netpoll.LinkBuffer()
    raw = netpoll.new_io_writer(lb)
    buf = bytearray(_data(256 * 1024, seed=5))
    original = bytes(buf)
    assert raw.write(buf) == len(buf)
    buf[:] = b"\x00" * len(buf)
    small = bytearray(b"small")
    raw.write(small)
    small[:] = b"XXXXX"
    raw.flush()
    assert lb.read_binary(len(lb)) == original + b"small"


def test_new_io_writer_inside_buffered_writer() -> None:
    lb = netpoll.LinkBuffer()
    writer = io.BufferedWriter(netpoll.new_io_writer(lb), buffer_size=64)
    chunks = [_data(n, seed=n) for n in (10, 100, 1, 63, 64, 65, 5000, 7)]
    for chunk in chunks:
        writer.write(chunk)
    writer.flush()
    assert lb.read_binary(len(lb)) == b"".join(chunks)


def test_io_writer_to_io_reader_round_trip() -> None:
    lb = netpoll.LinkBuffer(16)
    text = io.TextIOWrapper(io.BufferedWriter(netpoll.new_io_writer(lb)), encoding="utf-8")
    text.write("h\u00e9llo\nw\u00f6rld\n")
    text.flush()
    reader = io.TextIOWrapper(io.BufferedReader(netpoll.new_io_reader(lb)), encoding="utf-8")
    assert reader.readline() == "h\u00e9llo\n"
    assert reader.readline() == "w\u00f6rld\n"
    assert reader.readline() == ""
